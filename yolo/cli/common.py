"""Helpers every CLI shares: device and size parsing, numbered run folders, and one-line user errors.

A user mistake (bad path, malformed cfg, wrong device) ends the program with exit code 2 and one
line on stderr; a bug in our code still shows its traceback (set ``YOLO_DEBUG=1`` to see the
traceback of user errors too). Which exception means which exit code is :data:`EXIT_CODES`, the
one table: library code raises its own :class:`~yolo.errors.YoloError` subclasses, never
:class:`UserError` (the command line's own).
"""
from __future__ import annotations

import argparse
import functools
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NoReturn, Sequence

from ..assets import DEFAULT_CFG, DEFAULT_WEIGHTS
from ..backends import PRECISIONS, BackendError, backend_for, engine_class, engine_names
from ..cfg import ConfigError
from ..errors import YoloError
from ..io import InputFileError

if TYPE_CHECKING:
    import torch

__all__ = ["DEFAULT_CFG", "DEFAULT_WEIGHTS", "EXIT_CODES", "EXIT_INTERRUPTED", "EXIT_USER_ERROR",
           "USER_ERRORS",  # noqa: F822 (built on first use by the module's __getattr__)
           "ArgumentParser", "UserError", "add_img_size_arg", "add_model_args", "engine_args", "exit_code",
           "increment_dir", "one_line", "parse_device", "parse_img_size", "size_token", "user_errors"]


class UserError(YoloError):
    """A problem with the command line itself (arguments); reported as one line, no traceback."""


EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130

#: exception -> exit code, the one table every CLI uses (first match wins). A YoloError is the
#: library's word for "bad input" (ConfigError, WeightsError, BackendError, DetectError ...).
EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (KeyboardInterrupt, EXIT_INTERRUPTED),
    (YoloError, EXIT_USER_ERROR),
    (FileNotFoundError, EXIT_USER_ERROR),
    (PermissionError, EXIT_USER_ERROR),
    (IsADirectoryError, EXIT_USER_ERROR),
    (NotADirectoryError, EXIT_USER_ERROR),
    (FileExistsError, EXIT_USER_ERROR),
)


def __getattr__(name: str) -> Any:
    """``USER_ERRORS``: exceptions that describe the user's input rather than a bug (the table's
    exit-code-2 rows; the named ones are YoloErrors, listed for readers and for tools that extend the
    tuple). Built on first use: the weights modules that define two of them import torch."""
    if name == "USER_ERRORS":
        from ..weights import WeightsError
        from ..weights_file import CheckpointError

        return (UserError, ConfigError, WeightsError, CheckpointError, InputFileError, BackendError,
                ) + tuple(cls for cls, code in EXIT_CODES if code == EXIT_USER_ERROR)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def exit_code(exc: BaseException, extra: Sequence[type[BaseException]] = ()) -> int | None:
    """The exit code of ``exc`` by :data:`EXIT_CODES` (``extra``: a tool's own user errors, code 2);
    None: not a user error (a bug: let its traceback show)."""
    for cls, code in EXIT_CODES:
        if isinstance(exc, cls):
            return code
    return EXIT_USER_ERROR if isinstance(exc, tuple(extra)) else None


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad command line as a ``UserError`` (one line, exit code 2 through
    ``user_errors``) instead of printing the usage and calling ``sys.exit`` inside ``main``."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{self.prog}: {message} (see --help)")


