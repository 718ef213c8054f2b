"""What every inference engine shares: the interface, the registry and :class:`ModelInfo`.

Torch-free at import time (issue 19 wants an inference path without torch): engines that need
torch import it in their own module. An engine is one file with one registered class::

    @register_engine("openvino")
    class OpenVinoBackend(Backend):
        precisions = ("fp32", "int8"); devices = ("cpu",); suffixes = (".xml",)

        @classmethod
        def from_files(cls, cfg, weights, precision="fp32", device="cpu", names=None): ...

plus its module name in :data:`yolo.backends.ENGINE_MODULES`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence, TypeVar

import numpy as np

from ..errors import YoloError

if TYPE_CHECKING:  # annotations only
    import torch

#: every precision some engine may run; each engine declares the subset it runs
PRECISIONS = ("fp32", "bf16", "fp16", "int8")
#: what a head's ``nms_settings()`` may hold (keyword arguments of ``darknet_nms``) and their types, so
#: that file metadata (strings) reads back; the values and their defaults are the head's, never restated
NMS_KEYS: dict[str, type] = {"nms_kind": str, "beta_nms": float}


class BackendError(YoloError):
    """An engine that cannot run what was asked (missing package, unsupported precision or
    device, a model file it cannot read); the message says what would work."""


@dataclass
class ModelInfo:
    """What pre- and post-processing need to know about a model, whichever engine runs it.

    Built in one place for each source: :meth:`from_model` (a ``Darknet``, also on the meta
    device) and :meth:`from_metadata` (an exported file's metadata, which :meth:`to_metadata`
    writes)."""

    num_classes: int
    input_size: tuple[int, int]  # (height, width) the model was built for
    letter_box: bool
    max_stride: int
    strides: list[float]
    cfg_name: str
    names: list[str] | None = None  # names the weights carry (checkpoint or .onnx metadata)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_model(cls, model: Any, names: Sequence[str] | None = None,
                   input_size: tuple[int, int] | None = None) -> "ModelInfo":
        """The info of a ``Darknet`` (its last head's NMS kind in ``extra``); ``input_size``
        overrides the cfg's (an export at another size)."""
        extra = dict(model.heads[-1].nms_settings()) if model.heads else {}  # Head.nms_settings
        return cls(num_classes=model.num_classes, input_size=tuple(input_size or model.input_size),
                   letter_box=bool(model.net.letter_box), max_stride=model.max_stride,
                   strides=list(model.strides), cfg_name=model.cfg_path.name,
                   names=list(names) if names is not None else None, extra=extra)

    @classmethod
    def from_metadata(cls, meta: dict[str, str], path: str | Path) -> "ModelInfo":
        """The info an exported file carries (string values, lists as JSON)."""
        try:
            names = json.loads(meta["names"]) if meta.get("names") else None
            return cls(num_classes=int(meta["num_classes"]), input_size=tuple(json.loads(meta["input_size"])),
                       letter_box=meta.get("letter_box", "0") == "1", max_stride=int(meta["max_stride"]),
                       strides=[float(s) for s in json.loads(meta["strides"])], cfg_name=meta.get("cfg_name", ""),
                       names=names, extra={k: kind(meta[k]) for k, kind in NMS_KEYS.items() if k in meta})
        except (KeyError, ValueError, TypeError) as e:
            raise BackendError(f"{path}: damaged yolo metadata ({type(e).__name__}: {e}); export it again") from None

    def to_metadata(self) -> dict[str, str]:
        """The inverse of :meth:`from_metadata`: the keys it reads, as strings."""
        return {
            "cfg_name": self.cfg_name,
            "num_classes": str(self.num_classes),
            "names": json.dumps(list(self.names or [])),
            "input_size": json.dumps(list(self.input_size)),  # (height, width)
            "letter_box": str(int(bool(self.letter_box))),
            "strides": json.dumps([float(s) for s in self.strides]),
            "max_stride": str(self.max_stride),
            **{k: str(self.extra[k]) for k in NMS_KEYS if k in self.extra},
        }


@dataclass(frozen=True)
class Device:
    """A device named without torch (``cpu``, ``cuda``, ``cuda:1``): what engines that do not run
    torch keep as ``engine.device``, with the ``type`` / ``index`` that callers read."""

    type: str
    index: int | None = None

    def __str__(self) -> str:
        return self.type if self.index is None else f"{self.type}:{self.index}"


def as_device(spec: "str | torch.device | Device | None") -> "Device | torch.device":
    """``spec`` as a device: a ``torch.device`` (or :class:`Device`) as given, a string parsed
    without importing torch."""
    if spec is None:
        return Device("cpu")
    if not isinstance(spec, str):
        return spec
    kind, _, index = spec.strip().partition(":")
    if kind not in ("cpu", "cuda") or (index and not index.isdigit()):
        raise BackendError(f"device must be cpu, cuda or cuda:N, got '{spec}'")
    return Device(kind, int(index) if index else None)


def is_tensor(x: object) -> bool:
    """Whether ``x`` is a torch tensor, without importing torch (a tensor exists only once torch is)."""
    return type(x).__module__.split(".")[0] == "torch"


def as_input(x: Any) -> tuple[np.ndarray, bool]:
    """An engine's input as the contract's array (C-contiguous float32 ``[B, 3, H, W]``), and whether
    it came as a torch tensor (the engine then answers with one, see :class:`Backend`)."""
    tensor = is_tensor(x)
    arr = x.detach().float().cpu().numpy() if tensor else np.asarray(x)
    return np.ascontiguousarray(arr, dtype=np.float32), tensor


def as_output(pred: np.ndarray, tensor: bool) -> Any:
    """The engine's ``pred`` in the caller's kind: a torch tensor for a tensor given, else the array."""
    if not tensor:
        return pred
    import torch  # only reached when the caller already holds a tensor: torch is imported

    return torch.from_numpy(np.ascontiguousarray(pred))


class Backend:
    """Base of every engine: ``engine(x) -> predictions`` plus :class:`ModelInfo`.

    The contract (issue 19): ``x`` is ``np.ndarray[B, 3, H, W]`` float32 RGB in [0, 1]; the answer
    is ``np.ndarray[B, N, 5 + C]`` float32 (cx, cy, w, h in input pixels, objectness, class
    probabilities). Numpy on both sides, so that pre- and post-processing, outputs and evaluation
    need no torch; the torch engine converts inside. A torch tensor given (callers from before the
    contract, the trainer's code) gets a torch tensor back: :func:`as_input` / :func:`as_output`.

    Class attributes declare what an engine runs, so dispatch and error messages need no list
    of engines: ``precisions``, ``devices`` (device types) and ``suffixes`` (the model files it
    reads; the first engine registered for a suffix is its default)."""

    name = ""
    precisions: tuple[str, ...] = ("fp32",)
    devices: tuple[str, ...] = ("cpu",)
    suffixes: tuple[str, ...] = ()
    needs_cfg = True  # False: its files carry the model info (an .onnx of ours), no --cfg is implied

    def __init__(self, info: ModelInfo, precision: str, device: "torch.device") -> None:
        self.info = info
        self.precision = precision
        self.device = as_device(device)  # a name ("cpu") becomes a Device: callers read .type / .index

    @classmethod
    def from_files(cls, cfg: str | Path | None, weights: str | Path, precision: str = "fp32",
                   device: "str | torch.device" = "cpu", names: list[str] | None = None) -> "Backend":
        """An engine for ``cfg`` + ``weights``; the same signature for every engine."""
        raise NotImplementedError

    @classmethod
    def reads(cls, weights: str | Path) -> bool:
        """Whether this engine reads the file ``weights`` (by its suffix)."""
        return str(weights).lower().endswith(cls.suffixes)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    #: whether the model carries a state from one call to the next (a [crnn]: the frames of a video)
    stateful = False

    def reset_state(self, carry: bool = True) -> None:
        """A new source starts (``Darknet.reset_state``); nothing to do for a stateless model."""

    def describe(self) -> str:
        return f"{self.name} {self.precision} on {self.device}"


ENGINES: dict[str, type[Backend]] = {}
B = TypeVar("B", bound=type[Backend])


def register_engine(name: str) -> Callable[[B], B]:
    """Class decorator: make an engine known by ``name`` (refuses a second engine of that name)."""
    def add(cls: B) -> B:
        if name in ENGINES and ENGINES[name] is not cls:
            raise ValueError(f"engine '{name}' is registered twice ({ENGINES[name].__name__}, {cls.__name__})")
        cls.name = name
        ENGINES[name] = cls
        return cls

    return add
