"""Shared fixtures: paths to the repo's shipped files and to ../shared (skipped when absent)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import ROOT, SHARED

torch.set_num_threads(2)


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"needs {path} (the project's ../shared folder, present in CI); not found")
    return path


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def shared() -> Path:
    return _need(SHARED)


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    """The sample photos shipped in data/samples (copied from ../shared/data/samples)."""
    return ROOT / "data" / "samples"


@pytest.fixture(scope="session")
def coco128() -> Path:
    """../shared/data/coco128: val2017/*.jpg and annotations/instances_val2017.json."""
    return _need(SHARED / "data" / "coco128")


@pytest.fixture(scope="session")
def fastest_cfg() -> Path:
    return ROOT / "cfg" / "yolo-fastest-1.1.cfg"


@pytest.fixture(scope="session")
def fastest_weights() -> Path:
    return ROOT / "weights" / "yolo-fastest-1.1.weights"


@pytest.fixture(scope="session")
def coco_names() -> Path:
    return ROOT / "data" / "coco.names"
