"""Trainer: restore, fit, one epoch, end of epoch (evaluate), firing events for the callbacks.

One optimiser step is one Darknet "batch": ``batch`` images through ``accumulate`` forward passes
(split over the DDP ranks), gradients accumulated. The hyper-parameters come from ``yolo.hyp``
(cfg -> overrides -> the run's plan); the state a resume needs is saved and restored by
``yolo.checkpoint``; DDP helpers are in ``yolo.distributed``. Only rank 0 evaluates and writes.
What a run does besides training (EMA, checkpoints, results.csv/png, progress, sparsity) is a
callback on the trainer's events (``yolo.callbacks``): ``default_callbacks`` lists them.
"""
from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .augment import AugmentConfig
from .callbacks import Callback, Callbacks, Checkpointing, EMAUpdate, Handler, Progress
from .checkpoint import (
    TrainState,
    check_same_cfg,
    checkpoint_hyp,
    load_weights,
    restore_training_state,
    step_checkpoints,
    training_state,
)
from .distributed import (
    SkipSampler,
    all_reduce_mean,
    barrier,
    broadcast_module,
    distributed_session,
    unwrap,
    world_size,
)
from .ema import ModelEMA
from .errors import YoloError
from .hyp import (
    Hyp,
    OptionFields,
    Overrides,
    RunPlan,
    Setting,
    check_hyp,
    format_settings,
    hyp_from,
    lr_at,
    multiscale_range,
    multiscale_size,
    overrides_from,
    pick,
    plan_run,
    resolve_ema_decay,
    resolve_hyp,
    shrink_count,
    unread_by_policy,
)
from .loaders import TrainDataset, collate, worker_init
from .model import Darknet
from .params import params
from .prune import SparsityTraining
from .train_pictures import TrainingPictures

RESULT_FIELDS = ["epoch", "step", "box", "obj", "cls", "total", "lr", "map", "map50", "data_wait", "time_s"]
#: the augmentation values a flag overrides, in the order the settings table prints them
AUGMENT_KEYS = tuple(p.option for p in params(group="augment", flagged=True))


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss); the last checkpoint is left as it was."""


class TrainSetupError(YoloError):
    """Inputs that do not fit together (model vs data classes, image size, output folder)."""


def amp_dtype(device: torch.device, asked: bool | None) -> torch.dtype | None:
    """The autocast dtype of a mixed-precision run, None for float32 throughout (``asked``: --amp /
    --no-amp / None, the default: on for CUDA only). CPU: bfloat16 where the CPU has it natively
    (error otherwise). CUDA: bfloat16 on compute capability 8.0+ (fp32's exponent range: no loss
    scaling, no skipped steps; tensor cores run it as fast as fp16), float16 + GradScaler before."""
    if not (asked if asked is not None else device.type == "cuda"):
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.get_device_capability(device)[0] >= 8 else torch.float16
    if device.type == "cpu":
        from .backends.pytorch import cpu_bf16_problem

        problem = cpu_bf16_problem()
        if problem:
            raise TrainSetupError(f"--amp on the CPU trains in bfloat16, but {problem}; use --no-amp")
        return torch.bfloat16
    raise TrainSetupError(f"--amp runs on CUDA (fp16/bf16) and on CPUs with bfloat16, not on '{device}'; "
                          "use --no-amp")


@dataclass
class TrainOptions(OptionFields):  # type: ignore[misc, valid-type]
    """Every training option (the CLI's arguments, saved in checkpoints as ``args``): the run's
    own below, plus one field per hyper-parameter flag of ``yolo.params`` (``OptionFields``).
    None means "not given": the cfg's value (or the run's plan) is used."""

    cfg: str | None = None
    data: str | None = None
    images: str | None = None
    val_data: str | None = None
    val_images: str | None = None
    weights: str | None = None
    cutoff: int | None = None
    epochs: int | None = None
    max_steps: int | None = None
    batch_size: int | None = None
    img_size: int | None = None
    device: str = "cpu"
    workers: int = min(4, os.cpu_count() or 1)
    output: str | None = None
    resume: str | None = None
    freeze: int = 0
    seed: int = 0
    sync_bn: bool = False
    channels_last: bool = True
    eval_interval: int = 1
    save_period: int = 200  # a step checkpoint every N optimiser steps (0: none), see Checkpointing
    keep: int = 2  # step checkpoints kept (the newest)
    progress: bool = True
    project: str = "runs/train"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainOptions":
        """Known keys only (None values keep the default): a checkpoint of an older version may
        hold options that no longer exist."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known and v is not None})

    def overrides(self) -> Overrides:
        return overrides_from(self)


