"""bfloat16 vs float32 on the CPU, measured side by side in one run: inference against OpenCV DNN
(fp32) and our fp32 engine, and one training step (bf16 autocast vs fp32).

Batch 1 (inference), 2 threads (torch and OpenCV). Forward rows: OpenCV DNN
(``cv2.dnn.readNetFromDarknet``, fp32), our torch engine in fp32 and in bf16
(``load_backend(..., precision=...)``: fused, channels_last). Targets: bf16 / OpenCV <= 0.5 for
yolov3 @416 and <= 0.65 for yolov3-tiny @416. Training: yolov3-tiny @416, batch 8, one SGD step
on a fixed random batch (the model's compute only; data loading is bench_train.py's business),
fp32 vs ``--amp`` (bf16 autocast, loss in float32); target bf16 >= 1.8x faster. ``--layers``
adds the per-layer-type table behind the choice of what runs in bf16 (yolo/backends/pytorch.py).

Random weights written by our saver stand in where no trained file is shipped (speed does not
depend on them). Every figure is the median of interleaved repetitions; the load average is
printed before and after: on a shared machine, compare ratios from one run only.

    python benchmarks/bench_precision.py [--repeat 15] [--quick] [--layers] [--train-steps 6] [--threads 2]

Measured 2026-11-25 (AMD EPYC, AVX-512 BF16, torch 2.13, OpenCV 4.14, 2 threads, load average
1.4-1.6 at start and end; the machine shared with other jobs):

    forward, batch 1, median ms   opencv    fp32    bf16  bf16/cv  fp32/cv bf16/fp32  target
    yolo-fastest-1.1 @ 320          10.1     9.8     7.6     0.75     0.97      0.78
    yolov3-tiny @ 416               35.0    35.9    17.1     0.49     1.03      0.48  <= 0.65
    yolov3 @ 416                   331.6   341.9   155.7     0.47     1.03      0.46  <= 0.5
    train step, yolov3-tiny @416, batch 8: fp32 918 ms, bf16 459 ms, 2.00x (target >= 1.8x)

With 2 threads on a busy machine (load average 5-10) every torch figure is dominated by OpenMP
threads waiting for a descheduled sibling (yolo-fastest fp32 took 1 s instead of 10 ms) and the
ratios mean nothing; ``--threads 1`` still measures compute there (load 4-6: yolov3 0.50,
yolov3-tiny 0.61, training 2.09x).
"""
from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from yolo.backends import load_backend  # noqa: E402
from yolo.backends.pytorch import cpu_bf16_problem  # noqa: E402
from yolo.hyp import Hyp  # noqa: E402
from yolo.loss import YOLOLoss  # noqa: E402
from yolo.machine import machine_line  # noqa: E402
from yolo.model import Darknet  # noqa: E402
from yolo.trainer import build_optimizer  # noqa: E402

from bench_inference import THREADS, interleaved_ms, load_average, opencv_net, random_weights  # noqa: E402


def bench_forward(cfg: str, weights: Path, size: int, repeat: int) -> dict[str, float]:
    image = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
    net = opencv_net(ROOT / "cfg" / cfg, weights)
    names = net.getUnconnectedOutLayersNames()

    def opencv() -> object:
        net.setInput(image)
        return net.forward(names)

    x = torch.from_numpy(image)
    fp32 = load_backend(ROOT / "cfg" / cfg, weights, precision="fp32")
    bf16 = load_backend(ROOT / "cfg" / cfg, weights, precision="bf16")
    return interleaved_ms({"opencv": opencv, "fp32": lambda: fp32(x), "bf16": lambda: bf16(x)}, repeat)


