"""Build LaMP tasks from raw dumps the way LaMP did: Amazon reviews -> LaMP-3, HuffPost -> LaMP-4 / LaMP-2N.

Each raw record of a user is an `Event`: the profile item it is in the user's history, and the question
it would be if it were the user's latest record. A user's events are ordered by (day, tie), and a
question's profile is every event strictly before it in that order, so no profile ever sees the future.

Splits:
- "user": one question per user (the latest event); users shuffled with the seed into train/dev/test
  60/20/20, so no user is in two splits.
- "time": every user in every split; test asks the latest event, dev the 2nd latest, train the 3rd.

Everything skipped on purpose is counted in the `BuildSummary` that comes back with the splits.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tapper.data.lamp_io import LampFormatError, format_day, parse_date
from tapper.data.records import LampSplit, ProfileItem, Question
from tapper.data.tasks import NEWS_CATEGORIES, get_task

log = logging.getLogger(__name__)

SplitKind = Literal["time", "user"]
SPLIT_NAMES = ("train", "dev", "test")
_USER_SPLIT_SHARES = (0.6, 0.2)  # train, dev; test gets the rest
# In the time-based split, how many events back from the latest each split asks about.
_TIME_SPLIT_BACK = {"train": 3, "dev": 2, "test": 1}

# HuffPost category (lower-cased) -> LaMP-2N label, where LaMP merged HuffPost's renamed categories.
NEWS_CATEGORY_MAP: dict[str, str] = {
    "arts & culture": "culture & arts", "arts": "culture & arts", "culture & arts": "culture & arts",
    "science": "science & technology", "tech": "science & technology",
    "style": "style & beauty", "style & beauty": "style & beauty",
    "food & drink": "food & drink", "taste": "food & drink",
    "healthy living": "healthy living", "wellness": "healthy living",
    "parenting": "parents", "parents": "parents",
    "education": "education", "college": "education",
    **{name: name for name in ("women", "religion", "crime", "politics", "business", "sports",
                               "entertainment", "travel")},
}
assert set(NEWS_CATEGORY_MAP.values()) == set(NEWS_CATEGORIES), "every LaMP-2N label needs a source category"


def map_news_category(category: str) -> str | None:
    """The LaMP-2N label of a HuffPost category, or None when LaMP-2N has no such label."""
    return NEWS_CATEGORY_MAP.get(category.strip().lower())


@dataclass(frozen=True)
class Event:
    """One raw record of a user: a profile item, and the question it becomes when it is the latest."""

    user: str
    item_id: str
    day: float
    tie: int  # orders events of the same day
    fields: dict[str, Any]
    input: str
    output: str


@dataclass
class BuildSummary:
    """What a build read, skipped and produced; every skipped line has a reason here."""

    task: str
    source: str
    split: str
    seed: int
    min_profile: int
    lines: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    dropped_categories: Counter[str] = field(default_factory=Counter)
    users_seen: int = 0
    users_too_few_records: int = 0
    users_over_max: int = 0
    questions: dict[str, int] = field(default_factory=dict)
    users: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "task": self.task, "source": self.source, "split": self.split, "seed": self.seed,
            "min_profile": self.min_profile, "lines": self.lines, "skipped": dict(self.skipped),
            "dropped_categories": dict(self.dropped_categories), "users_seen": self.users_seen,
            "users_too_few_records": self.users_too_few_records, "users_over_max": self.users_over_max,
            "users": dict(self.users), "questions": dict(self.questions),
        }

    def lines_of_text(self) -> list[str]:
        out = [f"{self.task} from {self.source} ({self.split}-based split, seed {self.seed}): "
               f"{self.lines} lines read"]
        out += [f"  skipped {count} line(s): {reason}" for reason, count in sorted(self.skipped.items())]
        if self.dropped_categories:
            shown = ", ".join(f"{name} {count}" for name, count in self.dropped_categories.most_common())
            out.append(f"  categories outside LaMP-2N: {shown}")
        out.append(f"  users: {self.users_seen} seen, {self.users_too_few_records} with too few records for "
                   f"min_profile={self.min_profile}, {self.users_over_max} over max_users")
        out += [f"  {name}: {self.users.get(name, 0)} users, {self.questions.get(name, 0)} questions"
                for name in SPLIT_NAMES]
        return out


class BuiltSplits(dict[str, LampSplit]):
    """{"train", "dev", "test"} -> LampSplit, plus the build's `summary`."""

    def __init__(self, splits: dict[str, LampSplit], summary: BuildSummary):
        super().__init__(splits)
        self.summary = summary


# ---------------------------------------------------------------------------------------------- builders


