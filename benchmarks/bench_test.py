"""Wall time of ``python test.py`` on coco128 next to an OpenCV DNN pipeline, interleaved, medians.

The OpenCV pipeline is what one writes with OpenCV alone: ``cv2.dnn.readNetFromDarknet``, then
per image ``imread`` + ``blobFromImage`` (plain resize, as the model was trained) + ``forward``,
score = objectness x class probability, the same per-class NMS op as ours
(``cv2.dnn.NMSBoxesBatched``, IoU 0.45, at most 100 per image), boxes scaled back, and
pycocotools COCOeval. Both run as fresh processes (imports, model load and scoring included), so
the figures are end to end; runs alternate (pipeline, ours, pipeline, ours ...) so that a busy
machine slows both alike, and medians are printed with the ratio ours / pipeline (the issue's
target: <= 0.8x). Speed is printed, never asserted.

    python benchmarks/bench_test.py [--coco128 ../shared/data/coco128] [--repeat 3] [--variants auto,torch]

``--variants``: ``auto`` is ``python test.py`` as the README has it (the default engine);
``opencv`` / ``onnxruntime`` / ``torch`` add ``--backend NAME``; ``onnx`` runs ``--weights`` on the
.onnx shipped beside the default weights.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_detect import variant_args  # the same variants and their flags as bench_detect.py

ROOT = Path(__file__).resolve().parent.parent
CFG = ROOT / "cfg" / "yolo-fastest-1.1.cfg"
WEIGHTS = ROOT / "weights" / "yolo-fastest-1.1.weights"


def opencv_pipeline(coco128: Path, conf: float, out_json: Path) -> None:
    """The reference pipeline (runs in its own process: only cv2, numpy and pycocotools imported)."""
    import contextlib
    import io

    import cv2
    import numpy as np
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    ann = coco128 / "annotations" / "instances_val2017.json"
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann))
    cat_ids = sorted(gt.getCatIds())
    # OpenCV's [yolo] layer zeroes scores below its 'thresh' (default 0.2): lower it to conf
    cfg = out_json.with_suffix(".cfg")
    cfg.write_text(CFG.read_text().replace("[yolo]", f"[yolo]\nthresh={conf}"))
    net = cv2.dnn.readNetFromDarknet(str(cfg), str(WEIGHTS))
    names = net.getUnconnectedOutLayersNames()
    dets = []
    for img_id in sorted(gt.getImgIds()):
        info = gt.loadImgs(img_id)[0]
        img = cv2.imread(str(coco128 / "val2017" / info["file_name"]))
        h0, w0 = img.shape[:2]
        net.setInput(cv2.dnn.blobFromImage(img, 1 / 255.0, (320, 320), swapRB=True, crop=False))
        out = np.concatenate([o.reshape(-1, o.shape[-1]) for o in net.forward(names)])
        scores = out[:, 5:]  # OpenCV's [yolo] layer already multiplies by objectness
        box_i, cls_i = np.nonzero(scores > conf)
        if not len(box_i):
            continue
        xywh = out[box_i, :4] * [w0, h0, w0, h0]
        rects = np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, 2:]], 1).astype(np.float64)
        s = scores[box_i, cls_i].astype(np.float32)
        keep = np.asarray(cv2.dnn.NMSBoxesBatched(rects, s, cls_i.astype(np.int32), conf, 0.45), np.int64).reshape(-1)
        keep = keep[np.argsort(-s[keep], kind="stable")][:100]
        for k in keep:
            x1, y1 = max(rects[k, 0], 0), max(rects[k, 1], 0)
            x2, y2 = min(rects[k, 0] + rects[k, 2], w0), min(rects[k, 1] + rects[k, 3], h0)
            dets.append([img_id, x1, y1, x2 - x1, y2 - y1, s[k], cat_ids[cls_i[k]]])
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, gt.loadRes(np.asarray(dets, np.float64)), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    out_json.write_text(json.dumps({"map": float(ev.stats[0]), "map50": float(ev.stats[1]), "images": 128}))


def timed(cmd: list[str]) -> tuple[float, str]:
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return wall, proc.stdout


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--coco128", type=Path, default=ROOT.parent / "shared" / "data" / "coco128")
    p.add_argument("--conf", type=float, default=0.005, help="score threshold of both (the reference's)")
    p.add_argument("--repeat", type=int, default=3, help="runs of each (interleaved); medians are reported")
    p.add_argument("--workers", type=int, default=None, help="test.py --workers (default: its own)")
    p.add_argument("--variants", default="auto", help="comma-separated: auto, onnx, opencv, onnxruntime, torch")
    p.add_argument("--opencv-only", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.opencv_only:
        opencv_pipeline(args.coco128, args.conf, args.opencv_only)
        return 0
    sys.path.insert(0, str(ROOT))
    from yolo.machine import machine_line

    print(machine_line())
    if not args.coco128.is_dir():
        sys.exit(f"coco128 not found at {args.coco128} (pass --coco128)")
    tmp = Path(tempfile.mkdtemp(prefix="bench_test-"))
    base = [sys.executable, "test.py", "--data", str(args.coco128 / "annotations" / "instances_val2017.json"),
            "--images", str(args.coco128 / "val2017"), "--conf-thres", str(args.conf), "--no-progress"]
    if args.workers is not None:
        base += ["--workers", str(args.workers)]
    cmds = {"pipeline": [sys.executable, __file__, "--coco128", str(args.coco128), "--conf", str(args.conf),
                         "--opencv-only", str(tmp / "pipeline.json")]}
    for v in (v.strip() for v in args.variants.split(",") if v.strip()):
        cmds[v] = [*base, *variant_args(v), "--metrics-json", str(tmp / f"{v}.json")]
    times: dict[str, list[float]] = {k: [] for k in cmds}
    load = [os.getloadavg()[0]]
    for _ in range(args.repeat):  # interleaved, so a busy machine slows every command alike
        for name, cmd in cmds.items():
            times[name].append(timed(cmd)[0])
    load.append(os.getloadavg()[0])
    ref_s = statistics.median(times["pipeline"])
    ref = json.loads((tmp / "pipeline.json").read_text())
    print(f"coco128, yolo-fastest-1.1 @320, conf {args.conf}, whole processes, median of {args.repeat} "
          f"interleaved runs (load average {load[0]:.1f} -> {load[1]:.1f} on {os.cpu_count()} cores)")
    print(f"  {'command':<34} {'median s':>9} {'min s':>7} {'x opencv':>9}  {'mAP':>7} {'mAP@.5':>7}")
    print(f"  {'opencv dnn pipeline':<34} {ref_s:9.2f} {min(times['pipeline']):7.2f} {1:8.2f}x  "
          f"{ref['map']:7.4f} {ref['map50']:7.4f}")
    for name in cmds:
        if name == "pipeline":
            continue
        m = json.loads((tmp / f"{name}.json").read_text())
        med = statistics.median(times[name])
        ms = m["ms_per_image"]
        label = "test.py " + ("--weights <the shipped .onnx>" if name == "onnx" else " ".join(variant_args(name)))
        print(f"  {label.strip():<34} {med:9.2f} {min(times[name]):7.2f} {med / ref_s:8.2f}x  {m['map']:7.4f} "
              f"{m['map50']:7.4f}   ({ms['preprocess']:.1f} / {ms['inference']:.1f} / {ms['nms']:.1f} ms per image "
              f"pre / infer / NMS; {m.get('engine', '?').split(' (auto')[0]})")
    imports = {name: statistics.median(timed([sys.executable, "-c", code])[0] for _ in range(args.repeat))
               for name, code in (("opencv", "import cv2, numpy, pycocotools.coco"),
                                  ("ours", "import yolo.cli.test, yolo.evaluate, yolo.backends.ort"))}
    print(f"  interpreter + imports: opencv pipeline {imports['opencv']:.2f} s, test.py {imports['ours']:.2f} s "
          "(before the engine's own)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
