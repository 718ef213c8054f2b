"""A wheel / plain (not editable) install works from any folder: the cfgs, the default weights and
coco.names are package data, and the ``darknet-yolo`` console script runs.

A wheel is built from a copy of ``yolo/`` + ``pyproject.toml`` (nothing else of the checkout
goes along) and installed into a fresh ``venv --system-site-packages`` (torch, OpenCV ... come from
this interpreter, nothing is downloaded); everything then runs from an unrelated folder, and
the test checks that the venv's copy of ``yolo`` is the one imported, not this checkout.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT, SHARED

DOG = SHARED / "data" / "samples" / "dog.jpg"

DETECT = """
import sys
import cv2
import yolo
print(yolo.__file__)
det = yolo.Detector("yolo-fastest-1.1.cfg", "yolo-fastest-1.1.weights")
boxes = det(cv2.imread(sys.argv[1]))
print(" ".join(det.names[int(c)] for c in boxes[:, 5]))
"""


def _run(cmd: list[str], cwd: Path, timeout: int = 600) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with this package installed by ``pip install .`` (not editable); its bin folder."""
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"
    shutil.copytree(ROOT / "yolo", src / "yolo", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(ROOT / "pyproject.toml", src / "pyproject.toml")
    # the wheel is built by this interpreter's setuptools (a new venv's own may be too old to build one)
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
          "-w", tmp / "dist", src], tmp)
    wheel = next((tmp / "dist").glob("darknet_yolo-*.whl"))
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", venv], tmp)
    _run([venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel], tmp)
    return venv / "bin"


@pytest.mark.slow
@pytest.mark.skipif(not DOG.exists(), reason=f"needs the shared sample photos ({DOG})")
def test_detector_from_cfg_names_finds_the_dog(installed: Path, tmp_path: Path):
    out = _run([installed / "python", "-c", DETECT, DOG], tmp_path).splitlines()
    where, labels = Path(out[0]), out[-1].split()
    assert installed.parent in where.parents, f"imported {where}, not the venv's copy"
    assert "dog" in labels, labels


@pytest.mark.slow
def test_console_script_and_module_tools_run(installed: Path, tmp_path: Path):
    table = _run([installed / "darknet-yolo", "info", "yolov3-tiny.cfg"], tmp_path)
    assert "Total BFLOPS 5.571" in table and " conv " in table
    assert "info" in _run([installed / "darknet-yolo", "--help"], tmp_path)
    assert "Total BFLOPS" in _run([installed / "python", "-m", "yolo.info", "yolo-fastest-1.1.cfg"], tmp_path)
