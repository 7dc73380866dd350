"""LaMP_2 (movie tagging) and LaMP_5R (Reddit post titles): the task entries, their floors and shipped budgets."""

from __future__ import annotations

import pytest
from fixtures_sources import MOVIELENS_DUMP, REDDIT_DUMP, movielens_fixture, reddit_fixture

from tapper.baselines.floors import floors
from tapper.data.builders import BUILDERS, build_lamp2_from_movielens, build_lamp5r_from_reddit
from tapper.data.records import LampSplit, ProfileItem, Question
from tapper.data.tasks import MOVIE_TAGS, get_task


def test_lamp5r_is_its_own_task_in_lamp5s_shape():
    task = get_task("LaMP-5R")
    assert task is get_task("lamp5r") is get_task("5R") and task.name == "LaMP_5R"
    assert get_task("LaMP_5").name == "LaMP_5" and "scholarly" in get_task("5").description
    assert "Reddit" in task.description and task.metric == "generation" and task.labels is None
    item = ProfileItem("p", {"title": "Is it worth it?", "text": "My school offers a summer program.",
                             "date": "2020-01-01"}, None, 0)
    assert task.history_pair(item) == ("Generate a title for the following Reddit post: My school offers a summer "
                                       "program.", "Is it worth it?")
    assert task.split_input(task.history_pair(item)[0]) == (
        "Generate a title for the following Reddit post: ", "My school offers a summer program.")
    assert task.record_prompt(item) == '"Is it worth it?" is the title for "My school offers a summer program."'
    assert task.record_content_field == "text" and set(task.profile_fields) <= set(item.fields)


def test_built_questions_split_into_instruction_and_content(tmp_path):
    lamp2 = build_lamp2_from_movielens(movielens_fixture(tmp_path / "ml"), split="user", min_profile=2)
    lamp5r = build_lamp5r_from_reddit(reddit_fixture(tmp_path / "r.jsonl"), split="user", min_profile=2)
    for built in (lamp2, lamp5r):
        task = get_task(built["test"].task)
        for split in built.values():
            for q in split.questions:
                instruction, content = task.split_input(q.input)
                assert content and instruction.endswith(task.content_marker)
                # a record replayed as a question reads exactly like a question
                assert task.history_input(q.profile[0]).startswith(instruction)
                assert all(task.history_pair(item) is not None for item in q.profile)
    lamp2_task = get_task("LaMP_2")
    assert "tags: [" + ", ".join(MOVIE_TAGS) + "] description: " in next(
        q.input for s in lamp2.values() for q in s.questions)
    assert lamp2_task.clean_output("Sci-Fi.") == "sci-fi"


def _question(qid: str, text: str, profile: list[ProfileItem]) -> Question:
    return Question(qid, text, profile, user_id=f"user-{qid}")


def test_lamp2_floors():
    tags = ["comedy", "action", "comedy"]
    history = [ProfileItem(f"p{i}", {"description": "d", "tag": tag}, None, i) for i, tag in enumerate(tags)]
    target = LampSplit("LaMP_2", [_question("q", "x", history), _question("r", "y", [])],
                       {"q": "action", "r": "action"})
    others = LampSplit("LaMP_2", [], {"o1": "classic", "o2": "classic", "o3": "sci-fi"})
    got = floors("LaMP_2", target, others)
    assert got == {"majority tag, 'classic' (floor)": {"q": "classic", "r": "classic"},
                   "user's most frequent past tag (floor)": {"q": "comedy", "r": "classic"}}
    assert floors("LaMP_2", target) == {}  # the majority needs other users' answers


def test_lamp5r_floors():
    prompt = "Generate a title for the following Reddit post: "
    history = [ProfileItem("a", {"title": "old title", "text": "t"}, 1.0, 0),
               ProfileItem("b", {"title": "latest title", "text": "t"}, 2.0, 1)]
    words = " ".join(f"w{i}" for i in range(20))
    target = LampSplit("LaMP_5R", [_question("q", prompt + words, history), _question("r", prompt + "one two", [])],
                       {"q": "gold", "r": "gold"})
    got = floors("LaMP_5R", target)
    assert got["first 8 words of the post (floor)"] == {"q": " ".join(f"w{i}" for i in range(8)), "r": "one two"}
    assert got["user's most recent past title (floor)"] == {"q": "latest title", "r": "one two"}


@pytest.mark.slow
@pytest.mark.skipif(not (MOVIELENS_DUMP.is_dir() and REDDIT_DUMP.exists()), reason="../shared/data not present")
@pytest.mark.parametrize(("task_name", "builder", "dump"), [
    ("LaMP_2", "movielens-lamp2", MOVIELENS_DUMP),
    ("LaMP_5R", "reddit-lamp5r", REDDIT_DUMP),
])
def test_shipped_budget_fits_the_instruction_and_most_contents(task_name, builder, dump):
    """max_input_tokens in tapper/configs/<task>.json holds the instruction and the content of at least 90%
    of the real questions (default backbone's tokenizer), and every prompt keeps its own content's start."""
    from tapper.backbone import load_backbone
    from tapper.examples import ExampleBuilder
    from tapper.train import resolve_configs

    backbone = load_backbone("default")
    tokenizer = backbone.tokenizer
    tcfg, _ = resolve_configs(task_name)
    task = get_task(task_name)
    built = BUILDERS[builder](dump, split="user", seed=0, min_profile=0)
    questions = [q for split in built.values() for q in split.questions]
    sizes = [len(tokenizer(q.input, add_special_tokens=False)["input_ids"]) for q in questions]
    fitting = sum(size <= tcfg.max_input_tokens for size in sizes) / len(sizes)
    assert fitting >= 0.9, (task_name, fitting)
    eb = ExampleBuilder(task, backbone, tcfg.top_k, tcfg.retriever, tcfg.max_input_tokens,
                        max_query_tokens=tcfg.max_query_tokens, max_record_tokens=tcfg.max_record_tokens)
    for q in questions[:5]:
        example = eb.for_question(q)
        opening = " ".join(task.split_input(q.input)[1].split()[:5])
        assert opening in example.prompt and opening in example.query
