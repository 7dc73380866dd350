"""Build LaMP tasks from raw dumps the way LaMP did: Amazon reviews -> LaMP-3, HuffPost -> LaMP-4 / LaMP-2N,
MovieLens tags + TMDB overviews -> LaMP-2 (movie tagging), Reddit posts -> LaMP-5R (post title generation).

Each raw record of a user is an `Event`: the profile item it is in the user's history, and the question
it would be if it were the user's latest record. A user's events are ordered by (day, tie), and a
question's profile is every event strictly before it in that order, so no profile ever sees the future.
Some events are profile items only (`askable=False`: a movie's second tag), so a question is always
about a record whose own answer appears nowhere in its profile.

Splits:
- "user": one question per user (the latest event); users shuffled with the seed into train/dev/test
  60/20/20, so no user is in two splits.
- "time": every user in every split; test asks the latest event, dev the 2nd latest, train the 3rd.
(Latest among the askable events, in both.)

Everything skipped on purpose is counted in the `BuildSummary` that comes back with the splits.
"""

from __future__ import annotations

import csv
import html
import json
import logging
import os
import random
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from tapper.data.lamp_io import LampFormatError, format_day, parse_date
from tapper.data.records import LampSplit, ProfileItem, Question
from tapper.data.tasks import MOVIE_TAGS, NEWS_CATEGORIES, get_task

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


# MovieLens tag (lower-cased, spaces collapsed) -> LaMP-2 tag, for tags that are the same tag written
# otherwise. HetRec strips hyphens from tags ("scifi", "thoughtprovoking"); the rest are the same words
# with or without an article or with a plain synonym (a novel is a book). Left unmapped on purpose,
# because they say something narrower or other than the LaMP tag: adjective forms ("violent", "dystopian",
# "romantic", "psychological", "twisted"), qualified tags ("cult classic", "dark fantasy", "plot twist",
# "ultraviolence", "based on a comic"), and "twist" alone.
MOVIE_TAG_SYNONYMS: dict[str, str] = {
    "scifi": "sci-fi", "sci fi": "sci-fi", "science fiction": "sci-fi",
    "based on book": "based on a book", "based on a novel": "based on a book", "based on novel": "based on a book",
    "thoughtprovoking": "thought-provoking", "thought provoking": "thought-provoking",
    "based on a true story": "true story", "based on true story": "true story",
    **{tag: tag for tag in MOVIE_TAGS},
}
assert set(MOVIE_TAG_SYNONYMS.values()) == set(MOVIE_TAGS), "every synonym must map onto a LaMP-2 tag"


def map_movie_tag(tag: str) -> str | None:
    """The LaMP-2 tag of a MovieLens tag (see MOVIE_TAG_SYNONYMS), or None when it is none of the 15."""
    return MOVIE_TAG_SYNONYMS.get(" ".join(tag.lower().split()))


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
    # False: a profile item only, never a question (e.g. a movie's second tag, whose movie is asked once).
    askable: bool = True


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
    # raw label -> the task label it was counted as (e.g. "scifi -> sci-fi"), with how many records
    renamed_labels: Counter[str] = field(default_factory=Counter)
    # whole things dropped, beside the lines they cost (e.g. "movies without a TMDB overview": 12)
    dropped: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)  # anything else a reader of the build needs to know
    users_seen: int = 0
    users_too_few_records: int = 0
    users_over_max: int = 0
    questions: dict[str, int] = field(default_factory=dict)
    users: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "task": self.task, "source": self.source, "split": self.split, "seed": self.seed,
            "min_profile": self.min_profile, "lines": self.lines, "skipped": dict(self.skipped),
            "dropped_categories": dict(self.dropped_categories), "renamed_labels": dict(self.renamed_labels),
            "dropped": dict(self.dropped), "notes": list(self.notes), "users_seen": self.users_seen,
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
        if self.renamed_labels:
            shown = ", ".join(f"{name} ({count})" for name, count in sorted(self.renamed_labels.items()))
            out.append(f"  labels renamed: {shown}")
        out += [f"  dropped {count} {what}" for what, count in sorted(self.dropped.items())]
        out += [f"  {note}" for note in self.notes]
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

    Works on any Amazon Reviews 2018 5-core file (All Beauty, Magazine Subscriptions, ...): it reads
    `reviewerID`, `unixReviewTime`, `overall` (1-5, e.g. 4.0), `reviewText` and `summary`, and ignores the rest.
    Besides exact duplicate lines, Amazon repeats one review under every variant of a product (same
    reviewer, text, summary, time and score; another asin), and some reviewers post one text on several
    products on other days or with another summary or score. Left in, the query's own text would sit in
    its profile, so by default every repeat of a reviewer's text is merged into its earliest copy (and
    counted: exact copies and repeats with other details apart).
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
    if merge_cross_listed:
        events = _keep_earliest(events, lambda e: " ".join(e.fields["text"].split()), summary,
                                "same review text again by its reviewer (other date, summary or score)")
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


