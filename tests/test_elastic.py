"""Training on a cluster and through its faults (CPU, gloo, 127.0.0.1 only): two torchrun agents train
together; a SIGKILLed worker's group is restarted by torchrun and resumes from the step checkpoint; a
SIGKILLed single-process run resumed from its step checkpoint ends bit-equal to an uninterrupted one;
evaluation spread over 2 ranks gives the figures of one process."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import FIXTURES, ROOT

sys.path.insert(0, str(FIXTURES))
from yolo.checkpoint import latest_checkpoint, load_checkpoint, step_checkpoints  # noqa: E402

from train_synth import make_dataset  # noqa: E402

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")]

MICRO = FIXTURES / "train_micro.cfg"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (Linux /proc; none once it is gone)."""
    found = []
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                found += [int(c) for c in (task / "children").read_text().split()]
    return found


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc`` and every process below it: torchrun starts each worker in a session of its
    own, so killing the agent's process group would leave the workers waiting on gloo."""
    if proc.poll() is not None:  # ended (and reaped): its pid may be another process's now
        return
    tree, todo = [], [proc.pid]
    while todo:  # collected before any kill: an orphan is re-parented and lost from view
        tree.append(pid := todo.pop())
        todo += children(pid)
    for pid in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def finish(proc: subprocess.Popen, timeout: float = 240) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc)
        out, _ = proc.communicate()
        raise AssertionError(f"did not finish in {timeout} s:\n{out[-3000:]}") from None
    return out


