"""train.py end to end: learns from scratch, fine-tunes a real model, resumes exactly, fails clearly."""
from __future__ import annotations

import json
import shutil
import sys
import warnings
from pathlib import Path

import pytest
import torch

from helpers import FIXTURES
from helpers import TRAIN_TINY as TINY

sys.path.insert(0, str(FIXTURES))
from yolo import checkpoint, trainer  # noqa: E402
from yolo.checkpoint import CheckpointError, load_checkpoint, load_weights, save_checkpoint  # noqa: E402
from yolo.cli import train as train_cli  # noqa: E402
from yolo.model import Darknet  # noqa: E402

from train_synth import make_dataset  # noqa: E402


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("shapes"), n_train=64, n_valid=32, size=128)


def run(*args: str) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return train_cli.main([*map(str, args), "--no-progress", "--workers", "0"])


@pytest.mark.slow
def test_learns_from_scratch(synth, tmp_path):
    out = tmp_path / "run"
    assert run("--cfg", TINY, "--data", synth, "--epochs", 20, "--batch", 8, "--output", out,
               "--eval-interval", 100) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best_map50"] >= 0.8, summary
    assert (out / "results.png").stat().st_size > 0
    rows = (out / "results.csv").read_text().splitlines()
    assert len(rows) == 21 and rows[0].startswith("epoch,step,box,obj,cls")
    # best.weights is Darknet format and loads into the cfg; best.pt through the loader detect/test use
    m = Darknet(TINY)
    m.load_darknet_weights(out / "best.weights")
    m2 = Darknet(TINY)
    state = load_weights(m2, out / "best.pt")
    assert state["names"] == ["circle", "square", "triangle"]
    for (k, a), b in zip(m.state_dict().items(), m2.state_dict().values()):
        if a.dtype.is_floating_point:
            torch.testing.assert_close(a, b, msg=k)


def _interrupt_after(monkeypatch, n_calls: int) -> None:
    real = trainer.collate
    calls = {"n": 0}

    def collate(batch):
        calls["n"] += 1
        if calls["n"] > n_calls:
            raise KeyboardInterrupt
        return real(batch)

    monkeypatch.setattr(trainer, "collate", collate)


def test_resume_is_exact(synth, tmp_path, monkeypatch):
    common = ["--cfg", TINY, "--data", synth, "--epochs", 2, "--batch", 8, "--batch-size", 4, "--seed", 3,
              "--eval-interval", 100]
    assert run(*common, "--output", tmp_path / "full") == 0
    # Ctrl-C in epoch 2 after 3 optimiser steps (6 minibatches of 4, 2 accumulated per step)
    _interrupt_after(monkeypatch, 16 + 6)
    assert run(*common, "--output", tmp_path / "cut") == 130
    cut = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert (cut["epoch"], cut["step"], cut["batch_in_epoch"]) == (1, 11, 6)
    monkeypatch.undo()
    assert run("--resume", tmp_path / "cut" / "last.pt") == 0
    a = load_checkpoint(tmp_path / "full" / "last.pt")
    b = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert a["step"] == b["step"] == 16 and a["epoch"] == b["epoch"] == 2
    for key in ("model", "ema"):
        for k, v in a[key].items():
            torch.testing.assert_close(v, b[key][k], atol=0, rtol=0, msg=f"{key}.{k}")  # same machine: bit-exact
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        torch.testing.assert_close(sa["momentum_buffer"], sb["momentum_buffer"], atol=0, rtol=0)


def test_resume_with_another_cfg_fails_clearly(synth, tmp_path, capsys):
    out = tmp_path / "run"
    assert run("--cfg", TINY, "--data", synth, "--epochs", 1, "--max-steps", 1, "--batch", 8, "--output", out) == 0
    other = tmp_path / "other.cfg"
    other.write_text(TINY.read_text().replace("filters=48", "filters=40", 1))
    capsys.readouterr()
    assert run("--resume", out / "last.pt", "--cfg", other) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "different cfg" in err and "filters=48" in err
    # a changed cfg file behind the saved path is caught too
    moved = tmp_path / "moved.cfg"
    moved.write_text(other.read_text())
    state = load_checkpoint(out / "last.pt")
    state["args"]["cfg"] = str(moved)
    save_checkpoint(state, out / "last.pt")
    assert run("--resume", out / "last.pt") == 2
    assert "different cfg" in capsys.readouterr().err


