"""``python train.py --cfg CFG --data DATA``: train a Darknet-cfg detector.

Hyper-parameters come from the cfg like Darknet ([net] batch/subdivisions, learning_rate,
momentum, decay, burn_in, policy, steps/scales, max_batches, augmentation keys; [yolo]
jitter, thresholds, random, iou_loss ...); command-line options override them and the run
prints the values it uses and where each came from. Under ``torchrun`` the same command
trains with DDP (gloo on CPU, NCCL on CUDA); every rank evaluates its share of the validation set,
rank 0 scores it and writes files. Under torchrun's elastic agent (``--max-restarts``), a restarted
worker group continues from the latest checkpoint (last.pt or a step checkpoint) its run wrote in
``--output``; started again by hand, a run folder is continued only with ``--resume DIR``.
This module parses the command line; ``yolo.trainer`` does the work.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence

from ..checkpoint import latest_checkpoint, load_checkpoint, load_training_checkpoint, run_id
from ..datasets import DataError
from ..hyp import HypError
from ..params import Param, params
from ..trainer import TrainingError, TrainOptions, TrainSetupError, resume_options, train
from .common import ArgumentParser, UserError, increment_dir, parse_device, user_errors


def add_flag(group: Any, param: Param) -> None:
    """The command-line option of a declared hyper-parameter (``yolo.params``): its flag, type and
    help; a list is given comma-separated, a bool as --x / --no-x (or --x alone)."""
    if param.type is bool:
        action: Any = argparse.BooleanOptionalAction if param.negatable else "store_true"
        group.add_argument(param.flag, action=action, default=None, help=param.cli_help())
    else:
        group.add_argument(param.flag, type=str if param.is_list else param.type, help=param.cli_help())


def get_args_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description="Train a Darknet-cfg YOLO detector (hyper-parameters from the cfg; "
                                            "options override them).", argument_default=None)
    p.add_argument("--cfg", help="model cfg (path or name in cfg/)")
    p.add_argument("--data", help="Darknet .data file (train/valid keys) or a COCO instances .json (with --images)")
    p.add_argument("--images", help="image folder of a COCO json --data")
    p.add_argument("--val-data", help="validation set (default: the valid split of --data)")
    p.add_argument("--val-images", help="image folder of a COCO json --val-data")
    p.add_argument("--weights", help="initial weights: Darknet .weights (see --cutoff) or a .pt checkpoint")
    p.add_argument("--cutoff", type=int, help="load only the first N sections of a .weights file "
                                              "(e.g. 74 for darknet53.conv.74)")
    p.add_argument("--epochs", type=int, help="epochs to train (default: enough for [net] max_batches)")
    p.add_argument("--max-steps", type=int, help="stop after this many optimiser steps (smoke runs)")
    p.add_argument("--batch-size", type=int, help="images per forward pass (default: [net] batch/subdivisions)")
    p.add_argument("--img-size", type=int, help="training and validation size (default: [net] width)")
    p.add_argument("--device", help="cpu, cuda, cuda:N or N (default cpu)")
    p.add_argument("--workers", type=int, help="data loader processes (0: load in the main process)")
    p.add_argument("--output", help="run folder (default: runs/train/expN)")
    p.add_argument("--resume", help="continue the run of this checkpoint exactly where it stopped (a run folder: "
                                    "its latest, last.pt or a newer step checkpoint)")
    p.add_argument("--freeze", type=int, help="freeze the first N sections (weights and BatchNorm statistics)")
    p.add_argument("--seed", type=int, help="random seed (shuffling, augmentation, multi-scale), default 0")
    p.add_argument("--sync-bn", action="store_true", default=None, help="SyncBatchNorm under DDP")
    g = p.add_argument_group("hyper-parameter overrides (default: the cfg's values)")
    for param in params(flagged=True):
        add_flag(g, param)
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction,
                   help="NHWC memory layout (default on: about 1.3x faster training on CPU)")
    p.add_argument("--eval-interval", type=int, help="evaluate every N epochs (and after the last), default 1")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, help="tqdm bars (default on)")
    p.add_argument("--save-period", type=int, help="a step checkpoint (step-N.pt) every N optimiser steps, "
                                                   "0 for none (default 200): a kill loses at most N steps")
    p.add_argument("--keep", type=int, help="step checkpoints kept, the newest (default 2)")
    return p


def elastic_resume(out: Path) -> str | None:
    """The checkpoint a restarted torchrun worker group continues from: the latest in ``out`` when
    that checkpoint was written by this same torchrun run (its rendezvous id, ``--rdzv-id``); else
    None (a new run, which refuses a folder holding another run). Not ``TORCHELASTIC_RESTART_COUNT``:
    each node's agent counts its own restarts, and one that restarts because another node failed
    sees 0, so its ranks would start over while the others resume (a requeued SLURM job, the
    same id, continues too)."""
    if run_id() is None or not out.is_dir():
        return None
    path = latest_checkpoint(out)
    if path is None:
        return None
    try:
        saved = load_checkpoint(path).get("run_id")
    except Exception:  # unreadable: the new run's checks name it
        return None
    return str(path) if saved == run_id() else None


@user_errors(HypError, TrainSetupError, TrainingError, DataError)
def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    given: dict[str, Any] = {k: v for k, v in vars(args).items() if v is not None}
    ckpt = None
    if not args.resume and args.output:
        args.resume = elastic_resume(Path(args.output))
        if args.resume:
            given["resume"] = args.resume
    if args.resume:
        ckpt, path = load_training_checkpoint(args.resume)
        opts = resume_options(given, ckpt, path)
    else:
        opts = TrainOptions(**given)
    if not opts.cfg or not opts.data:
        raise UserError("--cfg and --data are required (or --resume DIR/last.pt)")
    opts.output = opts.output or str(increment_dir(opts.project))
    train(opts, parse_device(opts.device), ckpt)
    return 0
