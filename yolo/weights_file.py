"""A model's weights from a file: Darknet ``.weights`` or our ``.pt`` checkpoint (read side only).

Inference (engines, detect, test) needs only this; saving and restoring a training run live in
:mod:`yolo.checkpoint`, which pulls in EMA, DDP and the hyper-parameters. ``.pt`` files are
read with ``weights_only=True``.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .assets import WEIGHTS_DIR
from .cfg import resolve_path
from .errors import YoloError

if TYPE_CHECKING:  # torch is imported where a checkpoint is read: its path names no torch at import
    import torch

__all__ = ["WEIGHTS_DIR", "CheckpointError", "first_line", "load_checkpoint", "load_weights"]


class CheckpointError(YoloError):
    """A checkpoint that cannot be read or does not fit the model."""


def first_line(e: BaseException, limit: int = 160) -> str:
    """The first line of an exception's message, shortened: torch's weights-only refusal is a page
    (with terminal colour codes in it, dropped here)."""
    lines = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip().splitlines()
    line = lines[0].strip() if lines else ""
    return line if len(line) <= limit else line[:limit - 3] + "..."


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    try:
        import torch

        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: '{path}'") from None
    except Exception as e:  # torch raises several types for a corrupt / foreign file
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {first_line(e)})") from None
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
