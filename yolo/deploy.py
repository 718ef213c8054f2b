"""Deploy-time re-parameterisation: training-time cfg + weights -> plain inference cfg + weights.

A block that has a simpler inference form defines ``deploy() -> (block, key_edits)``: the
replacement block (computing the same function) and the edits that turn its section's text
into the matching cfg (``{key: new value}``, ``None`` deletes the key). ``Darknet.deploy()``
swaps the blocks; this module knows no block type: it edits those sections' lines in place
(every other line of the cfg, comments included, is kept) and writes the files, and the
ordinary weights writer does the rest, since the replacement blocks declare their own
``weight_units()``.

    python -m yolo.deploy --cfg IN.cfg --weights IN.weights --out-cfg OUT.cfg --out-weights OUT.weights
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from .cfg import ConfigError
from .cfg_edit import KeyEdits, edit_cfg_text  # noqa: F401  (re-exported: prune, anchors, tests)


def deploy_files(cfg: str | Path, weights: str | Path | None, out_cfg: str | Path,
                 out_weights: str | Path) -> int:
    """Read a training-time model, write its deployed cfg + weights; returns sections changed.

    The written pair is then read back as an ordinary model, so a mismatch fails here.
    """
    from .model import Darknet

    model = Darknet(cfg)
    if weights is not None:
        model.load_darknet_weights(weights)
    model.deploy()
    out_cfg, out_weights = Path(out_cfg), Path(out_weights)
    out_cfg.write_text(model.cfg_text)
    model.save_darknet_weights(out_weights)
    Darknet(out_cfg, warn_unused=False).load_darknet_weights(out_weights)  # strict read-back
    return len(model.deployed_sections)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m yolo.deploy",
        description="Fuse ACNet blocks (asymmetric=1) into plain convolutions: writes an ordinary "
                    "Darknet cfg + weights with the same outputs.")
    p.add_argument("--cfg", required=True, help="training-time cfg")
    p.add_argument("--weights", help="its Darknet .weights (omit to deploy a random init, for tests)")
    p.add_argument("--out-cfg", required=True, help="deployed cfg to write")
    p.add_argument("--out-weights", required=True, help="deployed .weights to write")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        n = deploy_files(args.cfg, args.weights, args.out_cfg, args.out_weights)
    except (ConfigError, FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"deployed {n} section(s): wrote {args.out_cfg} and {args.out_weights}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
