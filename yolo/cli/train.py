"""``python train.py --cfg CFG --data DATA``: train a Darknet-cfg detector.

Hyper-parameters come from the cfg like Darknet ([net] batch/subdivisions, learning_rate,
momentum, decay, burn_in, policy, steps/scales, max_batches, augmentation keys; [yolo]
jitter, thresholds, random, iou_loss ...); command-line options override them and the run
prints the values it uses and where each came from. Under ``torchrun`` the same command
trains with DDP (gloo on CPU, NCCL on CUDA); only rank 0 evaluates and writes files.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ..augment import AugmentConfig
from ..loaders import TrainDataset, collate
from ..checkpoint import CheckpointError, check_same_cfg, load_checkpoint, load_weights, save_checkpoint
from ..engine import (SUPPORTED_POLICIES, Hyp, ModelEMA, SkipSampler, TrainState, append_results, barrier,
                      build_optimizer, cleanup_distributed, freeze, init_head_biases, init_distributed, multiscale_range,
                      read_results, set_rng_state, train_one_epoch, training_state, unwrap)
from ..model import Darknet
from ..plots import plot_results
from .common import UserError, increment_dir, parse_device, user_errors

#: defaults of the options that have one (None in the parser, so that explicit options are known)
DEFAULTS: dict[str, Any] = {"seed": 0, "freeze": 0, "workers": min(4, os.cpu_count() or 1), "device": "cpu",
                            "sync_bn": False, "nesterov": False, "ema_decay": 0.9999, "eval_interval": 1,
                            "progress": True, "project": "runs/train", "channels_last": True}
#: options that may differ when resuming (they do not change what is computed)
RESUME_MAY_CHANGE = {"resume", "epochs", "device", "workers", "progress", "max_steps", "eval_interval",
                     "channels_last"}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train a Darknet-cfg YOLO detector (hyper-parameters from the cfg; "
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
    p.add_argument("--batch", type=int, help="images per optimiser step, gradients accumulated "
                                             "(default: [net] batch)")
    p.add_argument("--img-size", type=int, help="training and validation size (default: [net] width)")
    p.add_argument("--device", help="cpu, cuda, cuda:N or N (default cpu)")
    p.add_argument("--workers", type=int, help="data loader processes (0: load in the main process)")
    p.add_argument("--output", help="run folder (default: runs/train/expN)")
    p.add_argument("--resume", help="continue the run of this last.pt exactly where it stopped")
    p.add_argument("--freeze", type=int, help="freeze the first N sections (weights and BatchNorm statistics)")
    p.add_argument("--seed", type=int, help="random seed (shuffling, augmentation, multi-scale), default 0")
    p.add_argument("--sync-bn", action="store_true", default=None, help="SyncBatchNorm under DDP")
    g = p.add_argument_group("hyper-parameter overrides (default: the cfg's values)")
    g.add_argument("--lr", type=float, help="[net] learning_rate")
    g.add_argument("--momentum", type=float, help="[net] momentum")
    g.add_argument("--decay", type=float, help="[net] decay (weight decay of conv weights)")
    g.add_argument("--burn-in", type=int, help="[net] burn_in, warm-up steps (lr * (i/burn_in)^power); "
                                               "default: the cfg's, compressed to the run's length")
    g.add_argument("--steps", help="[net] steps, comma-separated optimiser steps (default: the cfg's, "
                                   "compressed to the run's length)")
    g.add_argument("--scales", help="[net] scales, comma-separated")
    g.add_argument("--nesterov", action="store_true", default=None, help="Nesterov momentum")
    g.add_argument("--jitter", type=float, help="[yolo] jitter (random crop/scale/translate)")
    g.add_argument("--hue", type=float, help="[net] hue")
    g.add_argument("--saturation", type=float, help="[net] saturation")
    g.add_argument("--exposure", type=float, help="[net] exposure")
    g.add_argument("--angle", type=float, help="[net] angle (rotation, degrees)")
    g.add_argument("--mosaic", action=argparse.BooleanOptionalAction, help="[net] mosaic")
    g.add_argument("--flip", action=argparse.BooleanOptionalAction, help="[net] flip")
    g.add_argument("--multiscale", action=argparse.BooleanOptionalAction,
                   help="[yolo] random: a new input size every 10 steps (range scaled to --img-size)")
    g.add_argument("--augment", action=argparse.BooleanOptionalAction,
                   help="all augmentation (default on); --no-augment trains on plain resized images")
    g.add_argument("--amp", action=argparse.BooleanOptionalAction, help="mixed precision (default: on CUDA)")
    g.add_argument("--ema-decay", type=float, help="EMA decay (default 0.9999, ramped up)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction,
                   help="NHWC memory layout (default on: about 1.3x faster training on CPU)")
    p.add_argument("--eval-interval", type=int, help="evaluate every N epochs (and after the last), default 1")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, help="tqdm bars (default on)")
    return p


def _ints(text: str, what: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{what}: expected comma-separated integers, got '{text}'") from None


def _floats(text: str, what: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{what}: expected comma-separated numbers, got '{text}'") from None


def _resume_args(args: argparse.Namespace) -> tuple[argparse.Namespace, dict[str, Any], Path]:
    """The saved run's arguments, with the options that may change taken from the command line."""
    path = Path(args.resume)
    if path.is_dir():
        path = path / "last.pt"
    ckpt = load_checkpoint(path)
    if "optimizer" not in ckpt or "args" not in ckpt:
        raise CheckpointError(f"{path}: not a training checkpoint (no optimiser state); use --weights to "
                              f"start a new run from it")
    saved = dict(ckpt["args"])
    explicit = {k: v for k, v in vars(args).items() if v is not None}
    if "cfg" in explicit:
        cfg_text = Darknet(explicit["cfg"], warn_unused=False).cfg_text
        check_same_cfg(ckpt, cfg_text, path, explicit["cfg"])
    changed = sorted(k for k, v in explicit.items()
                     if k not in RESUME_MAY_CHANGE | {"cfg", "output"} and saved.get(k) != v)
    if changed:
        raise UserError(f"--resume continues a run with its own settings; these options differ from the "
                        f"saved run: {', '.join('--' + k.replace('_', '-') for k in changed)}")
    merged = dict(saved)
    merged.update({k: v for k, v in explicit.items() if k in RESUME_MAY_CHANGE})
    merged["resume"] = str(path)
    merged["output"] = str(path.parent)
    cfg = Path(merged["cfg"])
    if not cfg.exists() or "cfg" not in explicit:
        copy = path.parent / ckpt.get("cfg_name", "model.cfg")
        if not cfg.exists() and copy.exists():
            merged["cfg"] = str(copy)
    return argparse.Namespace(**merged), ckpt, path


