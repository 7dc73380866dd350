"""What reaches the model: the prompt keeps its instruction and its own content, retrieval and z_q read the
content, and a record keeps its answer when it is cut."""

import pytest
import torch

from tapper.backbone import load_backbone
from tapper.data.builders import BUILDERS
from tapper.data.records import ProfileItem, Question
from tapper.data.tasks import get_task
from tapper.examples import ExampleBuilder, PromptBudgetError, fit_input, fit_record, retrieval_query
from tapper.prefix.model import TapperModel
from tapper.train import resolve_configs


def _item(i: int, **fields) -> ProfileItem:
    return ProfileItem(id=str(i), fields=fields, day=float(i), position=i)


def _question(task: str, qid: str, content: str) -> Question:
    history = [_item(i, text=f"older article number {i} about gardens", category="travel", score="3")
               for i in range(4)]
    make = get_task(task).history_input
    return Question(id=qid, input=make(_item(9, text=content)), profile=history, user_id=qid)


def _tokens(tok, text: str) -> int:
    return len(tok(text, add_special_tokens=False)["input_ids"])


def test_a_tight_budget_cuts_the_content_and_keeps_the_instruction(tiny_backbone):
    tok = tiny_backbone.tokenizer
    task = get_task("LaMP_2N")
    text = _question("LaMP_2N", "a", "volcano erupts near the coast " * 10).input
    instruction, _ = task.split_input(text)
    budget = _tokens(tok, instruction) + 20
    fitted = fit_input(task, tok, text, budget)
    assert fitted.startswith(instruction)  # the label list is never what is cut
    assert "religion]" in fitted and fitted[len(instruction):].startswith("volcano erupts")
    assert _tokens(tok, fitted) <= budget + 1  # a cut may re-tokenize one token differently at the seam


def test_a_budget_the_instruction_fills_is_an_error_that_says_what_to_set(tiny_backbone):
    tok = tiny_backbone.tokenizer
    text = _question("LaMP_2N", "a", "anything").input
    with pytest.raises(PromptBudgetError, match=r"LaMP_2N: the instruction takes \d+ tokens of max_input_tokens=64"):
        fit_input(get_task("LaMP_2N"), tok, text, 64)


def test_retrieval_reads_the_content_without_the_instruction(tiny_backbone):
    tok = tiny_backbone.tokenizer
    text = _question("LaMP_3", "a", "smells like roses").input
    assert retrieval_query(get_task("LaMP_3"), tok, text, 128) == "smells like roses"
    # an input without the task's marker (a user's own template) is all content
    assert retrieval_query(get_task("LaMP_3"), tok, "rate: meh", 128) == "rate: meh"


@pytest.mark.parametrize("task,label_field,label", [("LaMP_2N", "category", "politics"),
                                                    ("LaMP_3", "score", "4"), ("LaMP_4", "title", "Big News Day")])
def test_a_long_record_is_cut_in_its_content_and_keeps_its_answer(tiny_backbone, task, label_field, label):
    tok = tiny_backbone.tokenizer
    item = _item(0, text="word " * 200, **{label_field: label})
    rendered = fit_record(get_task(task), tok, item, 96)
    assert label in rendered
    assert _tokens(tok, rendered) <= 97
    assert rendered != get_task(task).record_prompt(item)


@pytest.mark.parametrize("task", ["LaMP_2N", "LaMP_3"])
def test_different_questions_reach_the_model_with_their_own_content(tiny_backbone, task):
    tcfg, _ = resolve_configs(task, {"backbone": "tiny", "max_input_tokens": 400, "max_query_tokens": 64})
    builder = ExampleBuilder(get_task(task), tiny_backbone, 3, "bm25", tcfg.max_input_tokens,
                             max_query_tokens=tcfg.max_query_tokens, max_record_tokens=tcfg.max_record_tokens)
    contents = ["volcano erupts near the coastal town", "senate passes the annual budget bill"]
    examples = [builder.for_question(_question(task, str(i), c)) for i, c in enumerate(contents)]
    assert examples[0].prompt != examples[1].prompt
    for ex, content in zip(examples, contents, strict=True):
        assert content in ex.prompt and ex.query == content
    model = TapperModel(tiny_backbone, tcfg)
    z = model.embed_mean([e.query for e in examples])
    assert float(torch.cosine_similarity(z[0], z[1], dim=0)) < 0.99


@pytest.mark.slow
@pytest.mark.parametrize("task,builder,dump", [
    ("LaMP_2N", "huffpost-lamp2n", "huffpost/News_Category_Dataset_v2.partial.json"),
    ("LaMP_3", "amazon-lamp3", "amazon2018/All_Beauty_5.json"),
])
def test_real_questions_keep_their_content_under_the_task_config(shared_data, task, builder, dump):
    """The reviewer's check, on the default backbone and the task's shipped config: three real questions
    give three prompts, each with the start of its own content, and three different z_q."""
    backbone = load_backbone("default")
    tcfg, _ = resolve_configs(task)
    built = BUILDERS[builder](shared_data / dump, split="user", seed=0, min_profile=3)
    questions = built["test"].questions[:3]
    eb = ExampleBuilder(get_task(task), backbone, tcfg.top_k, tcfg.retriever, tcfg.max_input_tokens,
                        max_query_tokens=tcfg.max_query_tokens, max_record_tokens=tcfg.max_record_tokens)
    examples = [eb.for_question(q) for q in questions]
    assert len({e.prompt for e in examples}) == 3
    for q, e in zip(questions, examples, strict=True):
        opening = " ".join(get_task(task).split_input(q.input)[1].split()[:5])
        assert opening in e.prompt and opening in e.query
    model = TapperModel(backbone, tcfg)
    z = torch.nn.functional.normalize(model.embed_mean([e.query for e in examples]), dim=-1)
    cos = z @ z.T
    assert float(cos[~torch.eye(3, dtype=torch.bool)].max()) < 0.99