def parse_device(spec: "str | torch.device | None") -> "torch.device":
    """``cpu``, ``cuda``, ``cuda:1`` or a bare index ``1`` -> a checked ``torch.device`` (the CPU in a
    process that has not loaded torch: :class:`yolo.backends.base.Device`, so an engine without torch
    never imports it)."""
    if not isinstance(spec, (str, type(None))):
        spec = str(spec)
    text = (spec or "cpu").strip().lower()
    if text == "cpu" and "torch" not in sys.modules:
        from ..backends.base import Device

        return Device("cpu")  # type: ignore[return-value]
    import torch

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
    """Decorate ``main(argv) -> int``: exceptions :data:`EXIT_CODES` knows (plus ``extra``, the
    tool's own user errors) become ``error: ...`` on stderr and their exit code (2), Ctrl-C
    ``interrupted`` and 130, without a traceback.

    Use as ``@user_errors()`` or ``@user_errors(MyInputError)``.
    """
    if len(extra) == 1 and callable(extra[0]) and not isinstance(extra[0], type):
        return user_errors()(extra[0])  # bare @user_errors

    def decorate(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def wrapper(argv: Sequence[str] | None = None) -> int:
            try:
                return main(argv)
            except BaseException as e:
                code = exit_code(e, extra)
                if code is None or (os.environ.get("YOLO_DEBUG") and not isinstance(e, KeyboardInterrupt)):
                    raise
                print("interrupted" if isinstance(e, KeyboardInterrupt) else f"error: {one_line(e)}",
                      file=sys.stderr)
                return code

        return wrapper

    return decorate


def size_token(text: str) -> list[int]:
    """One ``--img-size`` word: ``416``, or ``320,416`` / ``320x416`` (height, width); argparse turns
    the ValueError into a one-line usage error."""
    sizes = [int(v) for v in text.lower().replace("x", ",").split(",") if v.strip()]
    if not sizes:
        raise ValueError(text)
    return sizes


def parse_img_size(values: int | Sequence[int | Sequence[int]] | None,
                   what: str = "--img-size") -> tuple[int, int] | None:
    """``--img-size`` as every tool reads it: one size (square) or HEIGHT WIDTH -> (height, width),
    the order of the Python API (``img_size=(h, w)``, ``Tensor[B, 3, H, W]``); None when not given.
    Each must be positive; multiples of the stride are the model's to check."""
    if values is None:
        return None
    if isinstance(values, int):
        values = [values]
    sizes = [int(v) for value in values for v in ([value] if isinstance(value, int) else value)]
    if not sizes:
        return None
    if len(sizes) > 2:
        raise UserError(f"{what} takes one size or HEIGHT WIDTH, got {len(sizes)} numbers")
    hw = (sizes[0], sizes[-1])
    if min(hw) < 1:
        raise UserError(f"{what} must be positive, got {hw[0]}x{hw[1]} (h x w)")
    return hw


def add_img_size_arg(p: argparse.ArgumentParser, help: str) -> None:
    """The one ``--img-size`` option: ``N`` (square) or ``H W`` (also ``H,W``); read it with
    :func:`parse_img_size`."""
    p.add_argument("--img-size", type=size_token, nargs="+", default=None, metavar="N",
                   help=f"{help}: one size, or height width (also H,W)")


def add_model_args(p: argparse.ArgumentParser) -> None:
    """--cfg, --weights (defaulting to the shipped model), --backend, --precision, --half (detect and test)."""
    p.add_argument("--cfg", default=None,
                   help="Darknet cfg (path, or a name in cfg/); default: the shipped model's, or none for an .onnx")
    p.add_argument("--weights", default=str(DEFAULT_WEIGHTS),
                   help="Darknet .weights, a .pt checkpoint or an .onnx export (path, or a name in weights/)")
    p.add_argument("--backend", choices=engine_names() + ("auto",), default="auto",
                   help="inference engine; auto: the one python -m yolo.benchmark measured fastest for this "
                        "model here, else onnxruntime for an .onnx (or the .onnx shipped beside the default "
                        "weights), opencv for a plain Darknet cfg, torch for the rest (README: Engines)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads of the engine (OpenCV, onnxruntime, OpenVINO, torch; default: all cores)")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="fp32 (default), bf16 (CPU with AVX-512 BF16 / AMX, or CUDA), fp16 (CUDA), int8 (.onnx)")
    p.add_argument("--half", action="store_true", help="same as --precision fp16")


def engine_args(args: argparse.Namespace) -> dict:
    """--cfg/--backend/--precision/--half resolved: the shipped cfg goes with the shipped weights."""
    cfg = args.cfg
    if cfg is None and engine_class(backend_for(args.weights, None)).needs_cfg:
        cfg = str(DEFAULT_CFG)
    if args.half and args.precision not in (None, "fp16"):
        raise UserError(f"--half means --precision fp16, but --precision {args.precision} was given")
    if getattr(args, "threads", None) is not None and args.threads < 1:
        raise UserError(f"--threads must be positive, got {args.threads}")
    return {"cfg": cfg, "weights": args.weights, "backend": args.backend,
            "precision": "fp16" if args.half else (args.precision or "fp32"),
            "threads": getattr(args, "threads", None)}
