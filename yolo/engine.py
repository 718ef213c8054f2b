"""Training engine: Darknet's lr schedule, SGD groups, EMA, AMP, DDP helpers, one epoch, logs.

Darknet's bookkeeping is kept: an optimiser *step* is one Darknet "batch" (``batch`` images
through ``subdivisions`` forwards, gradients accumulated), the lr schedule (``burn_in``,
``steps``/``scales``, ``max_batches``) counts these steps, and ``seen`` counts images.
"""
from __future__ import annotations

import copy
import csv
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

LOSS_NAMES = ("box", "obj", "cls")
SUPPORTED_POLICIES = ("constant", "steps", "poly")


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss); the last checkpoint is left as it was."""


# ---------------------------------------------------------------------------------------------
# hyper-parameters and the learning-rate schedule
# ---------------------------------------------------------------------------------------------
@dataclass
class Hyp:
    """The hyper-parameters a run uses: [net] values, possibly overridden on the command line."""

    learning_rate: float = 0.001
    momentum: float = 0.9
    decay: float = 0.0005
    burn_in: int = 0
    power: float = 4.0
    policy: str = "constant"
    steps: list[int] = field(default_factory=list)
    scales: list[float] = field(default_factory=list)
    max_batches: int = 0
    batch: int = 64  # images per optimiser step (Darknet's batch)
    subdivisions: int = 1
    nesterov: bool = False

    @classmethod
    def from_net(cls, net: Any) -> "Hyp":
        return cls(learning_rate=net.learning_rate, momentum=net.momentum, decay=net.decay,
                   burn_in=net.burn_in, power=net.power, policy=net.policy, steps=list(net.steps),
                   scales=list(net.scales), max_batches=net.max_batches, batch=net.batch,
                   subdivisions=net.subdivisions)

    def fit_to_run(self, total_steps: int) -> list[str]:
        """Compress the cfg's schedule (written for ``max_batches`` steps) onto a shorter run.

        A COCO cfg warms up for 4000 steps and decays at 80 % / 90 % of 500k: kept verbatim, a
        fine-tuning run of a few hundred steps would never leave the warm-up. When the run is
        shorter than ``max_batches``, ``burn_in`` and ``steps`` are scaled by the same ratio (so
        they fall at the same fraction of the run). Returns notes saying what changed.
        """
        if not self.max_batches or total_steps >= self.max_batches:
            return []
        r = total_steps / self.max_batches
        notes = [f"schedule compressed to the run's {total_steps} steps (cfg max_batches={self.max_batches}, "
                 f"ratio {r:.4g})"]
        self.burn_in = int(round(self.burn_in * r))
        self.steps = [max(1, int(round(s * r))) for s in self.steps]
        self.max_batches = total_steps
        return notes


def lr_at(step: int, hyp: Hyp) -> float:
    """Darknet's ``get_current_rate`` for optimiser step ``step`` (0-based)."""
    lr = hyp.learning_rate
    if step < hyp.burn_in:
        return lr * ((step + 1) / hyp.burn_in) ** hyp.power
    if hyp.policy == "steps":
        for s, scale in zip(hyp.steps, hyp.scales):
            if s > step:
                break
            lr *= scale
        return lr
    if hyp.policy == "poly" and hyp.max_batches:
        return lr * max(0.0, 1 - step / hyp.max_batches) ** hyp.power
    return lr


# ---------------------------------------------------------------------------------------------
# optimiser, EMA, freezing
# ---------------------------------------------------------------------------------------------
def build_optimizer(model: nn.Module, hyp: Hyp) -> torch.optim.SGD:
    """SGD with momentum; weight decay on convolution weights only (not BatchNorm, not biases)."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            if isinstance(module, nn.modules.conv._ConvNd) and name == "weight":
                decay.append(p)
            else:
                no_decay.append(p)
    return torch.optim.SGD([{"params": decay, "weight_decay": hyp.decay},
                            {"params": no_decay, "weight_decay": 0.0}],
                           lr=hyp.learning_rate, momentum=hyp.momentum, nesterov=hyp.nesterov and hyp.momentum > 0)


class ModelEMA:
    """Exponential moving average of weights (and a copy of the buffers), used for evaluation.

    The decay ramps up from 0 (``decay * (1 - exp(-updates / tau))``) so that a short run, or the
    start of a long one, is not dominated by the initial weights.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000.0, updates: int = 0) -> None:
        self.module = copy.deepcopy(unwrap(model)).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay, self.tau, self.updates = decay, tau, updates

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.decay * (1 - math.exp(-self.updates / self.tau))
        msd = unwrap(model).state_dict()
        for k, v in self.module.state_dict().items():
            if v.dtype.is_floating_point:
                v.mul_(d).add_(msd[k].detach(), alpha=1 - d)
            else:
                v.copy_(msd[k])


