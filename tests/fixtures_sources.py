"""Small MovieLens (HetRec + links + TMDB) and Reddit dumps that the tests write into tmp_path.

Generated here, never copied from ../shared/data: the files have the real ones' layout (tab-separated
HetRec files with a header, a Latin-1 movies file, CSV links and TMDB files, JSON-lines Reddit posts).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from fixtures_data import DAY, T0, write_lines

MOVIELENS_DUMP = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "movielens"
REDDIT_DUMP = MOVIELENS_DUMP.parent / "reddit" / "reddit_college_posts.jsonl"
MAGAZINE_DUMP = MOVIELENS_DUMP.parent / "amazon2018" / "Magazine_Subscriptions_5.json"

TAG_IDS = {"scifi": 1, "based on book": 2, "comedy": 3, "action": 4, "violence": 5, "boring": 6, "classic": 7,
           "dark comedy": 8}

# (user, day, movie, tag) in file order. Movie 8 has no TMDB row, movie 9 no tmdbId: both are dropped.
# u1's two tags of movie 7 share one millisecond, "action" first in the file; its movie 3 gets a second
# tag ("classic") two days after the first; "dark comedy" on movie 5 is given twice.
TAGGINGS = [
    ("u1", 9, 7, "action"), ("u1", 9, 7, "violence"),  # before the rest: ordering is by time, not file
    ("u1", 0, 1, "scifi"), ("u1", 1, 2, "based on book"), ("u1", 2, 3, "comedy"), ("u1", 3, 4, "boring"),
    ("u1", 3, 4, "action"), ("u1", 4, 3, "classic"), ("u1", 5, 8, "action"), ("u1", 5, 9, "comedy"),
    ("u1", 6, 5, "dark comedy"), ("u1", 7, 5, "dark comedy"), ("u1", 8, 6, "violence"),
    ("u2", 0, 1, "comedy"), ("u2", 1, 2, "comedy"),
    ("u3", 0, 1, "action"), ("u3", 1, 2, "action"), ("u3", 2, 3, "comedy"), ("u3", 3, 5, "comedy"),
    ("u3", 4, 6, "classic"),
]


def overview(movie: int) -> str:
    return "A heist, then\na chase." if movie == 5 else f"the overview of movie {movie}"


def tag_line(user: str, day: int, movie: int, tag: str | int) -> str:
    tag_id = TAG_IDS[tag] if isinstance(tag, str) else tag
    return f"{user}\t{movie}\t{tag_id}\t{(T0 + day * DAY) * 1000}"


def movielens_fixture(folder: Path, tag_lines: list[str] | None = None) -> Path:
    """The five files in `folder`; `tag_lines` replaces the tag assignments (to plant broken lines)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = tag_lines if tag_lines is not None else [tag_line(*t) for t in TAGGINGS]
    (folder / "hetrec_user_taggedmovies-timestamps.dat").write_text(
        "userID\tmovieID\ttagID\tunixTimeStamp\n" + "".join(line + "\n" for line in lines), encoding="utf-8")
    (folder / "hetrec_tags.dat").write_text(
        "id\tvalue\n" + "".join(f"{i}\t{name}\n" for name, i in TAG_IDS.items()), encoding="utf-8")
    movies = ["id\ttitle\timdbID\tyear"] + [f"{m}\t{'Amélie' if m == 1 else f'movie {m}'}\t{100 + m:07d}\t2001"
                                            for m in range(1, 10)]
    (folder / "hetrec_movies.dat").write_bytes(("\n".join(movies) + "\n").encode("latin-1"))
    with (folder / "movielens_links.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["movieId", "imdbId", "tmdbId"])
        for m in range(1, 10):  # other movie ids than HetRec's: the join goes through imdbId
            writer.writerow([1000 + m, f"{100 + m:07d}" if m % 2 else str(100 + m), "" if m == 9 else 500 + m])
    with (folder / "tmdb_movies.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "title", "overview", "release_date"])
        for m in range(1, 8):
            writer.writerow([500 + m, f"movie {m}", overview(m), "2001-01-01"])
    with (folder / "tmdb_movies.csv").open("a", encoding="utf-8", newline="") as handle:
        handle.write("999,Broken,an overview, with a stray comma,2001-01-01\n")  # one field too many
    return folder


def reddit_post(author: str, day: int, title: str, text: str, post_id: str | None = None,
                subreddit: str = "College", seconds: int = 0) -> dict:
    return {"author": author, "subreddit": subreddit, "id": post_id or f"{author}{day}",
            "created": T0 + day * DAY + seconds, "title": title, "text": text}


def body(author: str, day: int) -> str:
    return f"{author} writes post {day} about classes and dorms"


def reddit_fixture(path: Path) -> Path:
    """ann: 8 posts (days 0-7) plus a cross-post, a placeholder body, a removed one and an exact duplicate
    line; bob: 6 posts; cy: 2 posts; and a deleted author."""
    lines: list[dict | str] = [reddit_post("ann", 7, "ann title 7", body("ann", 7))]  # out of time order
    lines += [reddit_post("ann", day, f"ann title {day}", body("ann", day)) for day in range(6)]
    lines.append(reddit_post("ann", 6, "Q &amp; A", "&#x200B;\n\nann asks &amp; answers five words"))
    lines.append(reddit_post("ann", 5, "ann title 5 again", body("ann", 5), post_id="annx", subreddit="Emory",
                             seconds=60))  # the same body cross-posted a minute later
    lines.append(reddit_post("ann", 8, "Everything is in this title", "Title", post_id="anns"))
    lines.append(reddit_post("ann", 9, "Gone", "[removed]", post_id="annr"))
    lines.append(json.dumps(lines[1]))  # exact duplicate line
    lines += [reddit_post("bob", day, f"bob title {day}", body("bob", day)) for day in range(6)]
    lines += [reddit_post("cy", day, f"cy title {day}", body("cy", day)) for day in range(2)]
    lines.append(reddit_post("[deleted]", 3, "lost", body("someone", 3), post_id="del3"))
    return write_lines(path, lines)