def build_lamp3_from_amazon(
    path: str | os.PathLike[str], *, split: SplitKind = "time", seed: int = 0, min_profile: int = 5,
    max_users: int | None = None, merge_cross_listed: bool = True,
) -> BuiltSplits:
    """LaMP-3 (product rating) from an Amazon Reviews 2018 JSON-lines dump.

    Besides exact duplicate lines, Amazon repeats one review under every variant of a product (same
    reviewer, text, summary, time and score; another asin). Left in, the query's own text and score
    would sit in its profile, so by default such copies are merged into the first (and counted).
    """
    task = get_task("LaMP_3")
    summary = _summary(task.name, path, split, seed, min_profile)
    events: list[Event] = []
    seen_reviews: set[tuple[Any, ...]] = set()
    for number, record in _read_jsonl(path, summary):
        where = f"line {number}"
        user = _str_field(path, where, record, "reviewerID")
        day = _date_field(path, where, record, "unixReviewTime")
        score = _score_field(path, where, record, "overall")
        text = record.get("reviewText")
        if not isinstance(text, str) or not text.strip():
            summary.skipped["no review text"] += 1
            continue
        title = record.get("summary")
        title = title if isinstance(title, str) and title.strip() else None
        key = (user, text, title, day, score)
        if merge_cross_listed and key in seen_reviews:
            summary.skipped["same review cross-listed under another product"] += 1
            continue
        seen_reviews.add(key)
        fields: dict[str, Any] = {"text": text, "score": str(score)}
        if title is not None:
            fields["title"] = title
        fields["date"] = format_day(day)
        events.append(_event(task.name, user, str(number), day, number, fields, output=str(score)))
    return _make_splits(task.name, events, split, seed, min_profile, max_users, summary)


def build_lamp4_from_huffpost(
    path: str | os.PathLike[str], *, split: SplitKind = "time", seed: int = 0, min_profile: int = 5,
    max_users: int | None = None,
) -> BuiltSplits:
    """LaMP-4 (news headline generation) from a HuffPost News Category JSON-lines dump."""
    summary = _summary("LaMP_4", path, split, seed, min_profile)

    def fields_of(article: _Article) -> dict[str, Any] | None:
        return {"text": article.text, "title": article.headline, "date": format_day(article.day)}

    events = _huffpost_events(path, summary, fields_of, output_field="title")
    return _make_splits(summary.task, events, split, seed, min_profile, max_users, summary)


def build_lamp2n_from_huffpost(
    path: str | os.PathLike[str], *, split: SplitKind = "time", seed: int = 0, min_profile: int = 5,
    max_users: int | None = None,
) -> BuiltSplits:
    """LaMP-2N (news categorization) from a HuffPost dump; articles outside the 15 labels are dropped."""
    summary = _summary("LaMP_2N", path, split, seed, min_profile)

    def fields_of(article: _Article) -> dict[str, Any] | None:
        label = map_news_category(article.category)
        if label is None:
            summary.skipped["category outside LaMP-2N"] += 1
            summary.dropped_categories[article.category.strip().lower()] += 1
            return None
        return {"text": article.text, "title": article.headline, "category": label,
                "date": format_day(article.day)}

    events = _huffpost_events(path, summary, fields_of, output_field="category")
    return _make_splits(summary.task, events, split, seed, min_profile, max_users, summary)


BUILDERS: dict[str, Callable[..., BuiltSplits]] = {
    "amazon-lamp3": build_lamp3_from_amazon,
    "huffpost-lamp4": build_lamp4_from_huffpost,
    "huffpost-lamp2n": build_lamp2n_from_huffpost,
}


# ---------------------------------------------------------------------------------------------- HuffPost


@dataclass(frozen=True)
class _Article:
    number: int
    author: str
    day: float
    category: str
    headline: str
    text: str


def _huffpost_events(
    path: str | os.PathLike[str], summary: BuildSummary,
    fields_of: Callable[[_Article], dict[str, Any] | None], output_field: str,
) -> list[Event]:
    events = []
    for article in _read_huffpost(path, summary):
        fields = fields_of(article)
        if fields is None:
            continue
        # The dump lists the newest articles first, so within one day a later line is an older article.
        events.append(_event(summary.task, article.author, str(article.number), article.day, -article.number,
                             fields, output=fields[output_field]))
    return events


def _read_huffpost(path: str | os.PathLike[str], summary: BuildSummary) -> Iterator[_Article]:
    for number, record in _read_jsonl(path, summary):
        where = f"line {number}"
        author = _str_field(path, where, record, "authors").strip()
        if not author:
            summary.skipped["no author"] += 1
            continue
        text = _str_field(path, where, record, "short_description").strip()
        headline = _str_field(path, where, record, "headline").strip()
        if not text or not headline:
            summary.skipped["empty short_description or headline"] += 1
            continue
        yield _Article(number=number, author=author, day=_date_field(path, where, record, "date"),
                       category=_str_field(path, where, record, "category"), headline=headline, text=text)


# ---------------------------------------------------------------------------------------------- shared steps