@torch.no_grad()
def init_head_biases(model: nn.Module, objects_per_image: float = 8.0) -> None:
    """Start a from-scratch head from priors (as mmdetection does): objectness ~ a few objects per
    image spread over the grid, classes ~ uniform. Without it the first steps are spent pushing
    thousands of 0.5 objectness outputs down, which can wreck the young features."""
    m = unwrap(model)
    for i, block in enumerate(m.module_list):
        if not block.is_output:
            continue
        conv = next((c for c in reversed([mod for b in list(m.module_list)[:i] for mod in b.modules()])
                     if isinstance(c, nn.Conv2d)), None)
        if conv is None or conv.bias is None or conv.out_channels != block.num_anchors * block.num_attrib:
            continue
        b = conv.bias.view(block.num_anchors, block.num_attrib)
        cells = (m.net.width / block.stride) * (m.net.height / block.stride)
        b[:, 4] = math.log(objects_per_image / (cells * len(m.yolo_layers) * block.num_anchors))
        b[:, 5:] = math.log(1.0 / max(block.num_classes - 0.99, 1.0))


def freeze(model: nn.Module, n: int) -> list[str]:
    """Freeze the first ``n`` sections (weights and BatchNorm statistics); returns their names."""
    frozen = []
    for block in list(model.module_list)[:n]:
        for p in block.parameters():
            p.requires_grad_(False)
        block.eval()
        frozen.append(block.where)
    return frozen


def set_train_mode(model: nn.Module, frozen: int) -> None:
    """``model.train()`` but frozen sections keep their BatchNorm statistics."""
    m = unwrap(model)
    m.train()
    for block in list(m.module_list)[:frozen]:
        block.eval()


# ---------------------------------------------------------------------------------------------
# DDP helpers
# ---------------------------------------------------------------------------------------------
def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def init_distributed(device: torch.device) -> tuple[int, int, int]:
    """Join the process group torchrun describes (env RANK, WORLD_SIZE, LOCAL_RANK); gloo on CPU,
    NCCL on CUDA. Returns (rank, world_size, local_rank); (0, 1, 0) without torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, local


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        t = t.clone()
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return t


class SkipSampler(torch.utils.data.Sampler):
    """The indices of ``sampler`` after the first ``skip`` (to resume in the middle of an epoch)."""

    def __init__(self, sampler: torch.utils.data.Sampler, skip: int = 0) -> None:
        self.sampler, self.skip = sampler, skip

    def __iter__(self) -> Iterator[int]:
        for n, i in enumerate(self.sampler):
            if n >= self.skip:
                yield i

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)


# ---------------------------------------------------------------------------------------------
# multi-scale
# ---------------------------------------------------------------------------------------------
def multiscale_range(img_size: int, stride: int) -> tuple[int, int]:
    """Darknet's [320, 608] around 416, scaled to ``img_size`` (multiples of the network stride)."""
    lo = max(stride, int(round(img_size * 10 / 13 / stride)) * stride)
    hi = max(lo, int(round(img_size * 19 / 13 / stride)) * stride)
    return lo, hi