def test_user_errors_are_one_line(synth, tmp_path, capsys):
    assert run("--cfg", TINY, "--data", tmp_path / "missing.data", "--epochs", 1) == 2
    assert run("--cfg", "yolo-fastest-1.1.cfg", "--data", synth, "--epochs", 1) == 2  # 80 classes vs 3
    errs = capsys.readouterr().err.strip().splitlines()
    assert len(errs) == 2 and "missing.data" in errs[0] and "classes" in errs[1]


def test_unreadable_training_images_are_skipped(synth, tmp_path, capsys):
    data = tmp_path / "d"
    shutil.copytree(synth.parent, data, symlinks=True)
    lst = (data / "train.txt").read_text().replace(str(synth.parent), str(data))
    (data / "train.txt").write_text(lst)
    first = Path(lst.splitlines()[0])
    first.write_bytes(b"garbage")
    assert run("--cfg", TINY, "--data", data / "shapes.data", "--epochs", 1, "--batch", 8, "--max-steps", 8,
               "--no-augment", "--output", tmp_path / "run") == 0
    assert "1 training image(s) could not be loaded" in capsys.readouterr().out


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.ones(3)}, "epoch": 1}, path)

    def failing_save(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", failing_save)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint({"model": {"w": torch.zeros(3)}, "epoch": 2}, path)
    monkeypatch.undo()
    state = load_checkpoint(path)
    assert state["epoch"] == 1 and state["model"]["w"].sum() == 3
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    with pytest.raises(CheckpointError):
        path.write_bytes(b"truncated")
        load_checkpoint(path)


@pytest.fixture(scope="module")
def coco_small(coco128, tmp_path_factory) -> Path:
    from yolo.datasets import DatasetInfo, load_dataset, write_darknet_dataset

    info = load_dataset(coco128 / "annotations" / "instances_val2017.json", coco128 / "val2017")
    small = DatasetInfo(info.records[:4], info.names, info.category_ids, info.source)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return write_darknet_dataset(small, tmp_path_factory.mktemp("coco4"))


@pytest.mark.slow
@pytest.mark.parametrize("cfg", ["res2net-yolov3.cfg", "res2net-triangle-yolov3.cfg"])
def test_res2net_cfgs_train_end_to_end(cfg, coco_small, tmp_path, capsys):
    out = tmp_path / "run"
    assert run("--cfg", cfg, "--data", coco_small, "--img-size", 128, "--batch", 2, "--max-steps", 2,
               "--epochs", 1, "--output", out) == 0
    state = load_checkpoint(out / "last.pt")
    assert state["step"] == 2 and state["cfg_name"] == cfg
    from yolo.cli import test as test_cli

    capsys.readouterr()
    assert test_cli.main(["--cfg", cfg, "--weights", str(out / "last.pt"), "--data", str(coco_small),
                          "--img-size", "128", "--workers", "0", "--no-progress"]) == 0
    from yolo.cli import detect as detect_cli

    image = next(p for p in (coco_small.parent / "images").iterdir())
    assert detect_cli.main(["--cfg", cfg, "--weights", str(out / "last.pt"), "--source", str(image),
                            "--img-size", "128", "--output", str(tmp_path / "det"), "--save-json",
                            "--no-progress", "--quiet"]) == 0
    assert isinstance(json.loads((tmp_path / "det" / "detections.json").read_text()), list)


@pytest.mark.slow
def test_finetune_pretrained_on_coco128_improves(coco128, fastest_cfg, fastest_weights, tmp_path):
    """A wrong loss or assignment pulls the pretrained model below the 0.329 mAP@.5 it starts from."""
    out = tmp_path / "ft"
    assert run("--cfg", fastest_cfg, "--weights", fastest_weights, "--data",
               coco128 / "annotations" / "instances_val2017.json", "--images", coco128 / "val2017",
               "--epochs", 2, "--batch", 16, "--batch-size", 16, "--lr", 1e-4, "--no-mosaic",
               "--output", out) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best_map50"] > 0.329, summary
