from __future__ import annotations

import logging
import re

import bm25s
import numpy as np

from tapper.retrieval.base import register_retriever

# bm25s sets its own logger to DEBUG and logs every index it builds (one per query): with any root handler
# that floods the output, so only its warnings get through.
logging.getLogger("bm25s").setLevel(logging.WARNING)

_TOKEN = re.compile(r"\w+", re.UNICODE)


def bm25_tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


class BM25Retriever:
    """BM25 over one user's records, Lucene's IDF (always positive, so a term shared by half of a
    tiny history still counts). Ties go to the more recent record (higher index)."""

    name = "bm25"

    def rank(self, query: str, docs: list[str], k: int) -> list[int]:
        if not docs or k <= 0:
            return []
        index = bm25s.BM25(method="lucene")
        index.index([bm25_tokenize(d) or ["<empty>"] for d in docs], show_progress=False)
        q = bm25_tokenize(query)
        scores = index.get_scores(q) if q else np.zeros(len(docs))
        order = np.lexsort((-np.arange(len(docs)), -np.asarray(scores)))
        return [int(i) for i in order[:k]]


register_retriever("bm25", BM25Retriever)
