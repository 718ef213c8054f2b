"""Images per second: detect.py end to end and the Detector API, against OpenCV DNN's forward pass.

Same model (cfg/yolo-fastest-1.1), same images (data/samples), same CPU threads, one run; the
numbers that matter are the ratios (the machine may be shared). Run: python benchmarks/bench_detect.py

On an oversubscribed machine (load average above the core count) PyTorch's OpenMP threads spin and
lose far more than OpenCV's pool does; ``OMP_WAIT_POLICY=PASSIVE`` (set before Python starts) or
``--threads 1`` gives a fairer picture there. The load average is printed with the results.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from yolo import Detector  # noqa: E402
from yolo.cli.detect import get_args_parser, run  # noqa: E402
from yolo.machine import machine_line  # noqa: E402

CFG = ROOT / "cfg" / "yolo-fastest-1.1.cfg"
WEIGHTS = ROOT / "weights" / "yolo-fastest-1.1.weights"
SAMPLES = ROOT / "data" / "samples"


def timed(fn, repeats: int) -> float:
    """Median seconds of ``repeats`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)

    paths = sorted(SAMPLES.glob("*.jpg"))
    images = [cv2.imread(str(p)) for p in paths]
    batch = [images[i % len(images)] for i in range(args.batch)]
    n = len(batch)

    net = cv2.dnn.readNetFromDarknet(str(CFG), str(WEIGHTS))
    out_names = net.getUnconnectedOutLayersNames()
    blob = cv2.dnn.blobFromImages(batch, 1 / 255.0, (320, 320), swapRB=True, crop=False)

    def cv_forward() -> None:
        net.setInput(blob)
        net.forward(out_names)

    def cv_forward_1() -> None:
        for i in range(n):
            net.setInput(blob[i:i + 1])
            net.forward(out_names)

    detector = Detector(CFG, WEIGHTS)

    def api() -> None:
        detector(batch)

    def api_1() -> None:
        for img in batch:
            detector(img)

    with tempfile.TemporaryDirectory() as tmp:
        cli_args = get_args_parser().parse_args(
            ["--source", str(SAMPLES), "--output", tmp, "--no-progress", "--quiet",
             "--batch-size", str(args.batch)])
        loop_times: list[float] = []

        def cli() -> None:
            loop_times.append(run(cli_args).seconds)

        rows = [
            (f"OpenCV DNN forward only, batch {n}", timed(cv_forward, args.repeats), n),
            (f"OpenCV DNN forward only, {n} x batch 1", timed(cv_forward_1, args.repeats), n),
            (f"Detector API, batch {n} (preprocess+forward+NMS)", timed(api, args.repeats), n),
            (f"Detector API, {n} x one image", timed(api_1, args.repeats), n),
            (f"detect.py on data/samples ({len(paths)} images), incl. model load + writing",
             timed(cli, args.repeats), len(paths)),
        ]
        rows.append((f"detect.py on data/samples ({len(paths)} images), images loop only",
                     statistics.median(loop_times[1:]), len(paths)))

        # does decoding/writing in threads help? the same folder x8, no threads vs 1 vs the default
        big = Path(tmp) / "big"
        big.mkdir()
        for k in range(8):
            for p in paths:
                (big / f"{p.stem}_{k}{p.suffix}").write_bytes(p.read_bytes())
        n_big = 8 * len(paths)
        for workers in (0, 1, get_args_parser().get_default("workers")):
            wargs = get_args_parser().parse_args(
                ["--source", str(big), "--output", str(Path(tmp) / f"out{workers}"), "--no-progress",
                 "--quiet", "--batch-size", str(args.batch), "--workers", str(workers)])
            secs = timed(lambda: run(wargs), max(1, args.repeats // 2))
            rows.append((f"detect.py on {n_big} images, --workers {workers}, incl. model load", secs, n_big))

    ref = rows[0][2] / rows[0][1]
    print(machine_line(args.threads))
    print(f"input 320x320, median of {args.repeats}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '-')}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'':64s} {'img/s':>8s} {'vs OpenCV fwd':>14s}")
    for name, secs, count in rows:
        rate = count / secs
        print(f"{name:64s} {rate:8.1f} {rate / ref:13.2f}x")


if __name__ == "__main__":
    main()
