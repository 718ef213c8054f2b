"""One table over every engine x precision available here, for one model::

    python -m yolo.benchmark --cfg cfg/yolo-fastest-1.1.cfg --weights weights/yolo-fastest-1.1.weights \\
        [--data coco128] [--img-size 320] [--batch 8] [--repeats 20] [--threads N] [--calib DIR] [--out DIR]

Columns: load (load / compile / export time, s), forward ms at batch 1 (median of interleaved
runs: each round runs every engine once, so load changes on a busy machine hit all alike),
images/s at ``--batch``, the ratio to OpenCV DNN measured in the same run, accuracy (COCO mAP
on ``--data``, else the max |difference| to torch fp32 on one random input: boxes / input size
and scores) and memory (RSS growth of this process while the engine is loaded and runs its first
forward, from ``/proc/self/statm``: a lower bound where memory freed before is reused). The header
is :func:`yolo.machine.machine_line`. The fastest entry that keeps accuracy is marked ``*``;
the table also goes to ``benchmark.json`` and ``benchmark.png`` in ``--out``, and to the per-machine
cache that ``--backend auto`` reads (:mod:`yolo.backends.auto`).

The ``.onnx`` that onnxruntime and OpenVINO run is exported into the cache folder (fixed size,
batch dynamic), so ``auto`` can use it later. INT8 entries need ``--calib`` (calibration images).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

COLUMNS = ("engine", "precision", "load_s", "forward_ms", "images_per_s", "ratio_to_opencv", "accuracy",
           "accuracy_kind", "ok", "rss_mb", "file")


def rss_mb() -> float:
    """This process's resident memory (MB), from /proc/self/statm (0 where there is none)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def candidates(cfg: Path, weights: Path, hw: tuple[int, int], calib: str | None, workdir: Path,
               log: Any) -> list[tuple[str, str, Any]]:
    """(engine, precision, a function that loads it and returns (engine, file)) for everything here."""
    import importlib.util

    from .backends import load_backend
    from .backends.opencv import opencv_problem
    from .cfg import parse_cfg

    out: list[tuple[str, str, Any]] = [("torch", "fp32", lambda: (load_backend(cfg, weights, "torch"), str(weights)))]
    from .backends.pytorch import cpu_bf16_problem

    if cpu_bf16_problem() is None:
        out.append(("torch", "bf16", lambda: (load_backend(cfg, weights, "torch", "bf16"), str(weights))))
    else:
        log(f"torch bf16 skipped: {cpu_bf16_problem()}")
    if opencv_problem(parse_cfg(cfg)) is None:
        out.append(("opencv", "fp32", lambda: (load_backend(cfg, weights, "opencv"), str(weights))))
    else:
        log(f"opencv skipped: {opencv_problem(parse_cfg(cfg))}")
    onnx_files: dict[str, Path] = {}

    def onnx_file(precision: str) -> Path:
        if precision not in onnx_files:
            from .backends.auto import model_key
            from .export import export_onnx, quantize_int8
            from .model import Darknet

            key = model_key(cfg.read_text(), hw)
            fp32 = workdir / f"{cfg.stem}-{hw[0]}x{hw[1]}-{key[:8]}.onnx"
            if "fp32" not in onnx_files:
                if not fp32.exists():
                    model = Darknet(cfg, warn_unused=False).load_darknet_weights(weights).eval()
                    export_onnx(model, fp32, img_size=hw, dynamic=False, batch=1, check=False)
                onnx_files["fp32"] = fp32
            if precision == "int8":
                int8 = fp32.with_name(fp32.stem + "-int8.onnx")
                if not int8.exists():
                    quantize_int8(fp32, int8, calib)
                onnx_files["int8"] = int8
        return onnx_files[precision]

    for engine, module in (("onnxruntime", "onnxruntime"), ("openvino", "openvino")):
        if importlib.util.find_spec(module) is None:
            log(f"{engine} skipped: not installed")
            continue
        for precision in ("fp32", "int8") if calib else ("fp32",):
            def load(engine: str = engine, precision: str = precision) -> tuple[Any, str]:
                path = onnx_file(precision)
                return load_backend(None, path, engine, precision), str(path)

            out.append((engine, precision, load))
    return out


def forward_once(engine: Any, x: np.ndarray) -> tuple[float, np.ndarray]:
    """One forward: (seconds, output as float32 numpy)."""
    arg: Any = x
    if engine.name in ("torch", "onnxruntime"):  # they take tensors until issue 19's numpy contract lands
        import torch

        arg = torch.from_numpy(x)
    t = time.perf_counter()
    out = engine(arg)
    dt = time.perf_counter() - t
    return dt, np.asarray(out.numpy() if hasattr(out, "numpy") else out, dtype=np.float32)


