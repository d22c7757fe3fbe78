"""What the engine tests share: one tiny random Wan VACE pipeline, built once per run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def wan_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random `WanVACEPipeline` saved in diffusers layout (nothing is downloaded)."""
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    import torch

    from ref2video.engines.wan.random_pipeline import TINY, build_pipeline

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead on a shared 2-core machine
    return build_pipeline(tmp_path_factory.mktemp("wan") / "tiny-vace", TINY)
