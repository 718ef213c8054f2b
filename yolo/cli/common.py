"""Helpers every CLI shares: device parsing, numbered run folders, and one-line user errors.

A user mistake (bad path, malformed cfg, wrong device) ends the program with exit code 2 and one
line on stderr; a bug in our code still shows its traceback (set ``YOLO_DEBUG=1`` to see the
traceback of user errors too).
"""
from __future__ import annotations

import argparse
import functools
import os
import re
import sys
from pathlib import Path
from typing import Callable, NoReturn, Sequence

import torch

from ..backends import BACKENDS, PRECISIONS, BackendError
from ..cfg import REPO_ROOT, ConfigError
from ..checkpoint import CheckpointError
from ..io import InputFileError
from ..weights import WeightsError


class UserError(Exception):
    """A problem with the user's input (arguments, files); reported as one line, no traceback."""


#: Exceptions that describe the user's input rather than a bug; extended by tools that need more.
USER_ERRORS: tuple[type[BaseException], ...] = (
    UserError, ConfigError, WeightsError, CheckpointError, InputFileError, BackendError,
    FileNotFoundError, PermissionError,
    IsADirectoryError, NotADirectoryError, FileExistsError,
)

DEFAULT_CFG = REPO_ROOT / "cfg" / "yolo-fastest-1.1.cfg"  # the shipped COCO model
DEFAULT_WEIGHTS = REPO_ROOT / "weights" / "yolo-fastest-1.1.weights"

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad command line as a ``UserError`` (one line, exit code 2 through
    ``user_errors``) instead of printing the usage and calling ``sys.exit`` inside ``main``."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{self.prog}: {message} (see --help)")


def parse_device(spec: str | torch.device | None) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:1`` or a bare index ``1`` -> a checked ``torch.device``."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    text = (spec or "cpu").strip().lower()
    if re.fullmatch(r"\d+", text):
        text = f"cuda:{text}"
    try:
        device = torch.device(text)
    except RuntimeError:
        raise UserError(f"--device: expected cpu, cuda, cuda:N or N, got '{spec}'") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {spec}: CUDA is not available in this PyTorch build / machine; "
                            "use --device cpu")
        index = 0 if device.index is None else device.index
        count = torch.cuda.device_count()
        if index >= count:
            raise UserError(f"--device {spec}: only {count} CUDA device(s) visible (indices 0..{count - 1})")
        device = torch.device("cuda", index)
    elif device.type != "cpu":
        raise UserError(f"--device: expected cpu, cuda, cuda:N or N, got '{spec}'")
    return device


def increment_dir(base: str | Path, name: str = "exp") -> Path:
    """The first free folder among ``base/name``, ``base/name2``, ``base/name3`` ... (not created)."""
    base = Path(base)
    path = base / name
    n = 2
    while path.exists():
        path = base / f"{name}{n}"
        n += 1
    return path


def one_line(exc: BaseException) -> str:
    """An exception as a single line (multi-line messages are joined)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in text:
        text = f"{text}: '{exc.filename}'"
    return text


def user_errors(*extra: type[BaseException]) -> Callable:
    """Decorate ``main(argv) -> int``: user errors (``USER_ERRORS`` plus ``extra``) become
    ``error: ...`` on stderr and exit code 2, Ctrl-C exit code 130, without a traceback.

    Use as ``@user_errors()`` or ``@user_errors(MyInputError)``.
    """
    if len(extra) == 1 and callable(extra[0]) and not isinstance(extra[0], type):
        return user_errors()(extra[0])  # bare @user_errors
    caught = USER_ERRORS + tuple(extra)

    def decorate(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def wrapper(argv: Sequence[str] | None = None) -> int:
            try:
                return main(argv)
            except caught as e:
                if os.environ.get("YOLO_DEBUG"):
                    raise
                print(f"error: {one_line(e)}", file=sys.stderr)
                return EXIT_USER_ERROR
            except KeyboardInterrupt:
                print("interrupted", file=sys.stderr)
                return EXIT_INTERRUPTED

        return wrapper

    return decorate


def add_model_args(p: argparse.ArgumentParser) -> None:
    """--cfg, --weights (defaulting to the shipped model), --backend, --precision, --half (detect and test)."""
    p.add_argument("--cfg", default=None,
                   help="Darknet cfg (path, or a name in cfg/); default: the shipped model's, or none for an .onnx")
    p.add_argument("--weights", default=str(DEFAULT_WEIGHTS),
                   help="Darknet .weights, a .pt checkpoint or an .onnx export (path, or a name in weights/)")
    p.add_argument("--backend", choices=BACKENDS, default=None,
                   help="inference engine (default: onnxruntime for an .onnx file, else torch)")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="fp32 (default), bf16 (CPU with AVX-512 BF16 / AMX, or CUDA), fp16 (CUDA), int8 (.onnx)")
    p.add_argument("--half", action="store_true", help="same as --precision fp16")


def engine_args(args: argparse.Namespace) -> dict:
    """--cfg/--backend/--precision/--half resolved: the shipped cfg goes with the shipped weights."""
    cfg = args.cfg
    if cfg is None and not str(args.weights).lower().endswith(".onnx"):
        cfg = str(DEFAULT_CFG)
    if args.half and args.precision not in (None, "fp16"):
        raise UserError(f"--half means --precision fp16, but --precision {args.precision} was given")
    return {"cfg": cfg, "weights": args.weights, "backend": args.backend,
            "precision": "fp16" if args.half else (args.precision or "fp32")}
