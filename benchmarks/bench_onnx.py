"""Forward time of the ONNX engines against OpenCV DNN, measured side by side in one run.

Batch 1, 2 CPU threads. For each model: OpenCV DNN (``cv2.dnn.readNetFromDarknet``), our torch
engine (fp32, BatchNorm fused, channels-last: what ``TorchBackend`` runs), onnxruntime fp32 and
onnxruntime INT8 (``python -m yolo.export --int8`` defaults: QDQ, per-channel weights, percentile
calibration; the first convolution, the heads' last convolutions and the decode stay fp32), each
through its engine's ``__call__`` on the same input. Prints the median ms and the ratio of each
to OpenCV (below 1: faster), with the load average (the machine may be shared). The target
column judges the faster onnxruntime file (fp32 or INT8) against issue 10's ratios.

Random weights (written by us, read by every engine) stand in where no trained file is shipped:
speed does not depend on them. INT8 calibration uses the sample images in data/samples.

    python benchmarks/bench_onnx.py [--repeat 20] [--quick]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from yolo import Darknet  # noqa: E402
from yolo.backends import load_backend  # noqa: E402
from yolo.export import export_onnx, quantize_int8  # noqa: E402
from yolo.machine import machine_line  # noqa: E402

from bench_inference import THREADS, interleaved_ms, load_average, opencv_net, random_weights  # noqa: E402

TARGETS = {"yolo-fastest-1.1": 0.4, "yolov3-tiny": 0.55, "yolov3": 0.4}  # best onnxruntime engine / OpenCV
CALIB = ROOT / "data" / "samples"


def bench(name: str, cfg: str, weights: Path, size: int, folder: Path, repeat: int) -> dict:
    image = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
    x = torch.from_numpy(image)
    net = opencv_net(ROOT / "cfg" / cfg, weights)
    out_names = net.getUnconnectedOutLayersNames()

    def cv_forward():
        net.setInput(image)
        return net.forward(out_names)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = Darknet(cfg).load_darknet_weights(weights)
    fp32 = export_onnx(model, folder / f"{name}.onnx", size, batch=1)
    t0 = time.perf_counter()
    int8 = quantize_int8(fp32, folder / f"{name}-int8.onnx", CALIB, calib_images=4)
    quant_s = time.perf_counter() - t0
    engines = {"torch": load_backend(ROOT / "cfg" / cfg, weights, "torch"),
               "ort": load_backend(None, fp32), "ort_int8": load_backend(None, int8)}
    with torch.inference_mode():
        ref = engines["torch"](x)
        assert torch.allclose(engines["ort"](x), ref, atol=1e-2, rtol=1e-4)
        fns = {"opencv": cv_forward, **{k: (lambda e=e: e(x)) for k, e in engines.items()}}
        result = interleaved_ms(fns, repeat)
    return {"model": f"{name} @ {size}", "name": name, "quant_s": quant_s, **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20, help="timed runs per measurement (median)")
    parser.add_argument("--quick", action="store_true", help="skip yolov3 (the slowest rows)")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)  # the onnxruntime engines take torch.get_num_threads()
    cv2.setNumThreads(THREADS)
    import onnxruntime

    print(machine_line(THREADS))
    print(f"onnxruntime {onnxruntime.get_device()}, batch 1; load average {load_average()} at start")
    rows = [("yolo-fastest-1.1", "yolo-fastest-1.1.cfg", ROOT / "weights" / "yolo-fastest-1.1.weights", 320),
            ("yolov3-tiny", "yolov3-tiny.cfg", None, 416)]
    if not args.quick:
        rows.append(("yolov3", "yolov3.cfg", None, 416))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name, cfg, weights, size in rows:
            weights = weights or random_weights(cfg, folder)
            results.append(bench(name, cfg, weights, size, folder,
                                 args.repeat if name != "yolov3" else max(5, args.repeat // 2)))
    print(f"\n{'forward, median ms':<24}{'opencv':>8}{'torch':>8}{'ort':>8}{'int8':>8}"
          f"{'torch/cv':>10}{'ort/cv':>8}{'int8/cv':>9}{'target':>8}{'quant s':>9}")
    for r in results:
        cv = r["opencv"]
        target = TARGETS[r["name"]]
        ok = "ok" if min(r["ort"], r["ort_int8"]) / cv <= target else "MISSED"
        print(f"{r['model']:<24}{cv:>8.1f}{r['torch']:>8.1f}{r['ort']:>8.1f}{r['ort_int8']:>8.1f}"
              f"{r['torch'] / cv:>10.2f}{r['ort'] / cv:>8.2f}{r['ort_int8'] / cv:>9.2f}"
              f"{'<=' + str(target) + ' ' + ok:>12}{r['quant_s']:>7.0f}")
    print(f"\nload average {load_average()} at end")


if __name__ == "__main__":
    main()