def _load_data(args: argparse.Namespace) -> tuple[Any, Any]:
    from ..datasets import DataError, load_dataset

    try:
        train = load_dataset(args.data, args.images, split="train")
        if args.val_data:
            val = load_dataset(args.val_data, args.val_images, split="valid")
        else:
            val = load_dataset(args.data, args.images, split="valid")
    except DataError as e:
        raise UserError(str(e)) from None
    if not train.records:
        raise UserError(f"{train.source}: no training images")
    return train, val


def _hyp_table(rows: list[tuple[str, Any, str]]) -> str:
    return "\n".join(f"  {k:<16}{v!s:<28} {src}".rstrip() for k, v, src in rows)


@user_errors
def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    ckpt: dict[str, Any] | None = None
    if args.resume:
        args, ckpt, _ = _resume_args(args)
    for k, v in DEFAULTS.items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    if not args.cfg or not args.data:
        raise UserError("--cfg and --data are required (or --resume DIR/last.pt)")
    return run(args, ckpt)


def run(args: argparse.Namespace, ckpt: dict[str, Any] | None) -> int:
    """The training run behind ``main`` (arguments complete, resume checkpoint loaded)."""
    device = parse_device(args.device)
    rank, world, local = init_distributed(device)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    main_rank = rank == 0
    say = print if main_rank else (lambda *a, **k: None)
    try:
        return _train(args, ckpt, device, rank, world, main_rank, say)
    finally:
        cleanup_distributed()


