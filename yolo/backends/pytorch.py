"""The PyTorch engine: our Darknet model, fused, channels_last, in the precision asked for.

Precisions: ``fp32`` anywhere; ``bf16`` on a CPU with native bfloat16 (AVX-512 BF16 or AMX on
x86, BF16 on Arm; oneDNN runs the convolutions) and on a CUDA GPU with bfloat16 (compute
capability 8.0+); ``fp16`` on CUDA only (CPU float16 convolutions are unsupported or slow).

In reduced precision the convolutions (plain, grouped, depthwise, dilated), pooling, upsampling,
routes and shortcuts run in bf16/fp16; every ``[yolo]`` layer stays float32 (its anchors as
given; it casts its input up and decodes in float32), so the output is always float32 and NMS
never sees a reduced-precision score. On the CPU each convolution's activation runs inside it
(:class:`ConvAct`, oneDNN's fused post-op): on its own, leaky in bf16 takes 2.2x its fp32 time.

What runs in bf16 was decided by measurement, per layer type (``python
benchmarks/bench_precision.py --layers``: AMD EPYC with AVX-512 BF16, torch 2.13, 2 threads,
channels_last, batch 1, load average 1.5; bf16 time / fp32 time, medians of interleaved runs):
dense 3x3 and 1x1 convolutions 0.39-0.56 (stride 1 and 2), the 3-channel stem 0.60, grouped
(g=4, g=32) 0.56-0.70, dilated 0.55, depthwise 3x3 / 5x5 0.92-0.98, max/avg pooling 0.94-1.02,
upsampling 0.80; alone, leaky 2.04 and the shortcut add 1.69 (hence :class:`ConvAct`). Depthwise
convolutions gain little in bf16 but lose nothing (the open PyTorch report of slow bf16
grouped/dilated convolutions does not show on this CPU), while casting around them costs two
copies: yolo-fastest-1.1 @320 (28 depthwise) runs in 0.82x its fp32 time all-bf16 and in 1.04x
with its depthwise convolutions kept in fp32. So nothing is kept in fp32; :data:`KEEP_FP32` is
the hook for a CPU where a layer type measures slower.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from .base import Backend, BackendError, ModelInfo, is_tensor, register_engine

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..model import Darknet

#: the precisions this engine runs (their torch dtypes: :data:`DTYPES`, built when torch is loaded)
DTYPE_NAMES = ("fp32", "bf16", "fp16")


def __getattr__(name: str) -> Any:
    """Torch-made names, built on first use: this module imports no torch at import time, so the
    engine registry can list the torch engine in a process where torch is absent or not yet loaded."""
    if name == "DTYPES":
        import torch

        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if name in ("ConvAct", "Fp32Island"):
        from . import torch_ops

        return getattr(torch_ops, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _dtype(precision: str) -> "torch.dtype":
    import torch

    return getattr(torch, {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[precision])


def model_info(model: "Darknet", names: list[str] | None = None) -> ModelInfo:
    """Kept for callers of the old name: :meth:`ModelInfo.from_model`."""
    return ModelInfo.from_model(model, names)


def cpu_bf16_problem() -> str | None:
    """Why this CPU cannot run bfloat16 convolutions at speed (None: it can).

    oneDNN emulates bf16 on plain AVX-512 CPUs (slower than fp32), so native support is required:
    AVX-512 BF16 or AMX-BF16 on x86, the BF16 extension on Arm."""
    import torch

    if not torch.backends.mkldnn.is_available():
        return "this PyTorch build has no oneDNN (mkldnn), which runs bf16 convolutions on the CPU"
    try:
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return "oneDNN reports no bf16 support on this CPU"
        caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    except (AttributeError, RuntimeError):  # an older PyTorch: trust oneDNN's answer
        return None
    if not caps:
        return None
    if caps.get("avx512_bf16") or caps.get("amx_bf16") or caps.get("bf16"):
        return None
    return (f"this CPU ({caps.get('cpu_name', 'unknown')}) has no native bfloat16 instructions "
            "(AVX-512 BF16 or AMX on x86, BF16 on Arm); oneDNN would emulate them, slower than fp32")


def check_precision(precision: str, device: torch.device) -> None:
    """Raise :class:`BackendError`, saying what would work, when ``precision`` cannot run on ``device``."""
    if precision not in DTYPE_NAMES:
        raise BackendError(f"precision '{precision}' is not available for the torch backend "
                           f"({', '.join(DTYPE_NAMES)}; int8 needs an .onnx model and onnxruntime)")
    if device.type not in ("cpu", "cuda"):
        if precision != "fp32":
            raise BackendError(f"precision {precision} on '{device}': the torch backend runs reduced "
                               "precision on the CPU (bf16) and on CUDA (bf16, fp16) only; use fp32")
        return
    if precision == "fp16" and device.type != "cuda":
        raise BackendError(f"precision fp16 needs a CUDA device (got '{device}'): float16 convolutions "
                           "on the CPU are unsupported or slow; use bf16 (CPUs with AVX-512 BF16 / AMX) "
                           "or fp32")
    if precision == "bf16" and device.type == "cpu":
        problem = cpu_bf16_problem()
        if problem:
            raise BackendError(f"precision bf16 on the CPU: {problem}. Use fp32 here "
                               "(or fp16/bf16 on a CUDA GPU)")
    if precision == "bf16" and device.type == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise BackendError(f"device '{device}': CUDA is not available here; use device='cpu'")
        major, minor = torch.cuda.get_device_capability(device)
        if major < 8:
            raise BackendError(f"precision bf16 needs a GPU of compute capability 8.0+ (Ampere or later); "
                               f"{torch.cuda.get_device_name(device)} is {major}.{minor}: use fp16")


KEEP_FP32: Callable[["nn.Conv2d"], bool] = lambda conv: False  # noqa: E731
"""Which convolutions a reduced-precision CPU model keeps in float32 (cast around them). None
today: every convolution type measured at least as fast in bf16 (see the module docstring)."""


def reduce_precision(model: "Darknet", precision: str, device: "torch.device") -> "Darknet":
    """Fuse ``model`` (if not yet), store it channels_last and cast everything but its ``[yolo]``
    layers to ``precision``, in place; convolutions :data:`KEEP_FP32` picks stay float32; on
    the CPU each convolution's activation runs inside it (:class:`ConvAct`)."""
    import torch
    from torch import nn

    from ..heads import Head
    from .torch_ops import ConvAct, Fp32Island, fuse_activations

    if not model.fused:
        model.fuse()
    model.to(device=device, memory_format=torch.channels_last)
    dtype = _dtype(precision)
    if dtype == torch.float32:
        return model.eval()
    for block in model.module_list:
        if not isinstance(block, Head):  # anchors and decoding stay float32
            block.to(dtype)
    if device.type == "cpu":
        fuse_activations(model, KEEP_FP32)
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Conv2d) and not isinstance(parent, ConvAct) and KEEP_FP32(child):
                    setattr(parent, name, Fp32Island(child))
    model.engine_precision = precision  # prepared: a TorchBackend built on it does not redo this
    return model.eval()


