"""Trainer pieces: EMA ramp, decay groups, head priors, freezing, results.csv, and checkpoints of the
trainer as it was before (format 1) still resuming exactly and loading for detect/test."""
from __future__ import annotations

import math
import shutil
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from helpers import FIXTURES, TRAIN_TINY

sys.path.insert(0, str(FIXTURES))
from yolo.checkpoint import (  # noqa: E402
    CheckpointError,
    checkpoint_hyp,
    load_checkpoint,
    load_training_checkpoint,
    load_weights,
    save_checkpoint,
)
from yolo.cli import train as train_cli  # noqa: E402
from yolo.ema import ModelEMA  # noqa: E402
from yolo.hyp import Hyp  # noqa: E402
from yolo.model import Darknet  # noqa: E402
from yolo.trainer import (  # noqa: E402
    TrainSetupError,
    append_results,
    build_optimizer,
    freeze,
    init_head_biases,
    read_results,
    resume_options,
    set_train_mode,
)

from train_synth import make_dataset  # noqa: E402

MICRO = FIXTURES / "train_micro.cfg"
OLD = FIXTURES / "old_checkpoint"


def tiny() -> Darknet:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Darknet(TRAIN_TINY)


# --- EMA ----------------------------------------------------------------------------------------
def test_ema_decay_ramps_up():
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = ModelEMA(model, decay=0.9, tau=3.0)
    with torch.no_grad():
        model.weight.fill_(1.0)
    expected = 0.0
    for n in range(1, 8):
        d = 0.9 * (1 - math.exp(-n / 3.0))
        assert ema.current_decay() == pytest.approx(d)
        ema.update(model)
        expected = d * expected + (1 - d) * 1.0
        assert ema.module.weight.item() == pytest.approx(expected), n
    assert ema.updates == 7
    assert not ema.module.weight.requires_grad


def test_ema_copies_integer_buffers():
    model = nn.BatchNorm1d(2)
    ema = ModelEMA(model)
    model.num_batches_tracked += 5
    ema.update(model)
    assert ema.module.num_batches_tracked.item() == 5


# --- optimiser, head priors, freezing ------------------------------------------------------------
def test_weight_decay_on_conv_weights_only():
    model = tiny()
    opt = build_optimizer(model, Hyp.from_net(model.net))
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == model.net.decay and plain["weight_decay"] == 0.0
    conv_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.Conv2d)}
    assert {id(p) for p in decayed["params"]} == conv_weights
    others = {id(p) for p in model.parameters()} - conv_weights
    assert {id(p) for p in plain["params"]} == others
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    head_bias = next(m.bias for m in model.modules() if isinstance(m, nn.Conv2d) and m.bias is not None)
    assert {id(bn.weight), id(bn.bias), id(head_bias)} <= others


def test_head_biases_start_from_priors():
    model = tiny()
    init_head_biases(model)
    expected_objects = 0.0
    blocks = list(model.module_list)
    for layer, stride in zip(model.yolo_layers, model.strides):
        before = blocks[blocks.index(layer) - 1]  # the head's 1x1 conv
        conv = next(m for m in before.modules() if isinstance(m, nn.Conv2d))
        b = conv.bias.detach().view(layer.num_anchors, layer.num_attrib)
        cells = (model.net.width / stride) * (model.net.height / stride)
        assert torch.allclose(b[:, 5:], torch.full_like(b[:, 5:], math.log(1 / (layer.num_classes - 0.99))))
        expected_objects += float(torch.sigmoid(b[:, 4]).sum()) * cells
    assert expected_objects == pytest.approx(8.0, rel=0.02)  # about 8 objects per image in all


def test_frozen_sections_do_not_change():
    torch.manual_seed(0)
    model = tiny()
    names = freeze(model, 2)
    assert len(names) == 2
    frozen = [p for b in list(model.module_list)[:2] for p in b.parameters()]
    assert frozen and not any(p.requires_grad for p in frozen)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = build_optimizer(model, Hyp.from_net(model.net))
    assert not {id(p) for p in frozen} & {id(p) for g in opt.param_groups for p in g["params"]}
    set_train_mode(model, 2)
    for g in opt.param_groups:
        g["lr"] = 0.1
    for _ in range(2):
        out = model(torch.rand(2, 3, 128, 128))
        sum(o.float().pow(2).mean() for o in out).backward()
        opt.step()
        opt.zero_grad()
    after = model.state_dict()
    first_two = [k for k in before if k.split(".")[1] in ("0", "1")]
    assert first_two and all(torch.equal(before[k], after[k]) for k in first_two)  # incl. BN statistics
    third = [k for k in before if k.startswith("module_list.2.") and k.endswith("conv.weight")]
    assert third and not torch.equal(before[third[0]], after[third[0]])


