"""The status of every cfg of Darknet's own cfg folder, as a markdown table.

    python benchmarks/zoo_status.py                  # everything (~15 min on 2 cores)
    python benchmarks/zoo_status.py --quick          # build, floats, BFLOPs, OpenCV reads it, keys (~1 min)
    python benchmarks/zoo_status.py yolov4.cfg ...   # some cfgs only

Columns: the cfg (relative to ../shared/models/darknet-cfg/zoo), its kind, whether it builds (on the
meta device, at its [net] size), the .weights float count and trainable parameters at that size, the
BFLOPs ``yolo.info`` counts there, the random-weights round trip + ``yolo.partial`` at a small size
(the checks of tests/test_zoo.py, from tests/helpers.py), whether OpenCV's Darknet importer reads the
cfg and, where it does, the largest section-by-section difference from it (maps relative to their
largest value, heads' boxes / scores absolute; each section alone on OpenCV's inputs, and in brackets
our whole forward chained from the input, where a deep random net amplifies rounding), the keys no
block reads, and notes (the warnings the build gave, the reason a cfg is refused or not compared).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import torch  # noqa: E402
from test_zoo import HEAD_ATOL, LAYER_RTOL, OPENCV_DIFFERS, XFAIL  # noqa: E402

from yolo import Darknet  # noqa: E402
from yolo.cfg import UnusedKeyWarning  # noqa: E402
from yolo.errors import YoloError  # noqa: E402
from yolo.info import total_bflops  # noqa: E402
from yolo.machine import machine_line  # noqa: E402

from helpers import (  # noqa: E402
    ZOO,
    ZOO_CFGS,
    opencv_parity,
    weights_round_trip,
    zoo_kind,
    zoo_small_cfg,
)

COLUMNS = ["cfg", "kind", "builds", "floats", "params", "BFLOPs", "weights round trip", "OpenCV", "unused keys",
           "notes"]


def short(text: str, limit: int = 110) -> str:
    """One line, the zoo folder's path dropped, pipes escaped, at most ``limit`` characters."""
    line = str(text).strip().splitlines()[0] if str(text).strip() else ""
    line = line.replace(str(ZOO) + "/", "").replace("|", "\\|")
    return line if len(line) <= limit else line[:limit - 3] + "..."


def opencv_reads(path: Path) -> tuple[bool, str]:
    import cv2

    try:
        cv2.dnn.readNetFromDarknet(str(path))
        return True, ""
    except cv2.error as e:
        return False, short(str(e).strip().splitlines()[-1].split("error: ")[-1].split(" in function")[0], 70)


def status(name: str, quick: bool, tmp: Path) -> dict[str, str]:
    kind = zoo_kind(name)
    row = dict.fromkeys(COLUMNS, "")
    row.update(cfg=name, kind=kind)
    notes: list[str] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with torch.device("meta"):
                model = Darknet(ZOO / name)
    except YoloError as e:
        row["builds"] = "refused" if kind == "text" or name == "yolo9000.cfg" else "**no**"
        notes.append(short(e))
        model = None
    if model is not None:
        row["builds"] = "yes"
        row["floats"] = f"{model.num_weight_floats():,}"
        row["params"] = f"{sum(p.numel() for p in model.parameters()):,}"
        try:
            row["BFLOPs"] = f"{total_bflops(model):.3f}"
        except Exception as e:  # noqa: BLE001 (the table reports it)
            row["BFLOPs"] = "**error**"
            notes.append(f"yolo.info: {short(e, 80)}")
        unused = sorted({str(w.message).split("key '")[1].split("'")[0] for w in caught
                         if issubclass(w.category, UnusedKeyWarning) and "key '" in str(w.message)})
        row["unused keys"] = ", ".join(unused) if unused else "0"
        others: dict[str, list[str]] = {}
        for w in caught:
            msg = str(w.message)
            if not issubclass(w.category, UnusedKeyWarning) and "no [yolo] section" not in msg:
                others.setdefault(w.category.__name__, []).append(msg)
        for category, msgs in others.items():  # the first of each kind, and how many more
            more = f" (+{len(msgs) - 1} more)" if len(msgs) > 1 else ""
            notes.append(f"{category}: {short(msgs[0], 90)}{more}")
        if not quick:
            try:
                cfg, size = zoo_small_cfg(name, tmp / "small", model.max_stride, model.net.width)
                r = weights_round_trip(cfg, tmp)
                ok = r.same_bytes and r.seen == 123_456_789_012 and r.partial_is_prefix \
                    and r.partial_floats == r.cut_floats
                row["weights round trip"] = (f"byte-exact at {size}, partial {r.cut}" if ok
                                             else f"**differs** at {size}")
                if r.floats != model.num_weight_floats():
                    notes.append(f"{r.floats:,} floats at {size} ([connected]/[local] follow the size)")
            except Exception as e:  # noqa: BLE001
                row["weights round trip"] = "**error**"
                notes.append(f"round trip: {short(e, 90)}")
    reads, why = opencv_reads(ZOO / name)
    row["OpenCV"] = "reads" if reads else f"no ({why})"
    if reads and model is not None and name in OPENCV_DIFFERS:
        row["OpenCV"] = "reads, not compared"
        notes.append(OPENCV_DIFFERS[name])
    elif reads and model is not None and not quick:
        try:
            _, size = zoo_small_cfg(name, tmp / "size", model.max_stride, model.net.width)
            res = opencv_parity(ZOO / name, tmp / "opencv", size)
            worst = max((e for _, _, e in res["layers"]), default=0.0)
            heads = max((e for _, e in res["heads"]), default=0.0)
            chained = max((e for _, _, e in res["chained"]), default=0.0)
            ok = not res["missing"] and worst <= LAYER_RTOL and heads <= HEAD_ATOL
            row["OpenCV"] = (f"{'matches' if ok else '**differs**'} at {size}: layers {worst:.0e}"
                             + (f", heads {heads:.0e}" if res["heads"] else "") + f" (chained {chained:.0e})")
            if res["missing"]:
                notes.append(f"not compared: {short(str(res['missing'][:3]), 90)}")
        except Exception as e:  # noqa: BLE001
            row["OpenCV"] = "reads, **error**"
            notes.append(f"OpenCV: {short(e, 90)}")
    for key, reason in XFAIL.items():
        if key == name or key.startswith(f"{name}::"):
            notes.append(f"xfail{key[len(name):]}: {reason}")
    row["notes"] = "; ".join(dict.fromkeys(notes))
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("cfgs", nargs="*", help="cfgs (relative to the zoo folder); default: all")
    p.add_argument("--quick", action="store_true", help="skip the round trip and the OpenCV comparison")
    args = p.parse_args(argv)
    if not ZOO.is_dir():
        print(f"{ZOO} not found (the project's ../shared folder)", file=sys.stderr)
        return 2
    torch.set_num_threads(2)
    names = args.cfgs or list(ZOO_CFGS)
    start = time.time()
    print(f"{machine_line()}\n")
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    with tempfile.TemporaryDirectory() as d:
        for name in names:
            row = status(name, args.quick, Path(d))
            print("| " + " | ".join(row[c] for c in COLUMNS) + " |", flush=True)
    print(f"\n{len(names)} cfgs in {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