# The files build_lamp2_from_movielens reads from its folder.
MOVIELENS_FILES = {
    "tagged": "hetrec_user_taggedmovies-timestamps.dat", "tags": "hetrec_tags.dat", "movies": "hetrec_movies.dat",
    "links": "movielens_links.csv", "tmdb": "tmdb_movies.csv",
}


def build_lamp2_from_movielens(
    folder: str | os.PathLike[str], *, split: SplitKind = "time", seed: int = 0, min_profile: int = 5,
    max_users: int | None = None,
) -> BuiltSplits:
    """LaMP-2 (movie tagging, "LaMP-2M") from MovieLens HetRec 2011 tags and TMDB overviews, as LaMP built it.

    `folder` holds MOVIELENS_FILES: the HetRec tag assignments with timestamps (userID, movieID, tagID, unix
    milliseconds; tab-separated), the HetRec tag names and movies (movieID -> imdbID; Latin-1), MovieLens
    links (imdbId -> tmdbId) and TMDB movies (id -> overview). A tag assignment becomes a record when its
    tag is one of LaMP-2's 15 (after MOVIE_TAG_SYNONYMS: "scifi" is sci-fi, "based on book" based on a
    book) and its movie has a TMDB overview, the movie's description; every other line is skipped and
    counted, and the movies dropped for want of an overview are counted apart.

    One record per (user, movie, tag), so a profile says every tag a user gave a movie. A question is
    asked about a movie once, at the first of the 15 tags the user gave it (earliest time, then file
    order): that tag is its answer, and the movie's other tags, given at or after it, are profile items of
    later questions only. So a question's own movie never appears in its profile, with or without its
    answer. The same tag given to the same movie again is skipped.
    """
    base = Path(folder)
    paths = {name: base / file for name, file in MOVIELENS_FILES.items()}
    for path in paths.values():
        if not path.is_file():
            expected = ", ".join(MOVIELENS_FILES.values())
            raise LampFormatError(base, "folder", None, f"no {path.name} in it (expected {expected})")
    summary = _summary("LaMP_2", base, split, seed, min_profile)
    tag_names = {row["id"]: row["value"] for _, row in _read_tsv(paths["tags"], ("id", "value"))}
    imdb_of = {row["id"]: _int_cell(paths["movies"], where, row, "imdbID")
               for where, row in _read_tsv(paths["movies"], ("id", "imdbID"))}
    tmdb_of: dict[int, int] = {}  # imdbID -> tmdbId (the first row that has one)
    for where, row in _read_csv(paths["links"], ("imdbId", "tmdbId")):
        imdb = _int_cell(paths["links"], where, row, "imdbId")
        if row["tmdbId"].strip() and imdb not in tmdb_of:
            tmdb_of[imdb] = _int_cell(paths["links"], where, row, "tmdbId")
    overview_of: dict[int, str] = {}  # tmdb id -> overview (the first non-empty one)
    broken = f"malformed rows in {paths['tmdb'].name} (a stray field or a non-numeric id)"

    def count_broken() -> None:
        summary.dropped[broken] += 1

    for _, row in _read_csv(paths["tmdb"], ("id", "overview"), malformed=count_broken):
        tmdb_id = row["id"].strip()
        if not (tmdb_id.isascii() and tmdb_id.isdigit()):
            count_broken()
        elif row["overview"].strip() and int(tmdb_id) not in overview_of:
            overview_of[int(tmdb_id)] = row["overview"].strip()

    candidates: list[Event] = []
    movie_of: dict[str, str] = {}  # record id -> movieID
    no_overview: set[str] = set()
    tagged = paths["tagged"]
    for where, row in _read_tsv(tagged, ("userID", "movieID", "tagID", "unixTimeStamp"), summary):
        if row["tagID"] not in tag_names:
            raise LampFormatError(tagged, where, "tagID", f"tag {row['tagID']!r} is not in {paths['tags'].name}")
        if row["movieID"] not in imdb_of:
            problem = f"movie {row['movieID']!r} is not in {paths['movies'].name}"
            raise LampFormatError(tagged, where, "movieID", problem)
        if not row["userID"].strip():
            raise LampFormatError(tagged, where, "userID", "empty")
        seconds = _int_cell(tagged, where, row, "unixTimeStamp") / 1000  # HetRec times are in milliseconds
        day = _date_field(tagged, where, {"unixTimeStamp": seconds}, "unixTimeStamp")
        raw_tag = tag_names[row["tagID"]]
        tag = map_movie_tag(raw_tag)
        if tag is None:
            summary.skipped["tag outside the 15 LaMP-2 tags"] += 1
            continue
        if raw_tag != tag:
            summary.renamed_labels[f"{raw_tag} -> {tag}"] += 1
        description = overview_of.get(tmdb_of.get(imdb_of[row["movieID"]], -1))
        if description is None:
            summary.skipped["movie without a TMDB overview (no tmdbId for its imdbID, or no overview)"] += 1
            no_overview.add(row["movieID"])
            continue
        number = where.removeprefix("line ")
        movie_of[number] = row["movieID"]
        fields = {"description": description, "tag": tag, "date": format_day(day)}
        candidates.append(_event("LaMP_2", row["userID"].strip(), number, day, int(number), fields, output=tag))
    if no_overview:
        summary.dropped["movies without a TMDB overview (their tag lines skipped above)"] = len(no_overview)

    events = _keep_earliest(candidates, lambda e: (movie_of[e.item_id], e.output), summary,
                            "same tag on the same movie again by the same user")
    asked: set[tuple[str, str]] = set()
    for i, event in enumerate(events):  # in (user, day, tie) order: each movie is asked about its first tag
        movie = (event.user, movie_of[event.item_id])
        if movie in asked:
            events[i] = replace(event, askable=False)
        asked.add(movie)
    later_tags = sum(not e.askable for e in events)
    if later_tags:
        summary.notes.append(f"{later_tags} record(s) are a further tag of a movie its user had tagged already: "
                             "profile items only (each movie is asked once, about its first tag)")
    return _make_splits(summary.task, events, split, seed, min_profile, max_users, summary)