#: options that may differ when resuming (they do not change what is computed)
RESUME_MAY_CHANGE = {"resume", "epochs", "device", "workers", "progress", "max_steps", "eval_interval",
                     "channels_last", "save_period", "keep"}


def resume_options(given: dict[str, Any], ckpt: dict[str, Any], path: Path) -> TrainOptions:
    """The saved run's options, with those that may change taken from ``given`` (the options on the
    command line); any other difference is refused, naming the options."""
    saved = dict(ckpt["args"])
    if "cfg" in given:
        check_same_cfg(ckpt, Darknet(given["cfg"], warn_unused=False).cfg_text, path, given["cfg"])
    changed = sorted(k for k, v in given.items()
                     if k not in RESUME_MAY_CHANGE | {"cfg", "output"} and saved.get(k) != v)
    if changed:
        raise TrainSetupError(f"--resume continues a run with its own settings; these options differ from the "
                              f"saved run: {', '.join('--' + k.replace('_', '-') for k in changed)}")
    merged = {**saved, **{k: v for k, v in given.items() if k in RESUME_MAY_CHANGE},
              "resume": str(path), "output": str(path.parent)}
    copy = path.parent / ckpt.get("cfg_name", "model.cfg")
    if not Path(merged["cfg"]).exists() and copy.exists():
        merged["cfg"] = str(copy)  # the run folder keeps a copy of its cfg
    return TrainOptions.from_dict(merged)


