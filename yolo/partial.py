"""Darknet's ``partial``: keep the first N sections' weights (e.g. a backbone file).

    python -m yolo.partial CFG WEIGHTS OUT N

Reads WEIGHTS (only the first N sections' floats are needed, so a full file or an
earlier partial file both do) and writes OUT with header 0.2.5 and ``seen`` reset to 0,
followed by those N sections' floats, as ``darknet partial cfg weights out N`` does
(``darknet53.conv.74`` is ``partial yolov3.cfg yolov3.weights darknet53.conv.74 74`` ...
with Darknet's own cfg). OUT then loads with ``load_darknet_weights(OUT, cutoff=N)``.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Sequence

from .cli.common import ArgumentParser, user_errors
from .errors import YoloError


class PartialError(YoloError):
    """A layer count N that the network does not have."""


def check_cutoff(num_sections: int, n: int) -> None:
    """A clear error unless 1 <= n <= num_sections."""
    if n <= 0:
        raise PartialError(f"N must be a positive number of layers (1..{num_sections}), got {n}")
    if n > num_sections:
        raise PartialError(f"N = {n} is beyond the network: the cfg has {num_sections} layers "
                        f"(0..{num_sections - 1}); N must be 1..{num_sections}")


def partial(cfg: str | Path, weights: str | Path, out: str | Path, n: int) -> int:
    """Write the first ``n`` sections' weights of ``weights`` to ``out`` (seen = 0).

    Returns the number of floats written. Uses the model's own reader and writer.
    """
    from .model import Darknet

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = Darknet(cfg, warn_unused=False)
    check_cutoff(len(model.module_list), n)
    model.load_darknet_weights(weights, cutoff=n)
    model.seen = 0  # Darknet's partial resets the images-seen counter
    model.save_darknet_weights(out, cutoff=n)
    return model.num_weight_floats(cutoff=n)


def get_args_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m yolo.partial",
                       description="Darknet's partial: write the first N layers' weights "
                                   "(header 0.2.5, seen = 0).")
    p.add_argument("cfg", help="Darknet cfg (path, or a name in cfg/)")
    p.add_argument("weights", help="Darknet .weights to read")
    p.add_argument("out", help=".weights file to write")
    p.add_argument("n", type=int, help="number of layers (sections after [net]) to keep")
    return p


@user_errors()
def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    floats = partial(args.cfg, args.weights, args.out, args.n)
    print(f"wrote {args.out}: layers 0..{args.n - 1}, {floats:,} floats, seen = 0")
    return 0


if __name__ == "__main__":
    sys.exit(main())
