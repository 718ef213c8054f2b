"""``darknet-yolo <tool> [options]``: the one console script, dispatching to each tool's ``main``.

One command rather than one script per tool: the tools' own names (``detect``, ``test``,
``train``, ``info``, ``partial`` ...) are too generic to put on a PATH, and Darknet users know
the shape ``darknet <tool> ...``. A tool's module is imported only when it runs, so
``darknet-yolo info`` loads no training code. ``python -m yolo <tool>`` is the same, and
``python -m yolo.<tool>`` / ``python detect.py`` keep working.
"""
from __future__ import annotations

import importlib
import sys
from typing import Sequence

#: tool name -> (module holding its ``main(argv) -> int``, one line of help)
TOOLS: dict[str, tuple[str, str]] = {
    "detect": ("yolo.cli.detect", "detect objects in images, folders, videos, webcams"),
    "test": ("yolo.cli.test", "COCO mAP (pycocotools) or Darknet's detector map report"),
    "train": ("yolo.cli.train", "train or fine-tune (Darknet .data or COCO json)"),
    "export": ("yolo.cli.export", "write an ONNX model (fp32, or INT8 QDQ)"),
    "info": ("yolo.info", "Darknet's layer table, BFLOPs, parameters"),
    "partial": ("yolo.partial", "Darknet's partial: the first N layers' weights"),
    "anchors": ("yolo.anchors", "Darknet's calc_anchors (k-means, 1 - IoU)"),
    "prune": ("yolo.prune", "channel pruning (network slimming)"),
    "deploy": ("yolo.deploy", "fuse ACNet blocks into plain convolutions"),
    "data": ("yolo.data", "convert a dataset (darknet, coco, yolo, voc) or check it (problems, labels.png)"),
}


def usage() -> str:
    width = max(map(len, TOOLS))
    lines = [f"  {name:<{width}}  {text}" for name, (_, text) in TOOLS.items()]
    return "usage: darknet-yolo <tool> [options]   (darknet-yolo <tool> --help for its options)\n\ntools:\n" + \
        "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    tool, rest = args[0], args[1:]
    if tool not in TOOLS:
        print(f"error: unknown tool '{tool}': one of {', '.join(TOOLS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(TOOLS[tool][0])
    sys.argv[0] = f"darknet-yolo {tool}"
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