REDDIT_MIN_BODY_WORDS = 5  # a shorter body ("Title", "^", "Let me know") leaves the whole post in its title
REDDIT_GONE_BODIES = ("[deleted]", "[removed]")
REDDIT_SKIPPED_AUTHORS = ("[deleted]", "AutoModerator")
_WORD = re.compile(r"\w")


def build_lamp5r_from_reddit(
    path: str | os.PathLike[str], *, split: SplitKind = "time", seed: int = 0, min_profile: int = 5,
    max_users: int | None = None, min_body_words: int = REDDIT_MIN_BODY_WORDS,
) -> BuiltSplits:
    """LaMP-5R (Reddit post title generation: LaMP-5's shape, a post body in place of a paper abstract).

    From Reddit posts in JSON lines (`author`, `id`, `created` in unix seconds, `title`, `text` the body,
    optional `subreddit`): the input is "Generate a title for the following Reddit post: " + body, the
    output the author's title; profile items carry `title`, `text`, `subreddit` and `date`, and the post
    id is the record id. Reddit's HTML escapes are undone (`&amp;`, the `&#x200B;` zero-width spaces of
    its editor, then removed). Skipped and counted: deleted authors and AutoModerator, deleted or removed
    bodies, bodies under `min_body_words` words (placeholders whose post is all in the title), empty
    titles, and an author's repeat of a body (a cross-post, or a reused template) after its earliest post.
    """
    if min_body_words < 0:
        raise ValueError(f"min_body_words must be >= 0, not {min_body_words}")
    task = get_task("LaMP_5R")
    summary = _summary(task.name, path, split, seed, min_profile)
    events: list[Event] = []
    lines_of_ids: dict[str, int] = {}
    for number, record in _read_jsonl(path, summary):
        where = f"line {number}"
        author = _str_field(path, where, record, "author").strip()
        post_id = _str_field(path, where, record, "id").strip()
        day = _date_field(path, where, record, "created")
        title = _reddit_text(_str_field(path, where, record, "title"))
        body = _reddit_text(_str_field(path, where, record, "text"))
        subreddit = record.get("subreddit")
        if subreddit is not None and not isinstance(subreddit, str):
            raise LampFormatError(path, where, "subreddit", f"expected a string, got {type(subreddit).__name__}")
        if not post_id:
            raise LampFormatError(path, where, "id", "empty")
        if post_id in lines_of_ids:
            problem = f"post id {post_id!r} already used on line {lines_of_ids[post_id]}"
            raise LampFormatError(path, where, "id", problem)
        lines_of_ids[post_id] = number
        if not author or author in REDDIT_SKIPPED_AUTHORS:
            summary.skipped["deleted author or AutoModerator"] += 1
            continue
        if body in REDDIT_GONE_BODIES:
            summary.skipped["post body deleted or removed"] += 1
            continue
        if sum(bool(_WORD.search(word)) for word in body.split()) < min_body_words:
            summary.skipped[f"post body under {min_body_words} words"] += 1
            continue
        if not title:
            summary.skipped["empty title"] += 1
            continue
        fields: dict[str, Any] = {"title": title, "text": body}
        if subreddit:
            fields["subreddit"] = subreddit
        fields["date"] = format_day(day)
        events.append(_event(task.name, author, post_id, day, number, fields, output=title))
    events = _keep_earliest(events, lambda e: " ".join(e.fields["text"].split()), summary,
                            "same body again by its author (a cross-post or template)")
    return _make_splits(task.name, events, split, seed, min_profile, max_users, summary)


