"""Wall time of ``python detect.py`` (the README's first command) next to a plain OpenCV DNN script.

Whole processes, as a user meets them: interpreter start, imports, model load, then for each of
the 7 sample photos read, detect, NMS, draw and write. The plain script is what one writes with
OpenCV alone (``cv2.dnn.readNetFromDarknet`` on the shipped cfg + weights, per image
``blobFromImage`` + ``forward``, ``cv2.dnn.NMSBoxesBatched``, ``cv2.rectangle`` / ``putText``,
``cv2.imwrite``). Runs are interleaved (plain, ours, plain, ours ...) so that a busy machine slows
both alike; medians are printed, with the ratio ours / plain (the issue's target: <= 1.3x).

    python benchmarks/bench_detect.py [--repeat 5] [--variants auto,opencv,torch]

``--variants``: ``auto`` is ``python detect.py`` as the README has it (the default engine);
``opencv`` / ``onnxruntime`` / ``torch`` add ``--backend NAME``; ``onnx`` runs ``--weights`` on the
.onnx shipped beside the default weights. Speed is printed, never asserted.
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

ROOT = Path(__file__).resolve().parent.parent
CFG = ROOT / "cfg" / "yolo-fastest-1.1.cfg"
WEIGHTS = ROOT / "weights" / "yolo-fastest-1.1.weights"
SAMPLES = ROOT / "data" / "samples"
NAMES = ROOT / "data" / "coco.names"


def plain_opencv(out: Path) -> None:
    """The reference script (its own process: only cv2 and numpy imported)."""
    import cv2
    import numpy as np

    names = NAMES.read_text().splitlines()
    net = cv2.dnn.readNetFromDarknet(str(CFG), str(WEIGHTS))
    layers = net.getUnconnectedOutLayersNames()
    out.mkdir(parents=True, exist_ok=True)
    for path in sorted(SAMPLES.glob("*.jpg")):
        img = cv2.imread(str(path))
        h0, w0 = img.shape[:2]
        net.setInput(cv2.dnn.blobFromImage(img, 1 / 255.0, (320, 320), swapRB=True, crop=False))
        rows = np.concatenate([o.reshape(-1, o.shape[-1]) for o in net.forward(layers)])
        scores = rows[:, 5:]  # OpenCV's [yolo] output: objectness x class probability
        box_i, cls_i = np.nonzero(scores > 0.25)
        xywh = rows[box_i, :4] * [w0, h0, w0, h0]
        rects = np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, 2:]], 1)
        s = scores[box_i, cls_i]
        keep = np.asarray(cv2.dnn.NMSBoxesBatched(rects.tolist(), s.tolist(), cls_i.tolist(), 0.25, 0.45),
                          np.int64).reshape(-1)
        for k in keep[np.argsort(-s[keep])][:100]:
            x, y, w, h = (int(round(v)) for v in rects[k])
            cv2.rectangle(img, (x, y), (x + w, y + h), (0, 255, 0), 2)
            cv2.putText(img, f"{names[cls_i[k]]} {s[k]:.2f}", (x, max(y - 4, 10)), cv2.FONT_HERSHEY_SIMPLEX,
                        0.5, (0, 255, 0), 1, cv2.LINE_AA)
        cv2.imwrite(str(out / path.name), img)


def timed(cmd: list[str], cwd: Path) -> float:
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return wall


def variant_args(name: str) -> list[str]:
    """The command-line flags of a --variants name (bench_test.py uses the same)."""
    if name == "auto":
        return []
    if name == "onnx":
        return ["--weights", str(WEIGHTS.with_suffix(".onnx"))]
    return ["--backend", name]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=5, help="runs of each (interleaved); medians are reported")
    p.add_argument("--variants", default="auto", help="comma-separated: auto, onnx, opencv, onnxruntime, torch")
    p.add_argument("--plain-only", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.plain_only:
        plain_opencv(args.plain_only)
        return 0
    sys.path.insert(0, str(ROOT))
    from yolo.machine import machine_line

    print(machine_line())
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    tmp = Path(tempfile.mkdtemp(prefix="bench_detect-"))
    cmds = {"plain OpenCV DNN script": [sys.executable, __file__, "--plain-only", str(tmp / "plain")]}
    for v in variants:
        label = "python detect.py " + ("--weights <the shipped .onnx>" if v == "onnx" else " ".join(variant_args(v)))
        cmds[label.strip()] = [sys.executable, str(ROOT / "detect.py"), "--output", str(tmp / v), "--no-progress",
                       "--quiet", *variant_args(v)]
    times: dict[str, list[float]] = {k: [] for k in cmds}
    load = [os.getloadavg()[0]]
    for _ in range(args.repeat):  # interleaved, so a busy machine slows every command alike
        for name, cmd in cmds.items():
            times[name].append(timed(cmd, tmp))
    load.append(os.getloadavg()[0])
    imports = statistics.median(timed([sys.executable, "-c", "import cv2, numpy"], tmp) for _ in range(args.repeat))
    ref = statistics.median(times["plain OpenCV DNN script"])
    print(f"7 sample photos, yolo-fastest-1.1 @320, whole processes, median of {args.repeat} interleaved runs "
          f"(load average {load[0]:.1f} -> {load[1]:.1f} on {os.cpu_count()} cores)")
    print(f"  {'command':<44} {'median s':>9} {'min s':>7} {'x plain':>8}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:<44} {med:9.2f} {min(ts):7.2f} {med / ref:7.2f}x")
    print(f"  (python -c 'import cv2, numpy' alone: {imports:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
