"""Small raw dumps and LaMP files that the data tests write into tmp_path (never copies of real data)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
AMAZON_DUMP = SHARED_DATA / "amazon2018" / "All_Beauty_5.json"
HUFFPOST_DUMP = SHARED_DATA / "huffpost" / "News_Category_Dataset_v2.partial.json"
LAMP7_DEV = SHARED_DATA / "lamp7"

DAY = 86400
T0 = 1_500_000_000 - 1_500_000_000 % DAY  # a midnight (2017-07-14), so dates are whole days


def amazon_review(user: str, day: int, overall: float, text: str | None, asin: str = "B000", **more: Any) -> dict:
    record = {"overall": overall, "verified": True, "reviewerID": user, "asin": asin,
              "summary": f"{user} title {day}", "unixReviewTime": T0 + day * DAY, **more}
    if text is not None:
        record["reviewText"] = text
    return record


def huffpost_article(author: str, date: str, category: str, headline: str, text: str) -> dict:
    return {"category": category, "headline": headline, "authors": author, "link": "https://example.org/a",
            "short_description": text, "date": date}


def write_lines(path: Path, lines: list[dict | str]) -> Path:
    """A JSON-lines file; str entries are written verbatim (to plant broken or duplicate lines)."""
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines),
                    encoding="utf-8")
    return path


def amazon_fixture(path: Path) -> Path:
    """Users: a (9 reviews), b (7), c (3), d (6, two on its last day); one duplicate, one copy, one empty."""
    lines: list[dict | str] = []
    lines += [amazon_review("a", day, 1 + day % 5, f"review {day} by a") for day in range(9)]
    lines += [amazon_review("b", 10 + day, 4, f"review {day} by b") for day in range(7)]
    lines += [amazon_review("c", day, 2, f"review {day} by c") for day in range(3)]
    lines += [amazon_review("d", day, 3, f"review {day} by d") for day in range(5)]
    lines.append(amazon_review("d", 4, 5, "same day as d's 5th, later in the file"))
    lines.append(json.dumps(lines[0]))  # exact duplicate line
    lines.append(amazon_review("a", 0, 1, "review 0 by a", asin="B999"))  # the same review, another product
    lines.append(amazon_review("b", 30, 5, None))  # no review text
    lines.append(amazon_review("b", 31, 5, "   "))  # blank review text
    return write_lines(path, lines)


def huffpost_fixture(path: Path) -> Path:
    """Newest first like the real dump. Authors: x (8 articles), y (6), z (2), and one without an author."""
    lines: list[dict | str] = []
    categories = ["POLITICS", "ARTS", "TECH", "COMEDY", "WELLNESS", "TASTE", "PARENTING", "COLLEGE"]
    for day in reversed(range(8)):
        lines.append(huffpost_article("x", f"2018-03-{day + 1:02d}", categories[day], f"x headline {day}",
                                      f"x text {day}"))
    for day in reversed(range(6)):
        lines.append(huffpost_article("y", f"2018-03-{day + 1:02d}", "SPORTS", f"y headline {day}", f"y text {day}"))
    lines.append(huffpost_article("z", "2018-03-01", "CRIME", "z headline", "z text"))
    lines.append(huffpost_article("z", "2018-03-02", "CRIME", "z headline 2", "z text 2"))
    lines.append(huffpost_article("", "2018-03-03", "CRIME", "anonymous headline", "anonymous text"))
    return write_lines(path, lines)


def lamp_questions(n_users: int = 3, n_items: int = 4, dated: bool = True) -> list[dict]:
    """Valid LaMP-3 style question records (profile in reverse date order, to exercise sorting)."""
    records = []
    for u in range(n_users):
        profile = []
        for j in reversed(range(n_items)):
            item: dict[str, Any] = {"id": f"{u}_{j}", "text": f"réview {j} of user {u}", "score": str(1 + j % 5)}
            if dated:
                item["date"] = f"2020-01-{j + 1:02d}"
            profile.append(item)
        records.append({"id": str(100 + u), "input": f"What is the score? review: query of user {u}",
                        "profile": profile})
    return records


def write_json(path: Path, obj: Any) -> Path:
    path.write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")
    return path