# ---------------------------------------------------------------------------------------------
# model preparation
# ---------------------------------------------------------------------------------------------
def build_optimizer(model: nn.Module, hyp: Hyp) -> torch.optim.SGD:
    """SGD with momentum. Weight decay on convolution weights only: decaying BatchNorm scales or
    biases pulls them to 0, which Darknet never does (it decays conv weights only)."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            (decay if isinstance(module, nn.modules.conv._ConvNd) and name == "weight" else no_decay).append(p)
    return torch.optim.SGD([{"params": decay, "weight_decay": hyp.decay},
                            {"params": no_decay, "weight_decay": 0.0}],
                           lr=hyp.learning_rate, momentum=hyp.momentum, nesterov=hyp.nesterov and hyp.momentum > 0)


@torch.no_grad()
def init_head_biases(model: Darknet, objects_per_image: float = 8.0) -> None:
    """Start each from-scratch head from its priors (``Head.init_bias``, set on the convolution feeding
    it; [yolo], as mmdetection does: objectness ~ a few objects per image spread over every cell and
    anchor, classes ~ uniform). Without it the first steps are spent
    pushing thousands of 0.5 objectness outputs down, which can wreck the young features."""
    blocks = list(model.module_list)
    for i, block in enumerate(blocks):
        if block not in model.heads:
            continue
        conv = next((c for b in reversed(blocks[:i]) for c in reversed(list(b.modules()))
                     if isinstance(c, nn.Conv2d)), None)
        if conv is not None and conv.bias is not None:  # the head sets its priors (Head.init_bias)
            block.init_bias(conv.bias, model.input_size, len(model.heads), objects_per_image)


def freeze(model: Darknet, n: int) -> list[str]:
    """Freeze the first ``n`` sections, weights and BatchNorm statistics (fine-tuning a pretrained
    backbone on little data); returns where they are in the cfg."""
    frozen = []
    for block in list(model.module_list)[:n]:
        for p in block.parameters():
            p.requires_grad_(False)
        block.eval()
        frozen.append(block.where)
    return frozen


@dataclass(frozen=True)
class StopBackward:
    """Darknet's per-layer ``stopbackward`` (parse_network_cfg, backward_network_gpu), from the blocks'
    ``stopbackward`` attribute. The last section with stopbackward=1 is where the backward stops for the
    whole run: the sections before it have ``train=0`` (never updated, BatchNorm in inference mode) and it
    gets no gradient itself. A section with stopbackward=N > 1 stops the backward for the first N steps:
    it and every section before it get no update while ``step < N`` (the highest such section counts)."""

    frozen: int = 0  # sections 0 .. frozen-1 never train and keep their BatchNorm statistics
    no_grad: int = 0  # sections 0 .. no_grad-1 get no gradient for the whole run (frozen + the stop section)
    until: tuple[tuple[int, int], ...] = ()  # (section index, step N): sections 0 .. index not updated before N

    @classmethod
    def of(cls, model: Darknet, max_batches: int = 0, total_steps: int = 0) -> "StopBackward":
        """``until`` steps are fitted to a run shorter than ``max_batches`` as the schedule is (``shrink_count``)."""
        marks = [(i, int(getattr(b, "stopbackward", 0))) for i, b in enumerate(model.module_list)]
        last = max((i for i, n in marks if n == 1), default=-1)
        until = tuple((i, shrink_count(n, max_batches, total_steps)) for i, n in marks if n > 1 and i > last)
        return cls(max(last, 0), last + 1, until)

    def held(self, step: int) -> int:
        """The number of leading sections that get no update at ``step`` (0: none besides ``no_grad``)."""
        return max([i + 1 for i, n in self.until if step < n] + [0])

    def describe(self, model: Darknet) -> list[str]:
        blocks = list(model.module_list)
        notes = [f"stopbackward=1 at {blocks[self.no_grad - 1].where}: sections 0-{self.no_grad - 1} are not "
                 f"trained (the first {self.frozen} keep their BatchNorm statistics)"] if self.no_grad else []
        notes += [f"stopbackward at {blocks[i].where}: sections 0-{i} are not updated for the first {n} steps"
                  for i, n in self.until]
        return notes


def apply_stop_backward(model: Darknet, stop: StopBackward) -> None:
    """No gradient for the sections before the run's stopbackward=1 section and for it; the ones before it
    frozen as ``freeze`` freezes them (inference-mode BatchNorm)."""
    freeze(model, stop.frozen)
    for block in list(model.module_list)[:stop.no_grad]:
        for p in block.parameters():
            p.requires_grad_(False)


def _detach_output(module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor | None:
    """Darknet's ``onlyforward=1``: the layer's backward is skipped, so nothing flows back through it."""
    return output.detach() if module.training else None


def set_train_mode(model: nn.Module, frozen: int) -> None:
    """``model.train()``, but frozen sections keep their BatchNorm statistics."""
    m = unwrap(model)
    m.train()
    for block in list(m.module_list)[:frozen]:
        block.eval()


def resize_batch(imgs: torch.Tensor, size: int, channels_last: bool) -> torch.Tensor:
    """Multi-scale training: the whole batch bilinearly resized to ``size`` x ``size``."""
    if imgs.shape[-2:] == (size, size):
        return imgs
    imgs = F.interpolate(imgs, size=(size, size), mode="bilinear", align_corners=False)
    return imgs.contiguous(memory_format=torch.channels_last) if channels_last else imgs


# ---------------------------------------------------------------------------------------------
# results.csv (one row per epoch); results.png is drawn from it
# ---------------------------------------------------------------------------------------------
def append_results(path: Path, row: dict[str, Any]) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=RESULT_FIELDS, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def read_results(path: Path) -> list[dict[str, float]]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        try:
            return [{k: float(v) for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(f)]
        except ValueError as e:
            raise TrainSetupError(f"{path}: not a results.csv of this project ({e})") from None


class ResultsLog(Callback):
    """Rank 0: a results.csv row per epoch (losses, lr, mAP, data wait, seconds), results.png
    redrawn from it, summary.json at the end of the run."""

    def on_epoch_end(self, trainer: Trainer) -> None:
        from .plots import plot_results

        if not trainer.main:
            return
        state, metrics, csv_path = trainer.state, trainer.metrics, trainer.out / "results.csv"
        append_results(csv_path, {"epoch": state.epoch + 1, "step": state.step, **trainer.epoch_logs,
                                  "map": metrics["map"], "map50": metrics["map50"], "time_s": trainer.epoch_time()})
        plot_results(read_results(csv_path), trainer.out / "results.png")

    def on_train_end(self, trainer: Trainer) -> None:
        if trainer.main:
            (trainer.out / "summary.json").write_text(json.dumps(trainer.summary, indent=1))


def default_callbacks(opts: TrainOptions) -> list[Callback]:
    """What every run does besides the step, in the order each event calls them: the EMA,
    last.pt / best.pt / best.weights, results.csv/png and summary.json, the sparsity penalty
    (``--sparsity``), the training pictures (:mod:`yolo.train_pictures`), printing.
    ``Trainer(callbacks=...)`` replaces the list (drop or add one)."""
    extra: list[Callback] = [SparsityTraining(opts.sparsity, opts.sparsity_decay)] if opts.sparsity else []
    return [EMAUpdate(), Checkpointing(), ResultsLog(), *extra, TrainingPictures(), Progress(bars=opts.progress)]


# ---------------------------------------------------------------------------------------------
# the trainer
# ---------------------------------------------------------------------------------------------
class Trainer:
    """One training run: built from options (and a checkpoint to resume), then ``fit()``.
    ``callbacks``: what runs on the trainer's events (None: ``default_callbacks(opts)``); more
    with ``add_callback``."""

    def __init__(self, opts: TrainOptions, device: torch.device, ckpt: dict[str, Any] | None = None,
                 rank: int = 0, world: int = 1, say: Callable[..., None] | None = None,
                 callbacks: Iterable[Any] | None = None) -> None:
        self.opts, self.device, self.rank, self.world = opts, device, rank, world
        self.main = rank == 0
        self.say = say or (print if self.main else (lambda *a, **k: None))
        self.callbacks = Callbacks(default_callbacks(opts) if callbacks is None else callbacks)
        # what the callbacks read besides the run's objects (see yolo.callbacks)
        self.lr, self.n_batches, self.batch_losses = 0.0, 0, None
        self.epoch_logs: dict[str, float] = {}
        self.metrics: dict[str, float] = {}
        self.improved, self.summary, self._epoch_t0, self._unscaled = False, {}, time.time(), False
        torch.manual_seed(opts.seed)
        self.model = self._build_model(ckpt)
        self.train_info, self.val_info = self._load_data()
        self.names = self.train_info.names
        self.img_size = opts.img_size or self.model.net.width
        if self.img_size % self.model.max_stride:
            raise TrainSetupError(f"--img-size {self.img_size} must be a multiple of the network stride "
                                  f"{self.model.max_stride}")
        self.hyp, self.plan, rows, notes = self._resolve(ckpt)
        self.aug, self.augment, self.ms_range, self.amp, more = self._augmentation()
        self.say(f"hyper-parameters in use ({self.model.cfg_path.name}):\n" + format_settings(rows + more))
        for n in notes:
            self.say(f"note: {n}")
        self.out = self._prepare_output(resumed=ckpt is not None)
        self.state = self._build_training(ckpt)
        self.dataset = TrainDataset(self.train_info.records, self.img_size, self.aug, augment=self.augment,
                                    seed=opts.seed)
        self.sampler = torch.utils.data.DistributedSampler(self.dataset, num_replicas=world, rank=rank,
                                                           shuffle=True, seed=opts.seed, drop_last=False)

    # --- set-up ------------------------------------------------------------------------------
    def _build_model(self, ckpt: dict[str, Any] | None) -> Darknet:
        """The cfg's model, with its start weights (checkpoint, --weights or head priors)."""
        model = Darknet(self.opts.cfg)
        if ckpt is not None:
            check_same_cfg(ckpt, model.cfg_text, self.opts.resume, model.cfg_path.name)
        elif self.opts.weights:
            load_weights(model, self.opts.weights, cutoff=self.opts.cutoff)
            self.say(f"weights: {self.opts.weights}" + (f" (first {self.opts.cutoff} sections)"
                                                        if self.opts.cutoff else ""))
        else:
            init_head_biases(model)
        for block in model.module_list:  # heads, and blocks this trainer cannot train ([crnn])
            problem = block.training_problem()
            if problem:
                raise TrainSetupError(f"{block.where}: {problem}")
        problems = model.net.training_problems()
        if problems:
            raise TrainSetupError("; ".join(problems))
        check_hyp(Hyp.from_net(model.net), str(model.cfg_path))
        return model

    def _load_data(self) -> tuple[Any, Any]:
        from .datasets import load_dataset

        o = self.opts
        train = load_dataset(o.data, o.images, split="train")
        val = load_dataset(o.val_data or o.data, o.val_images if o.val_data else o.images, split="valid")
        if not train.records:
            raise TrainSetupError(f"{train.source}: no training images")
        if len(train.names) != self.model.num_classes:
            raise TrainSetupError(f"{train.source}: {len(train.names)} classes but {self.model.cfg_path.name} "
                                  f"has classes={self.model.num_classes} in its [yolo] sections")
        if len(val.names) != len(train.names):
            raise TrainSetupError(f"{val.source}: {len(val.names)} classes, the training set has "
                                  f"{len(train.names)}")
        for info in (train, val):
            if info.problems:
                self.say(f"{info.source}: skipped while loading: {info.problems.summary()}")
        return train, val

    def _resolve(self, ckpt: dict[str, Any] | None) -> tuple[Hyp, RunPlan, list[tuple[str, Any, str]], list[str]]:
        """The hyper-parameters (the checkpoint's when resuming) and the run's length, as table rows."""
        net, o = self.model.net, self.opts
        if ckpt is not None:
            hyp = checkpoint_hyp(ckpt, o.resume)
            settings = {k: Setting(v, "checkpoint") for k, v in hyp.to_dict().items()}
        else:
            settings = {"batch": pick(net.batch, o.batch, "--batch")}
        batch = settings["batch"].value
        base = net if ckpt is None else hyp  # subdivisions and max_batches: the cfg's, or the saved run's
        plan = plan_run(len(self.train_info.records), batch, base.subdivisions, o.batch_size, o.epochs,
                        base.max_batches, o.max_steps, self.world, self.model.cfg_path.name)
        notes = []
        if ckpt is None:
            settings = resolve_hyp(net, o.overrides(), plan.total_steps)
            if settings["max_batches"].value != net.max_batches:
                notes.append(f"schedule shrunk to the run's {plan.total_steps} steps (cfg max_batches="
                             f"{net.max_batches}, ratio {plan.total_steps / net.max_batches:.4g})")
        hyp = hyp_from(settings)
        hidden = {"batch", "subdivisions"} | unread_by_policy(hyp.policy)
        rows = [(k, s.value, s.source) for k, s in settings.items() if k not in hidden]
        ranks = f" x {self.world} ranks" if self.world > 1 else ""
        rows += [("batch", f"{batch} ({plan.minibatch} x {plan.accumulate} accumulated{ranks})",
                  settings["batch"].source),
                 ("img_size", self.img_size, "--img-size" if o.img_size else "cfg width"),
                 ("epochs", f"{plan.epochs} ({plan.steps_per_epoch} steps each, {plan.total_steps} steps in all)",
                  "--epochs" if o.epochs is not None else "cfg max_batches")]
        return hyp, plan, rows, notes

    def _augmentation(self) -> tuple[AugmentConfig, bool, tuple[int, int] | None, torch.dtype | None,
                                     list[tuple[str, Any, str]]]:
        """Augmentation (cfg, then overrides), multi-scale range and the AMP dtype, with their table rows."""
        o, model = self.opts, self.model
        aug = AugmentConfig.from_model(model)
        src = {k: Setting(getattr(aug, k), "cfg") if getattr(o, k) is None else Setting(getattr(o, k), f"--{k}")
               for k in AUGMENT_KEYS}
        for k, s in src.items():
            setattr(aug, k, s.value)
        augment = o.augment is not False
        random = any(head.multiscale for head in model.heads)
        multiscale = bool((o.multiscale if o.multiscale is not None else random) and augment)
        ms_range = multiscale_range(self.img_size, model.max_stride) if multiscale else None
        amp = amp_dtype(self.device, o.amp)
        ema = resolve_ema_decay(o.ema_decay, model.net)
        self.ema_decay = ema.value
        first_of_type = {type(head): head for head in reversed(model.heads)}  # the first head of each type
        head_rows = [row for head in reversed(first_of_type.values()) if (row := head.settings_row())]
        rows = [("augmentation", "on" if augment else "off", "--no-augment" if not augment else "default"),
                *[(k, s.value, s.source) for k, s in src.items()],
                ("letter_box", aug.letter_box, "cfg"),
                ("multiscale", f"{ms_range[0]}-{ms_range[1]}" if ms_range else "off",
                 "--multiscale" if o.multiscale is not None else "cfg [yolo] random"),
                ("amp", str(amp).replace("torch.", "") if amp else False, "--amp" if o.amp is not None else "default"),
                ("ema_decay", ema.value, ema.source),
                ("device", f"{self.device}" + (f" x {self.world} (DDP)" if self.world > 1 else ""), ""),
                *head_rows]
        return aug, augment, ms_range, amp, rows

    def _prepare_output(self, resumed: bool) -> Path:
        """The run folder (a copy of the cfg goes in it); refuses to overwrite another run."""
        if not self.opts.output:
            raise TrainSetupError("no run folder: set TrainOptions.output")
        out = Path(self.opts.output)
        if self.main and not resumed:
            if (out / "last.pt").exists():
                raise TrainSetupError(f"{out} already holds a run (last.pt): --resume {out / 'last.pt'} or "
                                      f"choose another --output")
            steps = step_checkpoints(out)
            if steps:
                raise TrainSetupError(f"{out} already holds a run ({steps[-1][1].name}): --resume {out} or "
                                      f"choose another --output")
            out.mkdir(parents=True, exist_ok=True)
            cfg_copy = out / self.model.cfg_path.name
            if cfg_copy.resolve() != self.model.cfg_path.resolve():
                shutil.copyfile(self.model.cfg_path, cfg_copy)
        return out

    def _build_training(self, ckpt: dict[str, Any] | None) -> TrainState:
        """Device, freezing, EMA, optimiser, AMP scaler and loss; the checkpoint's state restored."""
        from .loss import YOLOLoss

        o, model = self.opts, self.model
        model.to(self.device)
        if o.channels_last:
            model.to(memory_format=torch.channels_last)
        if o.freeze:
            self.say(f"frozen: the first {o.freeze} sections ({len(freeze(model, o.freeze))} blocks)")
        self.stop = StopBackward.of(model, model.net.max_batches, self.plan.total_steps)
        apply_stop_backward(model, self.stop)
        self.frozen = max(o.freeze, self.stop.frozen)
        self._held = {i + 1: [p for b in list(model.module_list)[:i + 1] for p in b.parameters() if p.requires_grad]
                      for i, _ in self.stop.until}  # by StopBackward.held's count
        for note in self.stop.describe(model):
            self.say(f"note: {note}")
        for block in model.module_list:
            if getattr(block, "onlyforward", 0):
                block.register_forward_hook(_detach_output)
        if self.world > 1 and o.sync_bn:
            if self.device.type == "cuda":
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            else:  # PyTorch's SyncBatchNorm needs CUDA modules
                self.say("note: --sync-bn ignored on CPU (PyTorch's SyncBatchNorm works on CUDA only)")
        self.ema = ModelEMA(model, decay=self.ema_decay)
        self.optimizer = build_optimizer(model, self.hyp)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp == torch.float16)  # bf16 needs no scaling
        self.loss_fn = YOLOLoss(model)
        state = TrainState()
        if ckpt is not None:
            state = restore_training_state(ckpt, o.resume, model, self.ema, self.optimizer, self.scaler)
            self.say(f"resumed {o.resume}: epoch {state.epoch + 1}, step {state.step}"
                     + (f", minibatch {state.batch_in_epoch}" if state.batch_in_epoch else ""))
        if self.world > 1:
            model = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.wrapped = model  # what trains (DDP-wrapped under torchrun); self.model stays the Darknet
        return state

    # --- events ------------------------------------------------------------------------------
    def add_callback(self, event: str, fn: Handler) -> None:
        """Call ``fn(trainer)`` on ``event`` (one of ``yolo.callbacks.EVENTS``), after those added before."""
        self.callbacks.add_fn(event, fn)

    def epoch_time(self) -> float:
        """Seconds since the current epoch started."""
        return time.time() - self._epoch_t0

    def unscale_gradients(self) -> None:
        """Make ``.grad`` the true gradients under fp16 loss scaling, once per step: a callback that
        edits gradients (``on_before_step``) calls it first."""
        if self.scaler.is_enabled() and not self._unscaled:
            self.scaler.unscale_(self.optimizer)
            self._unscaled = True

    # --- the run -----------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train until the planned epochs / steps (``on_interrupt`` on Ctrl-C, re-raised). Returns the summary."""
        state = self.state
        self.callbacks.fire("on_train_start", self)
        try:
            while state.epoch < self.plan.epochs and state.step < self.plan.total_steps:
                self._epoch_t0 = time.time()
                logs = self.train_one_epoch()
                self.end_epoch(logs)
                state.epoch += 1
                state.batch_in_epoch = 0
        except KeyboardInterrupt:
            self.callbacks.fire("on_interrupt", self)
            raise
        self.summary = {"epochs": state.epoch, "steps": state.step, "best_map50": state.best_fitness,
                        "skipped_images": state.skipped, "output": str(self.out)}
        self.callbacks.fire("on_train_end", self)
        return self.summary

    def checkpoint(self, epoch_done: bool) -> dict[str, Any]:
        return training_state(self.wrapped, self.ema, self.optimizer, self.scaler, self.state, self.hyp, self.names,
                              asdict(self.opts), epoch_done=epoch_done)

    def _loader(self) -> torch.utils.data.DataLoader:
        """This epoch's shuffled order, minus the minibatches a resumed run already trained on."""
        state, o = self.state, self.opts
        self.sampler.set_epoch(state.epoch)
        self.dataset.set_epoch(state.epoch)
        skip = SkipSampler(self.sampler, state.batch_in_epoch * self.plan.minibatch)
        return torch.utils.data.DataLoader(
            self.dataset, batch_size=self.plan.minibatch, sampler=skip, num_workers=o.workers,
            collate_fn=collate, pin_memory=self.device.type == "cuda",
            worker_init_fn=worker_init if o.workers > 0 else None, drop_last=False)

    def train_one_epoch(self) -> dict[str, float]:
        """Train the epoch's minibatches; an optimiser step every ``accumulate`` of them (and at the
        end). Stops early, at a step boundary, at the planned total. ``self.state`` stays current so
        that an interrupt can save it. Returns the epoch's mean losses, last lr and data-wait share."""
        state, plan = self.state, self.plan
        loader = self._loader()
        set_train_mode(self.wrapped, self.frozen)
        sums, count, micro, wait, busy = torch.zeros(4), 0, 0, 0.0, 0.0
        n_batches = self.n_batches = len(loader)
        self.batch_losses = None
        self.optimizer.zero_grad(set_to_none=True)
        lr = self.lr = lr_at(state.step, self.hyp)
        self.callbacks.fire("on_epoch_start", self)
        t_ready = time.perf_counter()
        for n, batch in enumerate(loader):
            t_got = time.perf_counter()
            wait += t_got - t_ready
            state.skipped += batch["skipped"]
            micro += 1
            last = n == n_batches - 1
            if batch["images"] is not None:
                sums += self._forward_backward(batch, sync=micro >= plan.accumulate or last)
                count += 1
            if micro >= plan.accumulate or last:
                lr = self._optimizer_step(micro)
                micro = 0
            if count:
                self.batch_losses = sums / count
            self.callbacks.fire("on_batch_end", self)
            t_ready = time.perf_counter()
            busy += t_ready - t_got
            if state.step >= plan.total_steps and micro == 0:
                break
        means = all_reduce_mean(sums / max(count, 1))
        self.epoch_logs = {"box": float(means[0]), "obj": float(means[1]), "cls": float(means[2]),
                           "total": float(means[3]), "lr": lr, "data_wait": wait / max(wait + busy, 1e-9)}
        self.callbacks.fire("on_train_epoch_end", self)
        return self.epoch_logs

    def _forward_backward(self, batch: dict[str, Any], sync: bool) -> torch.Tensor:
        """Loss of one minibatch, gradients accumulated (DDP syncs them on the step's last one only).
        Returns (box, obj, cls, total)."""
        o, state = self.opts, self.state
        imgs = batch["images"].to(self.device, non_blocking=True).float().div_(255.0)
        if o.channels_last:
            imgs = imgs.contiguous(memory_format=torch.channels_last)
        if self.ms_range is not None:
            lo, hi = self.ms_range
            size = multiscale_size(state.step, o.seed, lo, hi, self.model.max_stride)
            imgs = resize_batch(imgs, size, o.channels_last)
        no_sync: ContextManager = (self.wrapped.no_sync() if not sync and hasattr(self.wrapped, "no_sync")
                                   else contextlib.nullcontext())
        with no_sync:
            with torch.autocast(self.device.type, dtype=self.amp or torch.float16, enabled=self.amp is not None):
                outputs = self.wrapped(imgs)  # [yolo] layers cast up: the loss runs in float32, outside autocast
            loss, parts = self.loss_fn(outputs, batch["targets"], tuple(imgs.shape[-2:]))
            if not torch.isfinite(loss):
                raise TrainingError(f"non-finite loss ({loss.item()}) at step {state.step}, epoch "
                                    f"{state.epoch + 1}: lower the learning rate (--lr) or lengthen the "
                                    f"warm-up (--burn-in)")
            (self.scaler.scale(loss) if self.scaler.is_enabled() else loss).div(self.plan.accumulate).backward()
        state.seen += len(imgs) * world_size()
        return torch.cat((parts.float().cpu(), loss.detach().float().cpu()[None]))

    def _optimizer_step(self, minibatches: int) -> float:
        """One Darknet "batch": the scheduled lr, ``on_before_step`` (gradient regularisers), the
        step, ``on_step_end`` (the EMA). Returns the lr used."""
        state = self.state
        lr = self.lr = lr_at(state.step, self.hyp)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        self.callbacks.fire("on_before_step", self)
        held = self.stop.held(state.step)
        if held:  # stopbackward=N: the sections up to it get no update in the first N steps
            for p in self._held[held]:
                p.grad = None
        if self.scaler.is_enabled():
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self._unscaled = False
        self.optimizer.zero_grad(set_to_none=True)
        state.step += 1
        state.batch_in_epoch += minibatches
        self.model.seen = state.seen
        self.callbacks.fire("on_step_end", self)
        return lr

    def end_epoch(self, logs: dict[str, float]) -> None:
        """The EMA model is evaluated (every ``eval_interval`` epochs and after the last; under DDP
        every rank predicts its share of the images, rank 0 scores them) and the best mAP@.5 kept;
        then ``on_epoch_end`` (checkpoints, results, printing). Every rank waits for rank 0."""
        state = self.state
        self.epoch_logs, self.metrics, self.improved = logs, {"map": float("nan"), "map50": float("nan")}, False
        if self._eval_due() and (self.main or self.world > 1):
            metrics = self._evaluate()
            if self.main:
                self.metrics = metrics
                self.callbacks.fire("on_eval_end", self)
        fitness = self.metrics["map50"]
        self.improved = fitness == fitness and fitness > state.best_fitness
        if self.improved:
            state.best_fitness = fitness
        self.callbacks.fire("on_epoch_end", self)
        barrier()

    def _eval_due(self) -> bool:
        last = self.state.epoch + 1 >= self.plan.epochs or self.state.step >= self.plan.total_steps
        return (self.state.epoch + 1) % self.opts.eval_interval == 0 or last

    def _evaluate(self) -> dict[str, float]:
        from .evaluate import evaluate

        shard = None
        if self.world > 1:  # the ranks' BatchNorm statistics differ: every rank evaluates rank 0's EMA
            broadcast_module(self.ema.module)
            shard = (self.rank, self.world)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return evaluate(self.ema.module, self.val_info, img_size=self.img_size, batch_size=self.plan.minibatch,
                            workers=self.opts.workers, device=self.device, verbose=False, shard=shard)

def train(opts: TrainOptions, device: torch.device, ckpt: dict[str, Any] | None = None,
          callbacks: Iterable[Any] | None = None) -> dict[str, Any]:
    """A whole run, under DDP when started by torchrun: set up, fit, leave the process group.
    ``callbacks``: as ``Trainer``'s (None: ``default_callbacks(opts)``)."""
    with distributed_session(device) as (rank, world, device):
        return Trainer(opts, device, ckpt, rank=rank, world=world, callbacks=callbacks).fit()
