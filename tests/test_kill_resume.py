"""A training run killed with SIGKILL mid-epoch resumes from last.pt and loses only that epoch."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import FIXTURES, ROOT

sys.path.insert(0, str(FIXTURES))
from yolo.checkpoint import load_checkpoint  # noqa: E402
from yolo.cli import train as train_cli  # noqa: E402

from train_synth import make_dataset  # noqa: E402

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")


def _rows(csv: Path) -> list[str]:
    return csv.read_text().splitlines()[1:] if csv.exists() else []


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume(tmp_path):
    data = make_dataset(tmp_path / "shapes", n_train=1024, n_valid=16, size=64)  # ~2 s epochs: room to land mid-epoch
    out = tmp_path / "run"
    args = ["--cfg", str(FIXTURES / "train_micro.cfg"), "--data", str(data), "--epochs", "2", "--batch", "8",
            "--output", str(out), "--no-progress", "--workers", "0", "--eval-interval", "100"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while len(_rows(out / "results.csv")) < 1:  # epoch 1 is done (last.pt is written before the row)
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "epoch 1 did not finish in time"
            time.sleep(0.05)
        time.sleep(0.5)  # into epoch 2
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert len(_rows(out / "results.csv")) == 1, "the kill did not land in epoch 2; make epochs longer"
    saved = load_checkpoint(out / "last.pt")  # intact: written atomically
    assert saved["epoch"] == 1
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]

    assert train_cli.main(["--resume", str(out / "last.pt"), "--no-progress", "--workers", "0"]) == 0
    rows = _rows(out / "results.csv")
    assert [int(r.split(",")[0]) for r in rows] == [1, 2]  # epoch 2 redone once, nothing else lost
    assert load_checkpoint(out / "last.pt")["epoch"] == 2
