"""Checkpoints (``.pt``): written atomically, loaded with ``weights_only=True``.

Reading weights into a model (``load_weights``, ``load_checkpoint``, ``CheckpointError``) lives
in :mod:`yolo.weights_file`, which inference imports without the training modules; the names
are re-exported here.

A checkpoint is a plain dict of tensors and Python scalars/strings (safe for weights_only):
``model`` (state_dict), ``cfg_text``, ``names`` and, from training, ``ema``, ``optimizer``,
``scaler``, ``epoch``, ``step``, ``rng`` ... Saving the training state (``training_state``) and
restoring it (``restore_training_state``) sit side by side here, so the two cannot drift.

Layout versions (``format``): 1 = written before the key existed (same keys, no ``format``,
no ``skipped``), 2 = current. Detect and test read ``model``/``ema`` of either.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .distributed import unwrap
from .ema import ModelEMA
from .hyp import Hyp, HypError, lr_at
from .io import atomic_write
from .weights_file import WEIGHTS_DIR, CheckpointError, first_line, load_checkpoint, load_weights

__all__ = ["FORMAT", "TRAINING_KEYS", "WEIGHTS_DIR", "CheckpointError", "TrainState", "check_same_cfg",
           "checkpoint_hyp", "first_line", "load_checkpoint", "load_training_checkpoint", "load_weights",
           "latest_checkpoint", "prune_step_checkpoints", "restore_training_state", "rng_state", "run_id",
           "save_checkpoint", "set_rng_state", "step_checkpoint_path", "step_checkpoints", "training_state"]

FORMAT = 2
#: what a checkpoint needs to continue a run (beyond ``model``)
TRAINING_KEYS = ("optimizer", "args", "hyp", "epoch", "step")


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Atomic: a crash mid-write leaves the previous checkpoint intact."""
    with atomic_write(path) as f:
        torch.save(state, f)


def step_checkpoint_path(folder: str | Path, step: int) -> Path:
    """Where the step checkpoint of optimiser step ``step`` goes: ``step-0000200.pt`` in the run folder."""
    return Path(folder) / f"step-{step:07d}.pt"


def step_checkpoints(folder: str | Path) -> list[tuple[int, Path]]:
    """The run folder's step checkpoints, (step, path), oldest first."""
    found = []
    for p in Path(folder).glob("step-*.pt"):
        if p.stem[5:].isdigit():
            found.append((int(p.stem[5:]), p))
    return sorted(found)


def prune_step_checkpoints(folder: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` step checkpoints (``keep`` <= 0 keeps them all); returns the deleted."""
    old = [p for _, p in step_checkpoints(folder)][:-keep] if keep > 0 else []
    for p in old:
        p.unlink(missing_ok=True)
    return old


def latest_checkpoint(folder: str | Path) -> Path | None:
    """The checkpoint a run folder continues from: the one furthest into training among last.pt and
    the step checkpoints (last.pt on a tie: it was written after its epoch's evaluation); None if none."""
    folder = Path(folder)
    candidates = [(step, 0, p) for step, p in step_checkpoints(folder)]
    last = folder / "last.pt"
    if last.exists():
        try:
            saved = torch.load(last, map_location="cpu", weights_only=True, mmap=True)
            candidates.append((int(saved.get("step", -1)), 1, last))
        except Exception:  # unreadable: the caller's load names the problem
            candidates.append((-1, 1, last))
    return max(candidates, key=lambda c: c[:2])[2] if candidates else None


def run_id() -> str | None:
    """The torchrun rendezvous id of this run (``TORCHELASTIC_RUN_ID``; None outside torchrun or when
    left at torchrun's default "none"): kept in checkpoints, so that a restarted worker group
    recognises its own."""
    rid = os.environ.get("TORCHELASTIC_RUN_ID")
    return rid if rid and rid != "none" else None


def check_same_cfg(state: dict[str, Any], cfg_text: str, path: str | Path, cfg_name: str) -> None:
    """Refuse a checkpoint trained with another cfg (names the first differing line)."""
    saved = state.get("cfg_text")
    if saved is None or saved == cfg_text:
        return
    a, b = saved.splitlines(), cfg_text.splitlines()
    n = next((i for i, (x, y) in enumerate(zip(a, b)) if x.strip() != y.strip()), min(len(a), len(b)))
    if n == min(len(a), len(b)) and len(a) == len(b):
        return  # only whitespace differs
    was = a[n].strip() if n < len(a) else "<end of file>"
    now = b[n].strip() if n < len(b) else "<end of file>"
    raise CheckpointError(f"{path}: made with a different cfg ({state.get('cfg_name', '?')}) than {cfg_name}: "
                          f"line {n + 1} was '{was}', is '{now}'")


# ---------------------------------------------------------------------------------------------
# the whole training state: save and restore
# ---------------------------------------------------------------------------------------------
@dataclass
class TrainState:
    """Where a run is; saved in every checkpoint."""

    epoch: int = 0  # the epoch being trained (0-based)
    step: int = 0  # optimiser steps done (Darknet's batches)
    batch_in_epoch: int = 0  # minibatches done in ``epoch`` (at a step boundary)
    seen: int = 0  # images trained on, all ranks
    skipped: int = 0  # images that failed to load
    best_fitness: float = -1.0


def rng_state() -> dict[str, Any]:
    out: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(s: dict[str, Any]) -> None:
    if "torch" in s:
        torch.set_rng_state(s["torch"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def training_state(model: nn.Module, ema: ModelEMA | None, optimizer: torch.optim.Optimizer,
                   scaler: torch.amp.GradScaler | None, state: TrainState, hyp: Hyp, names: list[str],
                   options: dict[str, Any], epoch_done: bool) -> dict[str, Any]:
    """Everything an exact resume needs, as plain tensors/str/numbers (loadable with weights_only).
    ``epoch_done``: saved at the end of ``state.epoch`` (the next run starts the following one)."""
    m = unwrap(model)
    return {
        "format": FORMAT,
        "model": {k: v.detach().clone() for k, v in m.state_dict().items()},
        "ema": ema.module.state_dict() if ema is not None else None,
        "ema_updates": ema.updates if ema is not None else 0,
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "epoch": state.epoch + 1 if epoch_done else state.epoch,  # next epoch to train
        "batch_in_epoch": 0 if epoch_done else state.batch_in_epoch,
        "step": state.step,
        "seen": state.seen,
        "skipped": state.skipped,
        "best_fitness": state.best_fitness,
        "lr": lr_at(max(state.step - 1, 0), hyp),
        "hyp": hyp.to_dict(),
        "cfg_text": m.cfg_text,
        "cfg_name": m.cfg_path.name,
        "names": list(names),
        "args": options,
        "rng": rng_state(),
        "run_id": run_id(),
    }


def load_training_checkpoint(path: str | Path) -> tuple[dict[str, Any], Path]:
    """A checkpoint to resume (a run folder means its latest: last.pt or a newer step checkpoint,
    see ``latest_checkpoint``): refuses a weights-only file or a newer layout with a message saying
    what to do instead."""
    path = Path(path)
    if path.is_dir():
        path = latest_checkpoint(path) or path / "last.pt"
    ckpt = load_checkpoint(path)
    if int(ckpt.get("format", 1)) > FORMAT:
        raise CheckpointError(f"{path}: written by a newer version of this project (format {ckpt['format']}, "
                              f"this one reads up to {FORMAT}); update it, or start a new run with --weights {path}")
    missing = [k for k in TRAINING_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: not a training checkpoint (no {', '.join(missing)}); use --weights to "
                              f"start a new run from it")
    return ckpt, path


def checkpoint_hyp(ckpt: dict[str, Any], path: str | Path) -> Hyp:
    """The hyper-parameters the saved run used (they are not re-resolved on resume)."""
    try:
        return Hyp.from_dict(dict(ckpt["hyp"]))
    except HypError as e:
        raise CheckpointError(f"{path}: {e}; start a new run with --weights {path} instead") from None


def restore_training_state(ckpt: dict[str, Any], path: str | Path, model: nn.Module, ema: ModelEMA,
                           optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> TrainState:
    """The inverse of ``training_state``: weights, EMA, optimiser, scaler and RNG back in place."""
    try:
        unwrap(model).load_state_dict(ckpt["model"])
        if ckpt.get("ema") is not None:
            ema.module.load_state_dict(ckpt["ema"])
            ema.updates = int(ckpt.get("ema_updates", 0))
        optimizer.load_state_dict(ckpt["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: does not fit the model or optimiser ({str(e).splitlines()[0]}); "
                              f"start a new run with --weights {path} instead") from None
    if ckpt.get("scaler") and scaler.is_enabled():
        scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt.get("rng", {}))
    state = TrainState(epoch=int(ckpt["epoch"]), step=int(ckpt["step"]),
                       batch_in_epoch=int(ckpt.get("batch_in_epoch", 0)), seen=int(ckpt.get("seen", 0)),
                       skipped=int(ckpt.get("skipped", 0)), best_fitness=float(ckpt.get("best_fitness", -1.0)))
    unwrap(model).seen = state.seen
    return state