def multiscale_size(step: int, seed: int, lo: int, hi: int, stride: int, every: int = 10) -> int:
    """A new size every ``every`` optimiser steps, the same on every rank and after a resume."""
    rng = np.random.default_rng((seed, 7919, step // every))
    return int(rng.integers(lo // stride, hi // stride + 1)) * stride


# ---------------------------------------------------------------------------------------------
# one epoch
# ---------------------------------------------------------------------------------------------
@dataclass
class TrainState:
    """Where a run is: completed epochs, optimiser steps, minibatches done in the current epoch."""

    epoch: int = 0  # the epoch being trained (0-based)
    step: int = 0  # optimiser steps done (Darknet's batches)
    batch_in_epoch: int = 0  # minibatches done in ``epoch`` (at a step boundary)
    seen: int = 0  # images trained on
    skipped: int = 0  # images that failed to load
    best_fitness: float = -1.0
    wait_s: float = 0.0  # time spent waiting for data in this epoch
    busy_s: float = 0.0


def train_one_epoch(model: nn.Module, loss_fn: Any, optimizer: torch.optim.Optimizer, loader: Any,
                    state: TrainState, hyp: Hyp, device: torch.device, accumulate: int,
                    ema: ModelEMA | None = None, scaler: torch.amp.GradScaler | None = None,
                    multiscale: tuple[int, int, int, int] | None = None, total_steps: int | None = None,
                    frozen: int = 0, rank: int = 0, progress: bool = True,
                    channels_last: bool = False) -> dict[str, float]:
    """Train ``loader`` once; optimiser step every ``accumulate`` minibatches (and at the end).

    ``multiscale`` is (lo, hi, stride, seed): the batch is resized to a size drawn every 10
    steps. Stops early, at a step boundary, when ``total_steps`` is reached. ``state`` is kept
    current so that an interrupt can save it. Returns the epoch's mean losses, lr and speed.
    """
    set_train_mode(model, frozen)
    amp = scaler is not None and scaler.is_enabled()
    sums = torch.zeros(4)
    count = 0
    n_batches = len(loader)
    bar = tqdm(total=state.batch_in_epoch + n_batches, initial=state.batch_in_epoch, disable=not progress or rank != 0,
               desc=f"epoch {state.epoch + 1}", unit="batch", dynamic_ncols=True, leave=True)
    optimizer.zero_grad(set_to_none=True)
    micro = 0
    lr = lr_at(state.step, hyp)
    state.wait_s = state.busy_s = 0.0
    t_ready = time.perf_counter()
    it = iter(loader)
    for n in range(n_batches):
        batch = next(it)
        t_got = time.perf_counter()
        state.wait_s += t_got - t_ready
        state.skipped += batch["skipped"]
        last = n == n_batches - 1
        if batch["images"] is not None:
            imgs = batch["images"].to(device, non_blocking=True).float().div_(255.0)
            if channels_last:
                imgs = imgs.contiguous(memory_format=torch.channels_last)
            if multiscale is not None:
                lo, hi, stride, seed = multiscale
                size = multiscale_size(state.step, seed, lo, hi, stride)
                if size != imgs.shape[-1] or size != imgs.shape[-2]:
                    imgs = F.interpolate(imgs, size=(size, size), mode="bilinear", align_corners=False)
                    if channels_last:
                        imgs = imgs.contiguous(memory_format=torch.channels_last)
            sync = micro + 1 >= accumulate or last
            ctx = model.no_sync() if (not sync and hasattr(model, "no_sync")) else _null()
            with ctx:
                with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                    outputs = model(imgs)
                loss, parts = loss_fn(outputs, batch["targets"], tuple(imgs.shape[-2:]))
                if not torch.isfinite(loss):
                    raise TrainingError(f"non-finite loss ({loss.item()}) at step {state.step}, "
                                        f"epoch {state.epoch + 1}: lower the learning rate (--lr) or "
                                        f"lengthen the warm-up (--burn-in)")
                (scaler.scale(loss) if amp else loss).div(accumulate).backward()
            sums += torch.cat((parts.float().cpu(), loss.detach().float().cpu()[None]))
            count += 1
            state.seen += len(imgs) * (dist.get_world_size() if dist.is_initialized() else 1)
        micro += 1
        if micro >= accumulate or last:
            lr = lr_at(state.step, hyp)
            for g in optimizer.param_groups:
                g["lr"] = lr
            if amp:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update(model)
            state.step += 1
            state.batch_in_epoch += micro
            micro = 0
            unwrap(model).seen = state.seen
        bar.update(1)
        if count:
            m = sums / count
            bar.set_postfix_str(f"box {m[0]:.3f} obj {m[1]:.3f} cls {m[2]:.3f} lr {lr:.2e} step {state.step}")
        t_ready = time.perf_counter()
        state.busy_s += t_ready - t_got
        if total_steps is not None and state.step >= total_steps and micro == 0:
            break
    bar.close()
    means = all_reduce_mean(sums / max(count, 1))
    return {"box": float(means[0]), "obj": float(means[1]), "cls": float(means[2]), "total": float(means[3]),
            "lr": lr, "data_wait": state.wait_s / max(state.wait_s + state.busy_s, 1e-9)}


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


# ---------------------------------------------------------------------------------------------
# results.csv / results.png
# ---------------------------------------------------------------------------------------------
RESULT_FIELDS = ["epoch", "step", "box", "obj", "cls", "total", "lr", "map", "map50", "data_wait", "time_s"]


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
        return [{k: float(v) for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(f)]


# ---------------------------------------------------------------------------------------------
# checkpoint state
# ---------------------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    out: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(s: dict[str, Any]) -> None:
    if "torch" in s:
        torch.set_rng_state(s["torch"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def training_state(model: nn.Module, ema: ModelEMA | None, optimizer: torch.optim.Optimizer,
                   scaler: torch.amp.GradScaler | None, state: TrainState, hyp: Hyp,
                   names: list[str], args: dict[str, Any], epoch_done: bool) -> dict[str, Any]:
    """Everything an exact resume needs, as plain tensors/str/numbers (loadable with weights_only)."""
    m = unwrap(model)
    return {
        "model": {k: v.detach().clone() for k, v in m.state_dict().items()},
        "ema": ema.module.state_dict() if ema is not None else None,
        "ema_updates": ema.updates if ema is not None else 0,
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "epoch": state.epoch + 1 if epoch_done else state.epoch,  # next epoch to train
        "batch_in_epoch": 0 if epoch_done else state.batch_in_epoch,
        "step": state.step,
        "seen": state.seen,
        "best_fitness": state.best_fitness,
        "lr": lr_at(max(state.step - 1, 0), hyp),
        "hyp": asdict(hyp),
        "cfg_text": m.cfg_text,
        "cfg_name": m.cfg_path.name,
        "names": list(names),
        "args": args,
        "rng": rng_state(),
    }
