"""The built-in LaMP-3 sample (tapper.data.sample): shipped files, structure, and its personal signal."""

from __future__ import annotations

from collections import Counter

from tapper.data.sample import (
    HISTORY_LENGTH,
    OFFSETS,
    SAMPLE_DIR,
    USERS_PER_SPLIT,
    load_sample,
    main,
    make_sample,
    stated_quality,
    write_sample,
)


def _clip(score: int) -> int:
    return min(5, max(1, score))


def _user_offset(question) -> int:
    """The one offset b that explains every history score as clip(q + b) (asserted unique)."""
    fits = [b for b in range(-2, 3)
            if all(_clip(stated_quality(item.text) + b) == int(item.get("score")) for item in question.profile)]
    assert len(fits) >= 1
    return fits[0] if len(fits) == 1 else min(fits, key=abs)


def test_shipped_files_equal_a_fresh_generation(tmp_path):
    written = write_sample(tmp_path, seed=0)
    assert sorted(p.name for p in written) == sorted(p.name for p in SAMPLE_DIR.glob("*.json"))
    for path in written:
        assert path.read_bytes() == (SAMPLE_DIR / path.name).read_bytes(), f"regenerate {path.name}"
    assert load_sample() == make_sample(seed=0)


def test_generation_is_deterministic_and_seeded():
    assert make_sample(seed=0) == make_sample(seed=0)
    assert make_sample(seed=1)["test"].questions[0].input != make_sample(seed=0)["test"].questions[0].input


def test_sample_shape():
    splits = load_sample()
    assert set(splits) == {"train", "test"}
    ids = [q.id for split in splits.values() for q in split.questions]
    assert len(ids) == len(set(ids)) == 2 * USERS_PER_SPLIT
    for split in splits.values():
        assert split.task == "LaMP_3" and len(split.questions) == USERS_PER_SPLIT
        for q in split.questions:
            assert len(q.profile) == HISTORY_LENGTH
            days = [item.day for item in q.profile]
            assert days == sorted(set(days)) and q.day > days[-1]
            for item in q.profile:
                assert set(item.fields) == {"text", "score", "date"}
                assert 8 <= len(item.text.split()) <= 16
            assert split.gold(q.id) in {"1", "2", "3", "4", "5"}


def test_scores_are_quality_plus_a_balanced_personal_offset():
    for split in load_sample().values():
        offsets = []
        for q in split.questions:
            b = _user_offset(q)
            offsets.append(b)
            query_text = q.input.split("review: ", 1)[1]
            assert split.gold(q.id) == str(_clip(stated_quality(query_text) + b))
        counts = Counter(offsets)
        assert set(counts) == set(OFFSETS) and max(counts.values()) - min(counts.values()) <= 1
        assert sum(offsets) == 0  # symmetric: a global bias cannot stand in for knowing the user


def test_text_alone_is_about_one_star_off():
    """The best text-only rule (median score per stated quality) misses by ~1; knowing the user by 0."""
    test = load_sample()["test"]
    errors = []
    for q in test.questions:
        query_quality = stated_quality(q.input)
        errors.append(abs(query_quality - int(test.gold(q.id))))  # median score for q is q itself
    mean_error = sum(errors) / len(errors)
    assert 0.7 <= mean_error <= 1.3


def test_module_entry_point_writes_files(tmp_path, capsys):
    main(["--out", str(tmp_path), "--seed", "0"])
    assert sorted(p.name for p in tmp_path.glob("*.json")) == [
        "test_outputs.json", "test_questions.json", "train_outputs.json", "train_questions.json"]
    assert str(tmp_path / "test_questions.json") in capsys.readouterr().out