def _reddit_text(text: str) -> str:
    return html.unescape(text).replace("\u200b", "").strip()


BUILDERS: dict[str, Callable[..., BuiltSplits]] = {
    "amazon-lamp3": build_lamp3_from_amazon,
    "huffpost-lamp4": build_lamp4_from_huffpost,
    "huffpost-lamp2n": build_lamp2n_from_huffpost,
    "movielens-lamp2": build_lamp2_from_movielens,
    "reddit-lamp5r": build_lamp5r_from_reddit,
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


def _keep_earliest(
    events: list[Event], key: Callable[[Event], Any], summary: BuildSummary, reason: str
) -> list[Event]:
    """Each user's events with one per key: the earliest by (day, tie); the later ones are counted as skipped.
    The events come back in (user, day, tie) order."""
    kept, seen = [], set()
    for event in sorted(events, key=lambda e: (e.user, e.day, e.tie)):
        mark = (event.user, key(event))
        if mark in seen:
            summary.skipped[reason] += 1
            continue
        seen.add(mark)
        kept.append(event)
    return kept


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


def _read_tsv(
    path: Path, columns: tuple[str, ...], summary: BuildSummary | None = None
) -> Iterator[tuple[str, dict[str, str]]]:
    """("line N", {column: cell}) for each row of a tab-separated file whose header names `columns`.

    Lines are read as UTF-8, falling back to Latin-1 (HetRec's own encoding) for a line that is not; with a
    summary, rows count as lines read and blank lines as skipped."""
    with path.open("rb") as handle:
        header = _decode(handle.readline()).rstrip("\r\n").split("\t")
        missing = [name for name in columns if name not in header]
        if missing:
            raise LampFormatError(path, "line 1", None, f"header lacks column(s) {missing} (it has {header})")
        for number, raw in enumerate(handle, start=2):
            line = _decode(raw).rstrip("\r\n")
            if summary is not None:
                summary.lines += 1
            if not line.strip():
                if summary is not None:
                    summary.skipped["blank line"] += 1
                continue
            cells = line.split("\t")
            if len(cells) != len(header):
                raise LampFormatError(path, f"line {number}", None,
                                      f"expected {len(header)} tab-separated fields, got {len(cells)}")
            yield f"line {number}", dict(zip(header, cells, strict=True))


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _read_csv(
    path: Path, columns: tuple[str, ...], malformed: Callable[[], None] | None = None
) -> Iterator[tuple[str, dict[str, str]]]:
    """("line N", row) for each record of a UTF-8 CSV file with a header naming `columns`.

    A record with fewer or more fields than the header is an error, or, given `malformed`, skipped after
    calling it (for scraped files where a stray unquoted comma breaks a row)."""
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [name for name in columns if name not in (reader.fieldnames or [])]
            if missing:
                raise LampFormatError(path, "line 1", None, f"header lacks column(s) {missing}")
            for row in reader:
                where = f"line {reader.line_num}"
                if None in row or None in row.values():
                    if malformed is None:
                        raise LampFormatError(path, where, None, f"expected {len(reader.fieldnames or [])} "
                                              f"fields, got {len(row) - (None in row) + len(row.get(None) or [])}")
                    malformed()
                    continue
                yield where, row
    except UnicodeDecodeError:
        raise LampFormatError(path, "file", None, "not valid UTF-8") from None
    except csv.Error as err:
        raise LampFormatError(path, "file", None, f"not valid CSV: {err}") from None


def _int_cell(path: str | os.PathLike[str], where: str, row: dict[str, str], name: str) -> int:
    value = row[name].strip()
    if not value.isascii() or not value.isdigit():
        raise LampFormatError(path, where, name, f"expected a whole number, got {row[name]!r}")
    return int(value)


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
    # Where each user's askable events are; the earliest question a user is asked (the `back`-th askable
    # event from the end) has every event before it as its profile, and that must be min_profile long.
    askable = {user: [i for i, e in enumerate(history) if e.askable] for user, history in by_user.items()}
    back = 1 if split == "user" else max(_TIME_SPLIT_BACK.values())
    users = sorted(user for user, at in askable.items() if len(at) >= back and at[-back] >= min_profile)
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
        asked = {name: [(user, askable[user][-1]) for user in group] for name, group in groups.items()}
    else:
        asked = {name: [(user, askable[user][-_TIME_SPLIT_BACK[name]]) for user in users] for name in SPLIT_NAMES}

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
