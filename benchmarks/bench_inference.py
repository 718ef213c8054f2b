"""Inference and weight-loading speed against OpenCV DNN, measured side by side in one run.

Batch 1, 2 CPU threads, eval mode. For each model: our forward time (BatchNorm-fused,
as ``model.fuse()`` leaves it) divided by OpenCV DNN's forward time on the same input,
and our ``load_darknet_weights`` time divided by ``cv2.dnn.readNetFromDarknet`` for
yolov3 (248 MB). Ratios below 1 mean we are faster. Random weights (written by us,
read by both) stand in where no trained file is shipped: speed does not depend on them.

    python benchmarks/bench_inference.py [--repeat 20] [--quick]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from yolo import Darknet  # noqa: E402
from yolo.machine import machine_line  # noqa: E402

THREADS = 2


def interleaved_ms(fns: dict[str, Callable[[], object]], repeat: int, warmup: int = 3) -> dict[str, float]:
    """Median wall time (ms) of each function, timed round-robin so that load from other
    processes drifting over the run hits every contender alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: printed beside figures from a possibly shared machine."""
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def random_weights(cfg: str, folder: Path) -> Path:
    """A .weights file for ``cfg`` written by us from a randomly initialised model."""
    torch.manual_seed(0)
    model = Darknet(cfg)
    path = folder / (Path(cfg).stem + ".weights")
    model.save_darknet_weights(path)
    return path


def opencv_net(cfg: Path, weights: Path) -> cv2.dnn.Net:
    net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    return net


def bench_forward(name: str, cfg: str, weights: Path, size: int, repeat: int) -> dict:
    """opencv; eager (BN unfused, NCHW: a plain port); fused (``model.fuse()``: BN folded,
    channels-last); optimized (``model.optimize_for_inference()``: + traced and frozen)."""
    image = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
    net = opencv_net(ROOT / "cfg" / cfg, weights)
    names = net.getUnconnectedOutLayersNames()

    def cv_forward():
        net.setInput(image)
        return net.forward(names)

    x = torch.from_numpy(image)
    eager = Darknet(cfg).load_darknet_weights(weights).eval()
    fused = Darknet(cfg).load_darknet_weights(weights).fuse()
    optimized = Darknet(cfg).load_darknet_weights(weights).optimize_for_inference()
    with torch.inference_mode():
        t0 = time.perf_counter()
        first = optimized(x)  # traces and freezes for this input shape
        prepare = (time.perf_counter() - t0) * 1e3
        assert torch.allclose(first, eager(x), atol=1e-3, rtol=1e-4)
        result = interleaved_ms({"opencv": cv_forward, "eager": lambda: eager(x), "fused": lambda: fused(x),
                                 "optimized": lambda: optimized(x)}, repeat)
    return {"model": f"{name} @ {size}", "prepare": prepare, **result}


def bench_load(cfg: str, weights: Path, repeat: int) -> dict:
    """Each load timed once in a fresh process (what a user gets: one load per run, warm page
    cache, no allocator memory left over from an earlier load), alternating opencv / ours."""
    times: dict[str, list[float]] = {"opencv": [], "ours": []}
    for _ in range(repeat):
        for who in times:
            out = subprocess.run([sys.executable, __file__, "--load-worker", who, cfg, str(weights)],
                                 capture_output=True, text=True, check=True)
            times[who].append(float(out.stdout.split()[-1]))
    return {who: statistics.median(t) for who, t in times.items()}


def load_worker(who: str, cfg: str, weights: str) -> None:
    """Print the ms of one load in this fresh process (imports and model build not timed)."""
    torch.set_num_threads(THREADS)
    cv2.setNumThreads(THREADS)
    if who == "ours":
        model = Darknet(cfg, warn_unused=False)
        t0 = time.perf_counter()
        model.load_darknet_weights(weights)
    else:
        t0 = time.perf_counter()
        cv2.dnn.readNetFromDarknet(str(ROOT / "cfg" / cfg), weights)
    print((time.perf_counter() - t0) * 1e3)


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--load-worker":
        return load_worker(*sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20, help="timed runs per measurement (median)")
    parser.add_argument("--quick", action="store_true", help="skip yolov3 (the slowest rows)")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    cv2.setNumThreads(THREADS)
    print(machine_line(THREADS))
    print(f"batch 1; load average {load_average()} at start")

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rows = [("yolo-fastest-1.1", "yolo-fastest-1.1.cfg", ROOT / "weights" / "yolo-fastest-1.1.weights", 320),
                ("yolov3-tiny", "yolov3-tiny.cfg", None, 416)]
        if not args.quick:
            rows.append(("yolov3", "yolov3.cfg", None, 416))
        results = []
        for name, cfg, weights, size in rows:
            weights = weights or random_weights(cfg, folder)
            results.append(bench_forward(name, cfg, weights, size, args.repeat if name != "yolov3" else
                                         max(5, args.repeat // 3)))
        print(f"\n{'forward, median ms':<24}{'opencv':>8}{'eager':>8}{'fused':>8}{'optim.':>8}"
              f"{'eager/cv':>10}{'fused/cv':>10}{'optim/cv':>10}{'trace ms':>10}")
        for r in results:
            cv = r["opencv"]
            print(f"{r['model']:<24}{cv:>8.1f}{r['eager']:>8.1f}{r['fused']:>8.1f}{r['optimized']:>8.1f}"
                  f"{r['eager'] / cv:>10.2f}{r['fused'] / cv:>10.2f}{r['optimized'] / cv:>10.2f}"
                  f"{r['prepare']:>10.0f}")
        if not args.quick:
            load = bench_load("yolov3.cfg", folder / "yolov3.weights", 9)
            print(f"\n{'load yolov3.weights (ms)':<26}{'opencv':>9}{'ours':>9}{'ours/cv':>10}")
            print(f"{'248 MB':<26}{load['opencv']:>9.0f}{load['ours']:>9.0f}{load['ours'] / load['opencv']:>10.2f}")


if __name__ == "__main__":
    main()
