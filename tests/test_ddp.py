"""DDP through torchrun on CPU (gloo): two processes train, only rank 0 writes, the result loads."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import torch

from helpers import FIXTURES, ROOT
from helpers import TRAIN_TINY as TINY

sys.path.insert(0, str(FIXTURES))
from yolo.checkpoint import load_checkpoint, load_weights  # noqa: E402
from yolo.model import Darknet  # noqa: E402

from train_synth import make_dataset  # noqa: E402


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(tmp_path):
    data = make_dataset(tmp_path / "shapes", n_train=16, n_valid=8, size=128)
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           str(ROOT / "train.py"), "--cfg", str(TINY), "--data", str(data), "--epochs", "2", "--batch", "8",
           "--batch-size", "2", "--workers", "0", "--output", str(out), "--no-progress", "--sync-bn"]
    # own process group: on a hang, the timeout kills torchrun's workers too, not just torchrun
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        raise AssertionError("torchrun did not finish in 300 s:\n" + stdout[-2000:] + stderr[-3000:])
    r = subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    # rank 0 alone prints the summary and writes the files
    assert r.stdout.count("hyper-parameters in use") == 1
    assert "--sync-bn ignored on CPU" in r.stdout
    assert "x 2 (DDP)" in r.stdout and "2 accumulated x 2 ranks" in r.stdout
    files = {p.name for p in out.iterdir()}
    core = {"best.pt", "best.weights", "last.pt", "results.csv", "results.png", "summary.json", TINY.name}
    assert core <= files, sorted(files)
    assert all(f.endswith(".png") for f in files - core), sorted(files)  # the rest: training pictures
    state = load_checkpoint(out / "last.pt")
    # 16 images / 2 ranks = 8 per rank = 4 minibatches of 2 = 2 steps of 8 images per epoch
    assert state["step"] == 4 and state["seen"] == 32
    m = Darknet(TINY)
    load_weights(m, out / "last.pt")
    with torch.no_grad():
        assert torch.isfinite(m.eval()(torch.rand(1, 3, 128, 128))).all()
    assert len((out / "results.csv").read_text().splitlines()) == 3