def _train(args: argparse.Namespace, ckpt: dict[str, Any] | None, device: torch.device, rank: int, world: int,
           main_rank: bool, say: Any) -> int:
    torch.manual_seed(args.seed)
    model = Darknet(args.cfg)
    if ckpt is not None:
        check_same_cfg(ckpt, model.cfg_text, args.resume, model.cfg_path.name)
    elif args.weights:
        load_weights(model, args.weights, cutoff=args.cutoff)
        say(f"weights: {args.weights}" + (f" (first {args.cutoff} sections)" if args.cutoff else ""))
    else:
        init_head_biases(model)
    net = model.net
    for layer in model.yolo_layers:
        if layer.new_coords:
            raise UserError(f"{layer.where}: new_coords=1 is not supported by the trainer")
    if net.policy not in SUPPORTED_POLICIES:
        raise UserError(f"{model.cfg_path}: policy={net.policy} is not supported by the trainer "
                        f"({', '.join(SUPPORTED_POLICIES)})")

    train_info, val_info = _load_data(args)
    names = train_info.names
    if len(names) != model.num_classes:
        raise UserError(f"{train_info.source}: {len(names)} classes but {model.cfg_path.name} has "
                        f"classes={model.num_classes} in its [yolo] sections")
    if len(val_info.names) != len(names):
        raise UserError(f"{val_info.source}: {len(val_info.names)} classes, the training set has {len(names)}")
    for info in (train_info, val_info):
        if info.problems:
            say(f"{info.source}: skipped while loading: {info.problems.summary()}")

    # --- hyper-parameters: cfg, then overrides -------------------------------------------------
    rows: list[tuple[str, Any, str]] = []
    if ckpt is not None:
        hyp = Hyp(**ckpt["hyp"])
    else:
        hyp = Hyp.from_net(net)
    img_size = args.img_size or net.width
    if img_size % model.max_stride:
        raise UserError(f"--img-size {img_size} must be a multiple of the network stride {model.max_stride}")
    if args.batch is not None:
        hyp.batch = args.batch
    minibatch = args.batch_size or max(1, hyp.batch // hyp.subdivisions)
    if minibatch < 1 or hyp.batch < 1:
        raise UserError("--batch and --batch-size must be positive")
    accumulate = max(1, round(hyp.batch / (minibatch * world)))
    per_rank = math.ceil(len(train_info.records) / world)
    steps_per_epoch = math.ceil(math.ceil(per_rank / minibatch) / accumulate)
    epochs_given = args.epochs is not None
    if not epochs_given:
        if not hyp.max_batches:
            raise UserError(f"{model.cfg_path.name} has no max_batches: give --epochs")
        args.epochs = math.ceil(hyp.max_batches / steps_per_epoch)
    total_steps = args.epochs * steps_per_epoch
    if hyp.max_batches and total_steps > hyp.max_batches and not epochs_given:
        total_steps = hyp.max_batches
    if args.max_steps is not None:
        total_steps = min(total_steps, args.max_steps)
    notes: list[str] = []
    if ckpt is None:
        cfg_burn, cfg_steps = hyp.burn_in, list(hyp.steps)
        notes = hyp.fit_to_run(total_steps)
        if args.lr is not None:
            hyp.learning_rate = args.lr
        if args.momentum is not None:
            hyp.momentum = args.momentum
        if args.decay is not None:
            hyp.decay = args.decay
        if args.burn_in is not None:
            hyp.burn_in = args.burn_in
        if args.steps is not None:
            hyp.steps = _ints(args.steps, "--steps")
        if args.scales is not None:
            hyp.scales = _floats(args.scales, "--scales")
        if hyp.policy == "steps" and len(hyp.steps) != len(hyp.scales):
            raise UserError(f"{len(hyp.steps)} steps but {len(hyp.scales)} scales")
        hyp.nesterov = bool(args.nesterov)
        src = lambda opt, cfg_key: "command line" if getattr(args, opt) is not None else f"cfg {cfg_key}"  # noqa: E731
        rows += [("learning_rate", hyp.learning_rate, src("lr", "learning_rate")),
                 ("momentum", hyp.momentum, src("momentum", "momentum")),
                 ("decay", hyp.decay, src("decay", "decay")),
                 ("burn_in", hyp.burn_in, src("burn_in", "burn_in") + ("" if args.burn_in is not None or
                                                                       cfg_burn == hyp.burn_in
                                                                       else f" {cfg_burn}, compressed")),
                 ("power", hyp.power, "cfg power"), ("policy", hyp.policy, "cfg policy"),
                 ("steps", ",".join(map(str, hyp.steps)) or "-",
                  src("steps", "steps") + ("" if args.steps is not None or cfg_steps == hyp.steps
                                           else f" {','.join(map(str, cfg_steps))}, compressed")),
                 ("scales", ",".join(map(str, hyp.scales)) or "-", src("scales", "scales")),
                 ("nesterov", hyp.nesterov, "command line" if args.nesterov else "default")]
    else:
        rows += [(k, v, "checkpoint") for k, v in (("learning_rate", hyp.learning_rate), ("burn_in", hyp.burn_in),
                                                    ("steps", hyp.steps), ("scales", hyp.scales))]

    aug = AugmentConfig.from_model(model)
    for key in ("jitter", "hue", "saturation", "exposure", "angle", "mosaic", "flip"):
        if getattr(args, key) is not None:
            setattr(aug, key, getattr(args, key))
    augment = args.augment is not False
    multiscale = args.multiscale if args.multiscale is not None else any(l.random for l in model.yolo_layers)
    multiscale = bool(multiscale and augment)
    ms_range = multiscale_range(img_size, model.max_stride) if multiscale else None
    amp = bool(args.amp if args.amp is not None else device.type == "cuda") and device.type == "cuda"
    rows += [("batch", f"{hyp.batch} ({minibatch} x {accumulate} accumulated" + (f" x {world} ranks" if world > 1
                                                                                 else "") + ")",
              "command line" if args.batch else "cfg batch/subdivisions"),
             ("img_size", img_size, "command line" if args.img_size else "cfg width"),
             ("epochs", f"{args.epochs} ({steps_per_epoch} steps each, {total_steps} steps in all)", ""),
             ("augmentation", "on" if augment else "off", ""),
             ("jitter", aug.jitter, ""), ("hue/sat/exp", f"{aug.hue}/{aug.saturation}/{aug.exposure}", ""),
             ("angle", aug.angle, ""), ("flip", aug.flip, ""), ("mosaic", aug.mosaic, ""),
             ("letter_box", aug.letter_box, "cfg letter_box"),
             ("multiscale", f"{ms_range[0]}-{ms_range[1]}" if ms_range else "off", "[yolo] random"),
             ("amp", amp, ""), ("device", f"{device}" + (f" x {world} (DDP)" if world > 1 else ""), "")]
    y0 = model.yolo_layers[0]
    rows += [("yolo", f"iou_loss={y0.iou_loss} iou_norm={y0.iou_normalizer} cls_norm={y0.cls_normalizer} "
                      f"ignore={y0.ignore_thresh} truth={y0.truth_thresh} iou_thresh={y0.iou_thresh} "
                      f"scale_x_y={y0.scale_x_y}", "cfg [yolo]")]
    say(f"hyper-parameters in use ({model.cfg_path.name}):\n" + _hyp_table(rows))
    for n in notes:
        say(f"note: {n}")

    # --- output folder ----------------------------------------------------------------------------
    out = Path(args.output) if args.output else increment_dir(args.project)
    if main_rank and ckpt is None:
        if (out / "last.pt").exists():
            raise UserError(f"{out} already holds a run (last.pt): --resume {out / 'last.pt'} or choose "
                            f"another --output")
        out.mkdir(parents=True, exist_ok=True)
        cfg_copy = out / model.cfg_path.name
        if cfg_copy.resolve() != model.cfg_path.resolve():
            shutil.copyfile(model.cfg_path, cfg_copy)
    args.output = str(out)

    # --- model, optimiser, EMA ----------------------------------------------------------------------
    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    frozen = args.freeze or 0
    if frozen:
        say(f"frozen: the first {frozen} sections ({len(freeze(model, frozen))} blocks)")
    if world > 1 and args.sync_bn:
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:  # PyTorch's SyncBatchNorm needs CUDA modules
            say("note: --sync-bn ignored on CPU (PyTorch's SyncBatchNorm works on CUDA only)")
    ema = ModelEMA(model, decay=args.ema_decay)
    optimizer = build_optimizer(model, hyp)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    from ..loss import YOLOLoss

    loss_fn = YOLOLoss(unwrap(model))
    state = TrainState()
    if ckpt is not None:
        unwrap(model).load_state_dict(ckpt["model"])
        if ckpt.get("ema") is not None:
            ema.module.load_state_dict(ckpt["ema"])
            ema.updates = int(ckpt.get("ema_updates", 0))
        optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler") and amp:
            scaler.load_state_dict(ckpt["scaler"])
        state = TrainState(epoch=int(ckpt["epoch"]), step=int(ckpt["step"]),
                           batch_in_epoch=int(ckpt.get("batch_in_epoch", 0)), seen=int(ckpt.get("seen", 0)),
                           best_fitness=float(ckpt.get("best_fitness", -1.0)))
        unwrap(model).seen = state.seen
        set_rng_state(ckpt.get("rng", {}))
        say(f"resumed {args.resume}: epoch {state.epoch + 1}, step {state.step}"
            + (f", minibatch {state.batch_in_epoch}" if state.batch_in_epoch else ""))
    if world > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                    else None)

    dataset = TrainDataset(train_info.records, img_size, aug, augment=augment, seed=args.seed)
    sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True,
                                                  seed=args.seed, drop_last=False)
    saved_args = {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, type(None)))}
    csv_path, png_path = out / "results.csv", out / "results.png"
    from ..loaders import worker_init
    from ..evaluate import evaluate

    say(f"training {len(train_info.records)} images, validating on {len(val_info.records)}; output: {out}")
    try:
        while state.epoch < args.epochs and state.step < total_steps:
            t0 = time.time()
            sampler.set_epoch(state.epoch)
            dataset.set_epoch(state.epoch)
            loader = torch.utils.data.DataLoader(
                dataset, batch_size=minibatch, sampler=SkipSampler(sampler, state.batch_in_epoch * minibatch),
                num_workers=args.workers, collate_fn=collate, pin_memory=device.type == "cuda",
                worker_init_fn=worker_init if args.workers > 0 else None, drop_last=False)
            logs = train_one_epoch(model, loss_fn, optimizer, loader, state, hyp, device, accumulate, ema=ema,
                                   scaler=scaler, frozen=frozen, rank=rank, progress=args.progress,
                                   multiscale=(*ms_range, model.max_stride, args.seed) if ms_range else None,
                                   total_steps=total_steps, channels_last=args.channels_last)
            last_epoch = state.epoch + 1 >= args.epochs or state.step >= total_steps
            metrics = {"map": float("nan"), "map50": float("nan")}
            if main_rank:
                if (state.epoch + 1) % args.eval_interval == 0 or last_epoch:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        metrics = evaluate(ema.module, val_info, img_size=img_size, batch_size=minibatch,
                                           workers=args.workers, device=device, verbose=False)
                fitness = metrics["map50"]
                improved = fitness == fitness and fitness > state.best_fitness
                if improved:
                    state.best_fitness = fitness
                ckpt_state = training_state(model, ema, optimizer, scaler, state, hyp, names, saved_args,
                                            epoch_done=True)
                save_checkpoint(ckpt_state, out / "last.pt")
                if improved:
                    save_checkpoint(ckpt_state, out / "best.pt")
                    ema.module.save_darknet_weights(out / "best.weights")
                row = {"epoch": state.epoch + 1, "step": state.step, **logs, "map": metrics["map"],
                       "map50": metrics["map50"], "time_s": time.time() - t0}
                append_results(csv_path, row)
                plot_results(read_results(csv_path), png_path)
                say(f"epoch {state.epoch + 1}/{args.epochs}: loss {logs['total']:.3f} (box {logs['box']:.3f} "
                    f"obj {logs['obj']:.3f} cls {logs['cls']:.3f}) lr {logs['lr']:.3g} mAP@.5 "
                    f"{metrics['map50']:.4f} mAP {metrics['map']:.4f}  data wait {100 * logs['data_wait']:.0f}%"
                    f"  {time.time() - t0:.0f}s")
            barrier()
            state.epoch += 1
            state.batch_in_epoch = 0
    except KeyboardInterrupt:
        if main_rank:
            save_checkpoint(training_state(model, ema, optimizer, scaler, state, hyp, names, saved_args,
                                           epoch_done=False), out / "last.pt")
            print(f"interrupted: saved {out / 'last.pt'} (epoch {state.epoch + 1}, step {state.step}); "
                  f"continue with --resume {out / 'last.pt'}", file=sys.stderr)
        raise
    if state.skipped:
        say(f"{state.skipped} training image(s) could not be loaded and were skipped")
    if main_rank:
        summary = {"epochs": state.epoch, "steps": state.step, "best_map50": state.best_fitness,
                   "skipped_images": state.skipped, "output": str(out)}
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
        say(f"done: {state.step} steps, best mAP@.5 {state.best_fitness:.4f}; {out / 'last.pt'}, "
            f"{out / 'best.pt'}, {out / 'best.weights'}")
    return 0