def _summary(
    task: str, path: str | os.PathLike[str], split: str, seed: int, min_profile: int
) -> BuildSummary:
    if split not in ("time", "user"):
        raise ValueError(f"split must be 'time' or 'user', not {split!r}")
    if min_profile < 0:
        raise ValueError(f"min_profile must be >= 0, not {min_profile}")
    return BuildSummary(task=task, source=str(path), split=split, seed=seed, min_profile=min_profile)


def _event(
    task_name: str, user: str, item_id: str, day: float, tie: int, fields: dict[str, Any], output: str
) -> Event:
    """An event whose question input is the task's own instruction applied to the record."""
    history_input = get_task(task_name).history_input
    assert history_input is not None, f"{task_name} has no input template"
    query = history_input(ProfileItem(id=item_id, fields=fields, day=day, position=0))
    return Event(user=user, item_id=item_id, day=day, tie=tie, fields=fields, input=query, output=output)


def _read_jsonl(path: str | os.PathLike[str], summary: BuildSummary) -> Iterator[tuple[int, dict[str, Any]]]:
    """(1-based line number, object) for each distinct non-blank line; duplicates and blanks are counted."""
    seen: set[str] = set()
    with Path(path).open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            summary.lines += 1
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                raise LampFormatError(path, f"line {number}", None, "line is not valid UTF-8") from None
            if not line:
                summary.skipped["blank line"] += 1
                continue
            if line in seen:
                summary.skipped["exact duplicate line"] += 1
                continue
            seen.add(line)
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise LampFormatError(path, f"line {number}", None, f"invalid JSON: {err.msg}") from None
            if not isinstance(record, dict):
                problem = f"expected an object, got {type(record).__name__}"
                raise LampFormatError(path, f"line {number}", None, problem)
            yield number, record


def _str_field(path: str | os.PathLike[str], where: str, record: dict[str, Any], name: str) -> str:
    value = record.get(name)
    if not isinstance(value, str):
        problem = "missing" if name not in record else f"expected a string, got {type(value).__name__}"
        raise LampFormatError(path, where, name, problem)
    return value


def _date_field(path: str | os.PathLike[str], where: str, record: dict[str, Any], name: str) -> float:
    try:
        day = parse_date(record.get(name))
    except ValueError as err:
        raise LampFormatError(path, where, name, str(err)) from None
    if day is None:
        raise LampFormatError(path, where, name, "missing (every record needs a date to be ordered)")
    return day


def _score_field(path: str | os.PathLike[str], where: str, record: dict[str, Any], name: str) -> int:
    value = record.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or value not in (1, 2, 3, 4, 5):
        problem = "missing" if name not in record else f"expected a rating 1-5, got {value!r}"
        raise LampFormatError(path, where, name, problem)
    return int(value)


def _make_splits(
    task: str, events: list[Event], split: str, seed: int, min_profile: int, max_users: int | None,
    summary: BuildSummary,
) -> BuiltSplits:
    by_user: dict[str, list[Event]] = defaultdict(list)
    for event in events:
        by_user[event.user].append(event)
    for history in by_user.values():
        history.sort(key=lambda e: (e.day, e.tie))
    # The earliest question of a user is asked with `len - back` earlier events as its profile.
    back = 1 if split == "user" else max(_TIME_SPLIT_BACK.values())
    users = sorted(user for user, history in by_user.items() if len(history) - back >= min_profile)
    summary.users_seen = len(by_user)
    summary.users_too_few_records = len(by_user) - len(users)
    random.Random(seed).shuffle(users)
    if max_users is not None:
        summary.users_over_max = max(0, len(users) - max_users)
        users = users[:max_users]

    if split == "user":
        n_train = round(len(users) * _USER_SPLIT_SHARES[0])
        n_dev = round(len(users) * _USER_SPLIT_SHARES[1])
        cut = n_train + n_dev
        groups = {"train": users[:n_train], "dev": users[n_train:cut], "test": users[cut:]}
        asked = {name: [(user, len(by_user[user]) - 1) for user in group] for name, group in groups.items()}
    else:
        asked = {name: [(user, len(by_user[user]) - _TIME_SPLIT_BACK[name]) for user in users]
                 for name in SPLIT_NAMES}

    splits = {}
    for name in SPLIT_NAMES:
        questions = [_question(user, by_user[user], index) for user, index in asked[name]]
        golds = {by_user[user][index].item_id: by_user[user][index].output for user, index in asked[name]}
        splits[name] = LampSplit(task=task, questions=questions, golds=golds)
        summary.users[name] = len({user for user, _ in asked[name]})
        summary.questions[name] = len(questions)
    for line in summary.lines_of_text():
        log.info(line)
    return BuiltSplits(splits, summary)


def _question(user: str, history: list[Event], index: int) -> Question:
    """The question asking about history[index], with every earlier event as its profile."""
    query = history[index]
    profile = [ProfileItem(id=e.item_id, fields=dict(e.fields), day=e.day, position=position)
               for position, e in enumerate(history[:index])]
    return Question(id=query.item_id, input=query.input, profile=profile, user_id=user, day=query.day,
                    extra={"date": query.fields["date"]})