@register_engine("torch")
class TorchBackend(Backend):
    """Runs a ``Darknet`` in eval mode under ``torch.inference_mode``.

    In fp32 the caller's model is run as it is. In bf16 / fp16 the model handed in is handed
    over: it is fused, made channels_last and cast in place (pass a copy to keep yours;
    ``from_files`` and ``evaluate()`` build their own). Input: float32 (any layout); output:
    float32 always."""

    precisions = DTYPE_NAMES
    devices = ("cpu", "cuda")
    suffixes = (".weights", ".pt")  # and any other name: Darknet backbone files such as darknet53.conv.74

    def __init__(self, model: "Darknet", precision: str = "fp32", device: "torch.device | None" = None,
                 names: list[str] | None = None) -> None:
        device = device or next(model.parameters()).device
        check_precision(precision, device)
        super().__init__(ModelInfo.from_model(model, names), precision, device)
        if precision != "fp32" and getattr(model, "engine_precision", "fp32") != precision:
            model = reduce_precision(model, precision, device)
        self.model = model
        self.dtype = _dtype(precision)

    @classmethod
    def from_files(cls, cfg: str | Path | None, weights: str | Path, precision: str = "fp32",
                   device: "str | torch.device" = "cpu", names: list[str] | None = None) -> "TorchBackend":
        """``names`` given: they replace the checkpoint's (checked against the model's classes)."""
        try:
            import torch
        except ImportError:
            raise BackendError(f"{Path(str(weights)).name}: the torch engine needs PyTorch, which is not installed "
                               "here (pip install torch); a plain Darknet cfg runs with --backend opencv, an "
                               ".onnx export with onnxruntime") from None

        from ..model import Darknet
        from ..weights_file import load_weights

        device = torch.device(str(device))
        if cfg is None:
            raise BackendError(f"{weights}: the torch backend needs --cfg")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise BackendError(f"device '{device}': CUDA is not available here; use device='cpu'")
        check_precision(precision, device)  # before the (possibly long) load
        model = Darknet(cfg)
        state = load_weights(model, weights)
        model = reduce_precision(model, precision, device)
        saved = state.get("names")
        if names is not None:
            if len(names) != model.num_classes:
                raise BackendError(f"names: {len(names)} class names, but {model.cfg_path.name} has "
                                   f"{model.num_classes} classes: use the names the model was trained with")
            saved = list(names)
        return cls(model, precision, device, list(saved) if isinstance(saved, (list, tuple)) and saved else None)

    @property
    def stateful(self) -> bool:  # type: ignore[override]
        return self.model.stateful

    def reset_state(self, carry: bool = True) -> None:
        self.model.reset_state(carry)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """The contract: ``np.ndarray[B, 3, H, W]`` -> ``np.ndarray[B, N, 5 + C]`` float32 (converted
        here, ``torch.from_numpy`` / ``.numpy()``); a tensor in gives a tensor out, on the model's device."""
        import torch

        tensor = is_tensor(x)
        t = x if tensor else torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        with torch.inference_mode():
            if self.dtype == torch.float32:
                t = t.to(self.device, non_blocking=True)
            else:  # cast, then NHWC: 2.5x faster than both in one .to() (0.26 vs 0.68 ms at 416, 1 thread)
                t = t.to(self.device, self.dtype, non_blocking=True).contiguous(memory_format=torch.channels_last)
            out = self.model(t).float()
        return out if tensor else out.cpu().numpy()
