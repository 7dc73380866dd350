"""Record selection shared by TAP-PER's query prefix and the retrieval baselines.

One rule for training and inference alike: the candidates are the records that happened strictly
before the target (for a LaMP question: its whole profile; for history item i: items[:i]); the
retriever ranks them against the target's text and the top k are kept.
"""

# Registering the other retrievers is all these imports do; both load their models lazily.
from tapper.retrieval import dense, rfmem  # noqa: F401
from tapper.retrieval.base import Retriever, get_retriever, select_before
from tapper.retrieval.bm25 import BM25Retriever

__all__ = ["BM25Retriever", "Retriever", "get_retriever", "select_before"]
