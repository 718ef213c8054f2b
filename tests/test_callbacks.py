"""Trainer events: a user callback sees every event in order with the state it needs; a regulariser
is a callback (the sparsity callback alone is the whole --sparsity wiring); removing a default
callback removes what it does."""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
import torch

from helpers import FIXTURES, TRAIN_TINY

sys.path.insert(0, str(FIXTURES))
from yolo.callbacks import EVENTS, Callback, Callbacks  # noqa: E402
from yolo.hyp import lr_at  # noqa: E402
from yolo.prune import SparsityPenalty, SparsityTraining  # noqa: E402
from yolo.trainer import ResultsLog, Trainer, TrainOptions, default_callbacks  # noqa: E402

from train_synth import make_dataset  # noqa: E402

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("shapes"), n_train=16, n_valid=8, size=64)


def options(data: Path, out: Path, **kw) -> TrainOptions:
    """2 epochs of 2 optimiser steps (8 images per step, 2 minibatches of 4 accumulated), evaluated
    after the last epoch only."""
    return TrainOptions(**{"cfg": str(TRAIN_TINY), "data": str(data), "output": str(out), "epochs": 2, "batch": 8,
                           "batch_size": 4, "img_size": 64, "workers": 0, "progress": False, "eval_interval": 2,
                           "seed": 3, **kw})


def fit(opts: TrainOptions, callbacks=None, **kw) -> Trainer:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = Trainer(opts, CPU, say=lambda *a, **k: None, callbacks=callbacks, **kw)
        t.fit()
    return t


def snapshot(event: str, t: Trainer) -> tuple:
    """The state a callback would use at that event."""
    s = t.state
    extra = {"on_before_step": t.lr, "on_batch_end": t.batch_losses is not None,
             "on_eval_end": t.metrics.get("map50"), "on_epoch_end": t.improved,
             "on_train_epoch_end": sorted(t.epoch_logs), "on_train_end": t.summary.get("steps")}.get(event)
    return event, s.epoch, s.step, s.batch_in_epoch, extra


class Recorder(Callback):
    """A user callback: every event method records a snapshot."""

    def __init__(self) -> None:
        self.seen: list[tuple] = []
        for event in EVENTS:
            setattr(self, event, lambda t, event=event: self.seen.append(snapshot(event, t)))


@pytest.mark.slow
def test_a_user_callback_sees_every_event_in_order(data, tmp_path):
    rec = Recorder()
    opts = options(data, tmp_path / "run")
    t = fit(opts, callbacks=[*default_callbacks(opts), rec])
    events = [e[0] for e in rec.seen]
    step = ["on_before_step", "on_step_end"]
    epoch = ["on_epoch_start", "on_batch_end", *step, "on_batch_end", "on_batch_end", *step, "on_batch_end",
             "on_train_epoch_end"]
    assert events == ["on_train_start", *epoch, "on_epoch_end", *epoch, "on_eval_end", "on_epoch_end",
                      "on_train_end"]
    # the state at each event: step counted after the step, minibatches of the epoch, lr of the step
    before = [e for e in rec.seen if e[0] == "on_before_step"]
    after = [e for e in rec.seen if e[0] == "on_step_end"]
    assert [e[2] for e in before] == [0, 1, 2, 3] and [e[2] for e in after] == [1, 2, 3, 4]
    assert [e[3] for e in after] == [2, 4, 2, 4]
    assert [e[4] for e in before] == [lr_at(i, t.hyp) for i in range(4)]
    assert all(e[4] for e in rec.seen if e[0] == "on_batch_end")  # running losses from the first minibatch on
    assert [e[1] for e in rec.seen if e[0] == "on_epoch_end"] == [0, 1]
    assert rec.seen[-1] == ("on_train_end", 2, 4, 0, 4)
    evaluated = next(e for e in rec.seen if e[0] == "on_eval_end")
    assert evaluated[4] == evaluated[4]  # a number (mAP@.5), not NaN
    assert next(e for e in rec.seen if e[0] == "on_train_epoch_end")[4] == sorted(
        ["box", "obj", "cls", "total", "lr", "data_wait"])


@pytest.mark.slow
def test_sparsity_is_a_callback_that_changes_the_weights(data, tmp_path):
    plain = fit(options(data, tmp_path / "plain"))
    flag = fit(options(data, tmp_path / "flag", sparsity=0.5, sparsity_decay=0.5))
    # the same regulariser added to a run without --sparsity: the callback is the whole wiring
    opts = options(data, tmp_path / "callback")
    added = fit(opts, callbacks=[*default_callbacks(opts), SparsityTraining(0.5, 0.5)])
    for k, v in flag.model.state_dict().items():
        torch.testing.assert_close(added.model.state_dict()[k], v, atol=0, rtol=0, msg=k)
    scales = {name: SparsityPenalty(t.model).scales().mean().item()
              for name, t in (("plain", plain), ("added", added))}
    assert scales["added"] < scales["plain"] - 0.005, scales
    assert (tmp_path / "callback" / "bn_scales.png").stat().st_size > 0
    assert not (tmp_path / "plain" / "bn_scales.png").exists()


@pytest.mark.slow
def test_a_function_added_on_an_event_runs(data, tmp_path):
    opts = options(data, tmp_path / "run", epochs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = Trainer(opts, CPU, say=lambda *a, **k: None)
    # a user regulariser: shrink every BatchNorm scale's gradient step towards 0 (L2 on gamma)
    t.add_callback("on_before_step", lambda tr: [m.weight.grad.add_(m.weight.detach(), alpha=10.0)
                                                 for m in tr.model.modules() if isinstance(m, torch.nn.BatchNorm2d)])
    steps = []
    t.add_callback("on_step_end", lambda tr: steps.append(tr.state.step))
    t.fit()
    plain = fit(options(data, tmp_path / "plain", epochs=1))
    assert steps == [1, 2]
    bn = [(a.weight, b.weight) for a, b in zip(t.model.modules(), plain.model.modules())
          if isinstance(a, torch.nn.BatchNorm2d)]
    assert sum(a.abs().sum() for a, _ in bn) < sum(b.abs().sum() for _, b in bn)


@pytest.mark.slow
def test_without_the_results_callback_there_is_no_results_csv(data, tmp_path):
    opts = options(data, tmp_path / "run", epochs=1)
    fit(opts, callbacks=[c for c in default_callbacks(opts) if not isinstance(c, ResultsLog)])
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert "last.pt" in files and "best.pt" in files  # checkpointing is its own callback
    assert not files & {"results.csv", "results.png", "summary.json"}


def test_bad_registrations_fail_clearly():
    cbs = Callbacks()
    with pytest.raises(ValueError, match="unknown trainer event 'on_stepend'.*on_step_end"):
        cbs.add_fn("on_stepend", lambda t: None)
    with pytest.raises(TypeError, match="object has no trainer event method"):
        cbs.add(object())