# --- results.csv --------------------------------------------------------------------------------
def test_results_csv_round_trip(tmp_path):
    path = tmp_path / "results.csv"
    append_results(path, {"epoch": 1, "step": 10, "box": 1.5, "map50": float("nan"), "unknown": 3})
    append_results(path, {"epoch": 2, "step": 20, "box": 1.25, "map50": 0.5})
    rows = read_results(path)
    assert [r["epoch"] for r in rows] == [1.0, 2.0] and rows[1]["map50"] == 0.5 and "unknown" not in rows[0]
    assert math.isnan(rows[0]["map50"]) and "map" not in rows[0]
    path.write_text("epoch,step\nx,1\n")
    with pytest.raises(TrainSetupError, match="results.csv"):
        read_results(path)


# --- checkpoints of the previous trainer (format 1) ---------------------------------------------
@pytest.fixture()
def old_run(tmp_path) -> Path:
    """The old epoch-1 checkpoint in a run folder, its data regenerated where this test can see it."""
    data = make_dataset(tmp_path / "micro", n_train=8, n_valid=4, size=64)
    run = tmp_path / "run"
    run.mkdir()
    shutil.copyfile(MICRO, run / MICRO.name)
    state = load_checkpoint(OLD / "epoch1.pt")
    assert "format" not in state  # really the old layout
    state["args"]["data"] = str(data)
    state["args"]["cfg"] = str(tmp_path / "gone.cfg")  # the run folder's copy is used
    save_checkpoint(state, run / "last.pt")
    return run


# Two optimiser steps in float32 on another CPU (AVX2 vs AVX-512 kernels, other summation orders)
# differ from the fixture by rounding: measured 1.5e-8 at most (a 2e-7 share of what the two steps
# changed) on an AVX2 EPYC. The tolerance sits 1e4 below the smallest change a skipped or repeated
# step makes (each step moves the weights by up to 0.1 here), so it still catches a wrong resume.
# Bit-exact resume is a property of one machine: tests/test_train.py::test_resume_is_exact and
# tests/test_kill_resume.py compare an interrupted run with an uninterrupted one, both computed there.
OLD_ATOL, OLD_RTOL = 1e-6, 1e-5


def test_old_checkpoint_resumes_where_it_stopped(old_run):
    e1 = load_checkpoint(OLD / "epoch1.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert train_cli.main(["--resume", str(old_run / "last.pt"), "--no-progress"]) == 0
    a, b = load_checkpoint(old_run / "last.pt"), load_checkpoint(OLD / "epoch2.pt")
    # continued from its epoch and step, in today's format
    assert (a["format"], a["step"], a["epoch"]) == (2, b["step"], b["epoch"]) == (2, 4, 2)
    assert a["ema_updates"] == b["ema_updates"] == e1["ema_updates"] + 2
    for key in ("model", "ema"):
        moved = max(float((v.float() - e1[key][k].float()).abs().max()) for k, v in b[key].items()
                    if v.is_floating_point())
        assert moved > 1e3 * OLD_ATOL  # the two steps changed the weights far beyond the tolerance
        for k, v in b[key].items():
            torch.testing.assert_close(a[key][k], v, atol=OLD_ATOL, rtol=OLD_RTOL, msg=f"{key}.{k}")
    # the optimizer's momentum was restored, not restarted: after two more steps it matches the
    # fixture's, which a momentum started from zero would not
    assert len(a["optimizer"]["state"]) == len(b["optimizer"]["state"]) > 0
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        torch.testing.assert_close(sa["momentum_buffer"], sb["momentum_buffer"], atol=OLD_ATOL, rtol=OLD_RTOL)


def test_old_checkpoint_loads_for_detect_and_test():
    model = Darknet(MICRO)
    state = load_weights(model, OLD / "epoch2.pt")
    assert state["names"] == ["circle", "square", "triangle"]
    for k, v in model.state_dict().items():  # the EMA weights, as detect and test use them
        torch.testing.assert_close(v, state["ema"][k], atol=0, rtol=0, msg=k)
    assert checkpoint_hyp(state, OLD / "epoch2.pt").batch == 4


def test_unusable_checkpoints_say_what_to_do(tmp_path):
    state = load_checkpoint(OLD / "epoch1.pt")
    save_checkpoint({"model": state["model"]}, tmp_path / "weights_only.pt")
    with pytest.raises(CheckpointError, match="not a training checkpoint.*--weights"):
        load_training_checkpoint(tmp_path / "weights_only.pt")
    save_checkpoint({**state, "format": 99}, tmp_path / "newer.pt")
    with pytest.raises(CheckpointError, match="newer version.*--weights"):
        load_training_checkpoint(tmp_path / "newer.pt")
    hyp = dict(state["hyp"])
    del hyp["power"]
    with pytest.raises(CheckpointError, match="bad.pt.*power.*--weights"):
        checkpoint_hyp({**state, "hyp": hyp}, tmp_path / "bad.pt")


def test_resume_refuses_changed_options(tmp_path):
    state = load_checkpoint(OLD / "epoch1.pt")
    with pytest.raises(TrainSetupError, match="--lr, --seed"):
        resume_options({"seed": 1, "lr": 0.1, "epochs": 9}, state, tmp_path / "last.pt")
    opts = resume_options({"epochs": 9, "workers": 0}, state, tmp_path / "last.pt")
    assert (opts.epochs, opts.seed, opts.batch, opts.output) == (9, 5, 4, str(tmp_path))