def max_difference(got: np.ndarray, ref: np.ndarray, hw: tuple[int, int]) -> float:
    scale = np.array([hw[1], hw[0]] * 2, np.float32)
    boxes = np.abs(got[..., :4] / scale - ref[..., :4] / scale).max()
    return float(max(boxes, np.abs(got[..., 4:] - ref[..., 4:]).max()))


def run_benchmark(cfg: str | Path, weights: str | Path, data: str | None = None,
                  img_size: int | Sequence[int] | None = None, batch: int = 8, repeats: int = 20,
                  threads: int | None = None, calib: str | None = None, out: str | Path | None = None,
                  write_cache: bool = True, log: Any = None) -> dict[str, Any]:
    """Measure, pick and write: returns the table (``header``, ``rows``, ``best``, ``key``)."""
    from . import machine
    from .backends.auto import ACCURACY_LIMITS, MAP_LIMITS, cache_dir, choose_engine, model_key
    from .backends.auto import write_cache as cache_write
    from .backends.threads import engine_threads, set_threads
    from .cfg import resolve_cfg, resolve_path
    from .weights_file import WEIGHTS_DIR

    log = log or (lambda m: print(m, file=sys.stderr))
    cfg, weights = resolve_cfg(cfg), resolve_path(weights, WEIGHTS_DIR, "weights file")
    set_threads(threads or os.cpu_count() or 1)
    from .cfg import parse_cfg

    net = parse_cfg(cfg)[0]
    if img_size is None:
        hw = (net.int("height", 416), net.int("width", 416))
    elif isinstance(img_size, int):
        hw = (img_size, img_size)
    else:
        hw = (int(img_size[0]), int(img_size[-1]))
    workdir = cache_dir() / "onnx"
    workdir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    x1 = rng.random((1, 3, *hw), dtype=np.float32)
    xb = rng.random((batch, 3, *hw), dtype=np.float32)
    loaded: list[dict[str, Any]] = []
    for engine_name, precision, load in candidates(cfg, weights, hw, calib, workdir, log):
        before = rss_mb()
        t = time.perf_counter()
        try:
            engine, file = load()
            load_s = time.perf_counter() - t
            forward_once(engine, x1)  # warm-up (first-run allocations, lazy compilation)
        except Exception as e:  # noqa: BLE001 (a missing engine must not stop the table)
            log(f"{engine_name} {precision} skipped: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            continue
        loaded.append({"engine": engine_name, "precision": precision, "load_s": load_s, "file": file,
                       "rss_mb": rss_mb() - before, "obj": engine, "times": []})
        log(f"loaded {engine_name} {precision} in {load_s:.2f} s")
    ref = next(r for r in loaded if r["engine"] == "torch" and r["precision"] == "fp32")
    ref_out = forward_once(ref["obj"], x1)[1]
    for _ in range(repeats):  # interleaved: one forward of each engine per round
        for r in loaded:
            r["times"].append(forward_once(r["obj"], x1)[0])
    for r in loaded:
        r["forward_ms"] = 1000 * statistics.median(r["times"])
        bt = [forward_once(r["obj"], xb)[0] for _ in range(max(2, repeats // 5))]
        r["images_per_s"] = batch / statistics.median(bt)
        if data:
            from .datasets import load_dataset
            from .evaluate import evaluate

            metrics = evaluate(r["obj"], load_dataset(data), img_size=hw, batch_size=batch, verbose=False,
                               workers=0)
            r["accuracy"], r["accuracy_kind"] = float(metrics["map"]), "mAP"
        else:
            r["accuracy"] = max_difference(forward_once(r["obj"], x1)[1], ref_out, hw)
            r["accuracy_kind"] = "max |diff| to torch fp32"
    ref_map = ref["accuracy"]
    for r in loaded:
        if data:
            r["ok"] = bool(ref_map - r["accuracy"] <= MAP_LIMITS[r["precision"]])
        else:
            r["ok"] = bool(r["accuracy"] <= ACCURACY_LIMITS[r["precision"]])
    cv = next((r for r in loaded if r["engine"] == "opencv"), None)
    rows = []
    for r in loaded:
        row = {k: r.get(k) for k in COLUMNS}
        row["ratio_to_opencv"] = r["forward_ms"] / cv["forward_ms"] if cv else None
        rows.append(row)
    key = model_key(cfg.read_text(), hw)
    table = {"header": machine.machine_line(engine_threads()), "cfg": str(cfg), "weights": str(weights),
             "img_size": list(hw), "batch": batch, "repeats": repeats, "threads": engine_threads(),
             "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
             "memory": "RSS growth while loading + first forward (/proc/self/statm)", "rows": rows, "key": key}
    engine, precision, why = choose_engine({key: table}, key)
    table["best"] = {"engine": engine, "precision": precision, "why": why}
    if write_cache:
        cache_write(key, {k: table[k] for k in ("header", "cfg", "img_size", "rows", "best")})
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "benchmark.json").write_text(json.dumps(table, indent=1))
        plot(table, out / "benchmark.png")
    return table


def format_table(table: dict[str, Any]) -> str:
    best = table["best"]
    lines = [table["header"], f"{Path(table['cfg']).name} @ {table['img_size'][0]}x{table['img_size'][1]}, "
             f"batch {table['batch']}, {table['repeats']} interleaved rounds, load average "
             f"{', '.join(f'{v:.2f}' for v in table['load_average'] or [])}",
             f"{'':1} {'engine':<12} {'prec':<5} {'load s':>7} {'fwd ms':>8} {'img/s':>7} {'/opencv':>8} "
             f"{'accuracy':>10} {'rss MB':>7}"]
    for r in table["rows"]:
        mark = "*" if (r["engine"], r["precision"]) == (best["engine"], best["precision"]) else " "
        ratio = f"{r['ratio_to_opencv']:.2f}x" if r["ratio_to_opencv"] is not None else "-"
        acc = f"{r['accuracy']:.4f}" if r["accuracy_kind"] == "mAP" else f"{r['accuracy']:.1e}"
        lines.append(f"{mark} {r['engine']:<12} {r['precision']:<5} {r['load_s']:>7.2f} {r['forward_ms']:>8.2f} "
                     f"{r['images_per_s']:>7.1f} {ratio:>8} {acc + ('' if r['ok'] else '!'):>10} {r['rss_mb']:>7.0f}")
    kind = table["rows"][0]["accuracy_kind"]
    lines.append(f"* {best['engine']} {best['precision']}: {best['why']}  (accuracy: {kind}; ! = not kept)")
    return "\n".join(lines)


def plot(table: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = table["rows"]
    best = table["best"]
    labels = [f"{r['engine']}\n{r['precision']}" for r in rows]
    ms = [r["forward_ms"] for r in rows]
    colors = ["tab:green" if (r["engine"], r["precision"]) == (best["engine"], best["precision"])
              else ("tab:blue" if r["ok"] else "tab:gray") for r in rows]
    width = max(6.5, 1.3 * len(rows) + 1)
    fig, ax = plt.subplots(figsize=(width, 3.8))
    bars = ax.bar(labels, ms, color=colors)
    for bar, r in zip(bars, rows):
        text = f"{r['forward_ms']:.1f}"
        if r["ratio_to_opencv"] is not None:
            text += f"\n{r['ratio_to_opencv']:.2f}x"
        ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                    fontsize=8)
    ax.set_ylabel("forward ms, batch 1 (median)")
    ax.set_ylim(0, max(ms) * 1.3)
    h, w = table["img_size"]
    ax.set_title(f"{Path(table['cfg']).name} @ {h}x{w}, batch 1\ngreen: fastest that keeps accuracy; "
                 "grey: accuracy not kept; under each figure its ratio to OpenCV DNN", fontsize=8)
    import textwrap

    fig.text(0.01, 0.01, "\n".join(textwrap.wrap(table["header"], int(width * 20))), fontsize=5)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m yolo.benchmark", description=__doc__.split("\n\n")[0])
    p.add_argument("--cfg", required=True)
    p.add_argument("--weights", required=True, help="the model's Darknet .weights")
    p.add_argument("--data", help="a dataset (as test.py --data): accuracy is its COCO mAP")
    p.add_argument("--img-size", type=int, nargs="+", help="input size: one number, or height width")
    p.add_argument("--batch", type=int, default=8, help="batch size of the images/s column")
    p.add_argument("--repeats", type=int, default=20, help="interleaved rounds of batch-1 forwards")
    p.add_argument("--threads", type=int, help="CPU threads of every engine (default: all cores)")
    p.add_argument("--calib", help="calibration images: adds the INT8 entries")
    p.add_argument("--out", default="runs/benchmark", help="folder of benchmark.json and benchmark.png")
    p.add_argument("--no-cache", action="store_true", help="do not record the result for --backend auto")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    import warnings

    args = get_args_parser().parse_args(argv)
    from .errors import YoloError

    if args.batch < 1 or args.repeats < 1 or (args.threads is not None and args.threads < 1):
        print("error: --batch, --repeats and --threads must be positive", file=sys.stderr)
        return 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            table = run_benchmark(args.cfg, args.weights, args.data, args.img_size, args.batch, args.repeats,
                                  args.threads, args.calib, args.out, write_cache=not args.no_cache)
        except (YoloError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    print(format_table(table))
    print(f"wrote {Path(args.out) / 'benchmark.json'} and {Path(args.out) / 'benchmark.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