def bench_train(cfg: str, size: int, batch: int, steps: int) -> dict[str, float]:
    """ms per optimiser step (forward, float32 loss, backward, SGD), fp32 vs bf16 autocast, as the
    Trainer runs them (channels_last), on one fixed batch with a few boxes per image."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    imgs = torch.rand(batch, 3, size, size, generator=g).contiguous(memory_format=torch.channels_last)
    n = 6 * batch
    targets = torch.cat((torch.arange(batch).repeat_interleave(6)[:, None].float(),
                         torch.randint(0, 80, (n, 1), generator=g).float(),
                         0.2 + 0.6 * torch.rand(n, 2, generator=g), 0.05 + 0.3 * torch.rand(n, 2, generator=g)), 1)
    base = Darknet(ROOT / "cfg" / cfg, warn_unused=False).train().to(memory_format=torch.channels_last)
    runs = {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        model = copy.deepcopy(base)
        loss_fn = YOLOLoss(model)
        opt = build_optimizer(model, Hyp.from_net(model.net))
        for group in opt.param_groups:
            group["lr"] = 1e-5

        def step(model: nn.Module = model, loss_fn: YOLOLoss = loss_fn, opt: torch.optim.Optimizer = opt,
                 dtype: torch.dtype | None = dtype) -> None:
            with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                out = model(imgs)
            loss, _ = loss_fn(out, targets, (size, size))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        runs[name] = step
    return interleaved_ms(runs, steps, warmup=1)


def bench_layers(repeat: int) -> list[tuple[str, float, float]]:
    """Per layer type: ms in fp32 and in bf16 (channels_last, inference), shapes from our cfgs."""
    cases: list[tuple[str, nn.Module | Callable, tuple[int, ...]]] = [
        ("conv 3x3 64->128 @104", nn.Conv2d(64, 128, 3, 1, 1), (1, 64, 104, 104)),
        ("conv 3x3 s2 64->128 @208", nn.Conv2d(64, 128, 3, 2, 1), (1, 64, 208, 208)),
        ("conv 3x3 s2 512->1024 @26", nn.Conv2d(512, 1024, 3, 2, 1), (1, 512, 26, 26)),
        ("conv 1x1 256->128 @52", nn.Conv2d(256, 128, 1), (1, 256, 52, 52)),
        ("conv 3x3 stem 3->32 @416", nn.Conv2d(3, 32, 3, 1, 1), (1, 3, 416, 416)),
        ("depthwise 3x3 64 @80", nn.Conv2d(64, 64, 3, 1, 1, groups=64), (1, 64, 80, 80)),
        ("depthwise 3x3 s2 96 @80", nn.Conv2d(96, 96, 3, 2, 1, groups=96), (1, 96, 80, 80)),
        ("depthwise 5x5 96 @20", nn.Conv2d(96, 96, 5, 1, 2, groups=96), (1, 96, 20, 20)),
        ("grouped g4 3x3 128 @52", nn.Conv2d(128, 128, 3, 1, 1, groups=4), (1, 128, 52, 52)),
        ("grouped g32 3x3 256 @26", nn.Conv2d(256, 256, 3, 1, 1, groups=32), (1, 256, 26, 26)),
        ("dilated d2 3x3 64 @52", nn.Conv2d(64, 64, 3, 1, 2, dilation=2), (1, 64, 52, 52)),
        ("maxpool 2 s2 64 @104", nn.MaxPool2d(2, 2), (1, 64, 104, 104)),
        ("maxpool 5 s1 256 @13", nn.MaxPool2d(5, 1, 2), (1, 256, 13, 13)),
        ("avgpool 3 s2 64 @52", nn.AvgPool2d(3, 2, 1), (1, 64, 52, 52)),
        ("upsample x2 128 @26", nn.Upsample(scale_factor=2), (1, 128, 26, 26)),
        ("leaky 128 @104", nn.LeakyReLU(0.1, inplace=True), (1, 128, 104, 104)),
        ("shortcut add 128 @52", lambda x: x + x, (1, 128, 52, 52)),
        ("cast to fp32 128 @104 (fp32: no-op)", lambda x: x.float(), (1, 128, 104, 104)),
    ]
    rows = []
    with torch.inference_mode():
        for name, layer, shape in cases:
            x32 = torch.rand(shape).contiguous(memory_format=torch.channels_last)
            xbf = x32.bfloat16()
            if isinstance(layer, nn.Module):
                l32 = layer.eval().to(memory_format=torch.channels_last)
                lbf = copy.deepcopy(l32).bfloat16()
            else:
                l32 = lbf = layer
            r = interleaved_ms({"fp32": lambda: l32(x32), "bf16": lambda: lbf(xbf)}, repeat * 3)
            rows.append((name, r["fp32"], r["bf16"]))
    return rows


def bench_depthwise_choice(repeat: int) -> dict[str, float]:
    """yolo-fastest-1.1 @320 (28 depthwise convolutions) whole: fp32, bf16 (what ships) and bf16
    with the depthwise convolutions kept in float32 (cast around them: KEEP_FP32)."""
    from yolo.backends import pytorch as engine

    cfg, weights = ROOT / "cfg" / "yolo-fastest-1.1.cfg", ROOT / "weights" / "yolo-fastest-1.1.weights"
    x = torch.rand(1, 3, 320, 320)
    fp32 = load_backend(cfg, weights, precision="fp32")
    bf16 = load_backend(cfg, weights, precision="bf16")
    keep = engine.KEEP_FP32
    engine.KEEP_FP32 = lambda conv: conv.groups > 1 and conv.groups == conv.in_channels
    try:
        islands = load_backend(cfg, weights, precision="bf16")
    finally:
        engine.KEEP_FP32 = keep
    return interleaved_ms({"fp32": lambda: fp32(x), "bf16": lambda: bf16(x),
                           "bf16, depthwise fp32": lambda: islands(x)}, repeat * 2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=15, help="timed forwards per model (median; yolov3: a third)")
    p.add_argument("--train-steps", type=int, default=6, help="timed training steps per precision (median)")
    p.add_argument("--quick", action="store_true", help="skip yolov3")
    p.add_argument("--layers", action="store_true", help="also the per-layer-type table")
    p.add_argument("--threads", type=int, default=THREADS, help="torch and OpenCV threads (default 2)")
    a = p.parse_args()
    problem = cpu_bf16_problem()
    if problem:
        sys.exit(f"bench_precision: {problem}")
    torch.set_num_threads(a.threads)
    cv2.setNumThreads(a.threads)
    warnings.simplefilter("ignore")
    print(machine_line(a.threads))
    print(f"load average {load_average()} (start)")
    rows = [("yolo-fastest-1.1", "yolo-fastest-1.1.cfg", ROOT / "weights" / "yolo-fastest-1.1.weights", 320, None),
            ("yolov3-tiny", "yolov3-tiny.cfg", None, 416, 0.65)]
    if not a.quick:
        rows.append(("yolov3", "yolov3.cfg", None, 416, 0.5))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, cfg, weights, size, target in rows:
            weights = weights or random_weights(cfg, Path(tmp))
            repeat = a.repeat if name != "yolov3" else max(5, a.repeat // 3)
            results.append((f"{name} @ {size}", bench_forward(cfg, weights, size, repeat), target))
    print(f"\n{'forward, batch 1, median ms':<28}{'opencv':>8}{'fp32':>8}{'bf16':>8}"
          f"{'bf16/cv':>9}{'fp32/cv':>9}{'bf16/fp32':>10}  target")
    for model, r, target in results:
        cv = r["opencv"]
        print(f"{model:<28}{cv:>8.1f}{r['fp32']:>8.1f}{r['bf16']:>8.1f}{r['bf16'] / cv:>9.2f}{r['fp32'] / cv:>9.2f}"
              f"{r['bf16'] / r['fp32']:>10.2f}  {f'bf16/cv <= {target}' if target else ''}")
    print(f"load average {load_average()}")
    t = bench_train("yolov3-tiny.cfg", 416, 8, a.train_steps)
    print(f"\n{'train step, yolov3-tiny @416, batch 8':<40}{'fp32 ms':>9}{'bf16 ms':>9}{'speed-up':>10}  target")
    print(f"{'':<40}{t['fp32']:>9.0f}{t['bf16']:>9.0f}{t['fp32'] / t['bf16']:>9.2f}x  >= 1.8x")
    print(f"load average {load_average()}")
    if a.layers:
        print(f"\n{'layer type (inference, channels_last)':<34}{'fp32 ms':>9}{'bf16 ms':>9}{'bf16/fp32':>10}")
        for name, f, b in bench_layers(max(3, a.repeat // 3)):
            print(f"{name:<34}{f:>9.3f}{b:>9.3f}{b / f:>10.2f}")
        d = bench_depthwise_choice(a.repeat)
        print("\nyolo-fastest-1.1 @320 whole, median ms: " + ", ".join(f"{k} {v:.1f}" for k, v in d.items())
              + f"; bf16/fp32 {d['bf16'] / d['fp32']:.2f}, "
              f"depthwise-fp32/fp32 {d['bf16, depthwise fp32'] / d['fp32']:.2f}")
        print(f"load average {load_average()} (end)")


if __name__ == "__main__":
    main()