def wait_for(cond, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert proc.poll() is None, "the run ended before the kill:\n" + (proc.stdout.read() or "")[-3000:]
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def train_args(data: Path, out: Path, *more: str) -> list[str]:
    return [str(ROOT / "train.py"), "--cfg", str(MICRO), "--data", str(data), "--batch", "8", "--workers", "0",
            "--output", str(out), "--no-progress", "--eval-interval", "100", *more]


def test_two_agents_train_two_steps_together(tmp_path):
    data = make_dataset(tmp_path / "shapes", n_train=32, n_valid=8, size=64)
    out, port = tmp_path / "run", free_port()
    agents = [start([*TORCHRUN, "--nnodes", "2", "--nproc_per_node", "1", "--node_rank", str(rank),
                     "--master_addr", "127.0.0.1", "--master_port", str(port),
                     *train_args(data, out, "--epochs", "1", "--max-steps", "2")], tmp_path) for rank in (0, 1)]
    try:
        logs = [finish(a) for a in agents]
    finally:  # one agent timed out: the other is not left running
        for a in agents:
            kill_tree(a)
    assert [a.returncode for a in agents] == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    assert logs[0].count("hyper-parameters in use") == 1 and "hyper-parameters in use" not in logs[1]
    assert "x 2 (DDP)" in logs[0] and "x 2 ranks" in logs[0]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2
    assert load_checkpoint(out / "last.pt")["seen"] == 16  # 2 steps of 8 images, 4 per rank and step


def test_killed_worker_group_is_restarted_and_resumes(tmp_path):
    """c10d rendezvous, --nnodes 1:1 (MIN:MAX): a worker SIGKILLed mid-epoch; torchrun restarts the group
    once and it continues from the run's step checkpoint without being told, ending at the planned step.
    One restart allowed: the restarted group must connect at the first try (it did not while it joined over
    the store torchrun keeps across restarts, see yolo.distributed.group_store)."""
    data = make_dataset(tmp_path / "shapes", n_train=256, n_valid=8, size=64)  # 32 steps, killed after step 4
    out = tmp_path / "run"
    # endpoint port 0: the one agent binds a free port itself (a cluster names a fixed one)
    cmd = [*TORCHRUN, "--nnodes", "1:1", "--nproc_per_node", "2", "--max-restarts", "1",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", "127.0.0.1:0", "--rdzv-id", "elastic-test",
           "--rdzv-conf", "join_timeout=60",
           *train_args(data, out, "--epochs", "1", "--save-period", "4", "--keep", "2")]
    agent = start(cmd, tmp_path)
    try:
        wait_for(lambda: step_checkpoints(out), agent)
        workers = children(agent.pid)
        assert len(workers) == 2, workers
        os.kill(workers[-1], signal.SIGKILL)
    except BaseException:
        kill_tree(agent)
        raise
    log = finish(agent)
    assert agent.returncode == 0, log[-3000:]
    assert "resumed " in log and "step-" in log.split("resumed ", 1)[1].split("\n", 1)[0], log[-3000:]
    assert log.count("hyper-parameters in use") == 2, log[-3000:]  # rank 0 started twice: one restart
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 256 // 8
    assert load_checkpoint(out / "last.pt")["step"] == 256 // 8
    assert len(step_checkpoints(out)) <= 2  # --keep


def test_elastic_resume_follows_the_run_id_not_the_restart_count(tmp_path, monkeypatch):
    """Each node's agent counts its own restarts: one restarted because another node failed sees
    TORCHELASTIC_RESTART_COUNT=0 (seen with two agents here), and its ranks must resume all the same."""
    from yolo.checkpoint import save_checkpoint, step_checkpoint_path
    from yolo.cli.train import elastic_resume

    path = step_checkpoint_path(tmp_path, 4)
    save_checkpoint({"model": {}, "run_id": "job-7", "step": 4}, path)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-7")
    assert elastic_resume(tmp_path) == str(path)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-8")  # another torchrun run: refused later, not resumed
    assert elastic_resume(tmp_path) is None
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")  # no torchrun: --resume by hand
    assert elastic_resume(tmp_path) is None
    assert elastic_resume(tmp_path / "absent") is None


def test_sigkilled_run_resumes_from_step_checkpoint_exactly(tmp_path):
    data = make_dataset(tmp_path / "shapes", n_train=128, n_valid=8, size=64)
    common = ["--epochs", "2", "--batch-size", "4", "--seed", "3", "--save-period", "3"]
    full = start([sys.executable, *train_args(data, tmp_path / "full", *common)], tmp_path)
    assert (full_log := finish(full)) and full.returncode == 0, full_log[-3000:]

    cut = tmp_path / "cut"
    proc = start([sys.executable, *train_args(data, cut, *common)], tmp_path)
    try:
        wait_for(lambda: step_checkpoints(cut), proc)
        os.killpg(proc.pid, signal.SIGKILL)
    except BaseException:
        kill_tree(proc)
        raise
    finish(proc)
    assert proc.returncode == -signal.SIGKILL and not (cut / "summary.json").exists()
    latest = latest_checkpoint(cut)
    saved = load_checkpoint(latest)
    assert latest.name.startswith("step-") and saved["step"] % 3 == 0 and saved["batch_in_epoch"] > 0
    # started again by hand: refused without --resume, continued with it
    again = start([sys.executable, *train_args(data, cut, *common)], tmp_path)
    assert "already holds a run" in finish(again) and again.returncode == 2
    resumed = start([sys.executable, str(ROOT / "train.py"), "--resume", str(cut), "--no-progress", "--workers",
                     "0"], tmp_path)
    log = finish(resumed)
    assert resumed.returncode == 0, log[-3000:]
    assert f"resumed {latest}: epoch {saved['epoch'] + 1}, step {saved['step']}" in log
    a, b = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(cut / "last.pt")
    assert a["step"] == b["step"] == 2 * 128 // 8
    for key in ("model", "ema"):
        for k, v in a[key].items():
            torch.testing.assert_close(v, b[key][k], atol=0, rtol=0, msg=f"{key}.{k}")  # same machine: bit-exact
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        torch.testing.assert_close(sa["momentum_buffer"], sb["momentum_buffer"], atol=0, rtol=0)


def test_resume_refuses_another_dataset(tmp_path):
    data = make_dataset(tmp_path / "shapes", n_train=32, n_valid=8, size=64)
    other = make_dataset(tmp_path / "other", n_train=32, n_valid=8, size=64, seed=1)
    out = tmp_path / "run"
    first = start([sys.executable, *train_args(data, out, "--epochs", "1", "--max-steps", "2")], tmp_path)
    assert (log := finish(first)) and first.returncode == 0, log[-2000:]
    again = start([sys.executable, str(ROOT / "train.py"), "--resume", str(out), "--data", str(other),
                   "--no-progress"], tmp_path)
    log = finish(again)
    assert again.returncode == 2 and "--data" in log and "differ" in log, log[-2000:]


def test_evaluation_on_two_ranks_equals_one_process(tmp_path):
    from yolo.checkpoint import save_checkpoint
    from yolo.model import Darknet
    from yolo.trainer import init_head_biases

    data = make_dataset(tmp_path / "shapes", n_train=4, n_valid=24, size=64)
    torch.manual_seed(0)
    model = Darknet(MICRO)
    init_head_biases(model)
    weights = tmp_path / "w.pt"
    save_checkpoint({"model": model.state_dict(), "cfg_text": model.cfg_text, "names": ["a", "b", "c"]}, weights)
    args = [str(ROOT / "test.py"), "--cfg", str(MICRO), "--weights", str(weights), "--data", str(data),
            "--batch-size", "1", "--workers", "0", "--no-progress"]
    one = start([sys.executable, *args, "--metrics-json", str(tmp_path / "one.json")], tmp_path)
    assert (log := finish(one)) and one.returncode == 0, log[-2000:]
    two = start([*TORCHRUN, "--standalone", "--nproc_per_node", "2", *args, "--metrics-json",
                 str(tmp_path / "two.json"), "--save-json", str(tmp_path / "dets.json")], tmp_path)
    log = finish(two)
    assert two.returncode == 0, log[-3000:]
    assert log.count("metrics written to") == 1  # rank 0 alone reports
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert a["images"] == b["images"] == 24 and a["detections"] == b["detections"] > 0
    assert a["stats"] == b["stats"] and a["per_class"] == b["per_class"]
    assert len(json.loads((tmp_path / "dets.json").read_text())) == a["detections"]
