"""Fixtures shared by every test module."""

from pathlib import Path

import pytest

from tapper import backbone as backbone_lib

# CI clones the repo elsewhere with shared/ beside it, so the data is found relative to the repo root.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_backbone() -> backbone_lib.Backbone:
    """One tiny random Llama for the whole session (seed 0).

    Shared between tests: do not change its weights in place (train, merge adapters); build a private
    copy with `tapper.backbone.tiny_backbone(seed=0)` for that.
    """
    return backbone_lib.tiny_backbone(seed=0)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real LaMP / Amazon / HuffPost files in ../shared/data (read-only); skips when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA
