"""Checkpoints (``.pt``): written atomically, loaded with ``weights_only=True``.

A checkpoint is a plain dict of tensors and Python scalars/strings (safe for weights_only):
``model`` (state_dict), ``cfg_text``, ``names`` and, from training, ``ema``, ``optimizer``,
``scaler``, ``epoch``, ``step`` ...
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .cfg import resolve_path, REPO_ROOT
from .io import atomic_write

WEIGHTS_DIR = REPO_ROOT / "weights"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Atomic: a crash mid-write leaves the previous checkpoint intact."""
    with atomic_write(path) as f:
        torch.save(state, f)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: '{path}'") from None
    except Exception as e:  # torch raises several types for a corrupt / foreign file
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path}: not a checkpoint of this project (no 'model' entry)")
    return state


def load_weights(model: torch.nn.Module, weights: str | Path, prefer_ema: bool = True,
                 cutoff: int | None = None) -> dict[str, Any]:
    """Load Darknet ``.weights`` (the first ``cutoff`` sections only, for backbone files such as
    ``darknet53.conv.74``) or our ``.pt`` into ``model``; returns the checkpoint dict ({} for .weights)."""
    path = resolve_path(weights, WEIGHTS_DIR, "weights file")
    if path.suffix != ".pt":
        model.load_darknet_weights(path, cutoff)
        return {}
    if cutoff is not None:
        raise CheckpointError(f"{path}: cutoff applies to Darknet .weights files, not to .pt checkpoints")
    state = load_checkpoint(path)
    sd = state.get("ema") if prefer_ema and state.get("ema") is not None else state["model"]
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: does not fit {model.cfg_path.name}: {str(e).splitlines()[0]}") from None
    return state


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
