"""What ACNet deploy-time fusion buys: yolov3-tiny-ac before and after deploy vs plain yolov3-tiny.

Batch 1, 416x416, 2 CPU threads, eval mode, random weights (speed does not depend on them).
Three models timed in interleaved rounds (so drifts in machine load hit all alike):

- ``tiny-ac train-form``: the training-time model (three conv+BN branches per 3x3);
- ``tiny-ac deployed``: after ``deploy()`` (one plain conv each) and ``fuse()`` (other BNs);
- ``tiny plain``: yolov3-tiny.cfg, ``fuse()``d — the reference the deployed model should match.

Prints medians, minima (less sensitive to other load on a shared machine) and their ratios;
target: deployed / plain within 5% (ratio <= 1.05).

    python benchmarks/bench_deploy.py [--repeat 30] [--size 416]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from yolo import Darknet  # noqa: E402
from yolo.machine import machine_line  # noqa: E402

THREADS = 2


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=20, help="timed rounds (after 3 warm-up rounds)")
    p.add_argument("--size", type=int, default=416)
    args = p.parse_args(argv)
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    warnings.simplefilter("ignore")

    train_form = Darknet("yolov3-tiny-ac.cfg").eval()
    deployed = Darknet("yolov3-tiny-ac.cfg")
    deployed.load_state_dict(train_form.state_dict())
    deployed.deploy().fuse()
    plain = Darknet("yolov3-tiny.cfg").fuse()
    models = {"tiny-ac train-form": train_form, "tiny-ac deployed": deployed, "tiny plain (fused)": plain}

    def layers(model: torch.nn.Module) -> list[tuple]:
        return [(tuple(m.weight.shape), m.stride, m.padding, m.bias is not None)
                for m in model.modules() if isinstance(m, torch.nn.Conv2d)]

    same = layers(deployed) == layers(plain)
    x = torch.rand(1, 3, args.size, args.size)
    times: dict[str, list[float]] = {k: [] for k in models}
    with torch.inference_mode():
        ref = train_form(x)
        err = float((deployed(x) - ref).abs().max() / ref.abs().max())
        for r in range(3 + args.repeat):
            for name, model in models.items():
                t0 = time.perf_counter()
                model(x)
                if r >= 3:
                    times[name].append((time.perf_counter() - t0) * 1e3)

    med = {k: statistics.median(v) for k, v in times.items()}
    print(machine_line(THREADS))
    print(f"batch 1, {args.size}x{args.size}, {args.repeat} interleaved rounds")
    for name, ms in med.items():
        print(f"  {name:22s} {ms:8.2f} ms  (min {min(times[name]):.2f})")
    print(f"  deployed has exactly plain yolov3-tiny's convolutions (shapes, strides, padding, bias): {same}")
    print(f"  deployed vs train-form outputs: max relative difference {err:.1e}")
    best = {k: min(v) for k, v in times.items()}
    for label, stat in (("median", med), ("min", best)):
        speedup = stat["tiny-ac train-form"] / stat["tiny-ac deployed"]
        ratio = stat["tiny-ac deployed"] / stat["tiny plain (fused)"]
        print(f"[{label:6s}] train-form / deployed = {speedup:.2f}x (speed-up from deploy);  "
              f"deployed / plain tiny = {ratio:.3f} (target <= 1.05: {'met' if ratio <= 1.05 else 'NOT met'})")

if __name__ == "__main__":
    main()
