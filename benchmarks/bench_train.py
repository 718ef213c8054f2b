"""Training speed on CPU: yolov3-tiny at 416, batch 8 (one optimiser step per batch), real data loading.

Reference: a plain PyTorch port measured on the project's machine: 4.8 images/s (1.65 s per step);
target >= 1.25x. Also prints the share of the loop's time spent waiting for data.

    python benchmarks/bench_train.py [--steps 10] [--workers 2] [--img-size 416] [--batch 8]
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from yolo.augment import AugmentConfig  # noqa: E402
from yolo.datasets import load_dataset  # noqa: E402
from yolo.hyp import Hyp  # noqa: E402
from yolo.loaders import (  # noqa: E402
    TrainDataset,
    collate,
    worker_init,  # noqa: E402
)
from yolo.loss import YOLOLoss  # noqa: E402
from yolo.machine import machine_line  # noqa: E402
from yolo.model import Darknet  # noqa: E402
from yolo.trainer import build_optimizer  # noqa: E402

REFERENCE_IMG_S = 4.8


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--cfg", default="yolov3-tiny.cfg")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--img-size", type=int, default=416)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "coco128"))
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    print(machine_line(a.threads))
    warnings.simplefilter("ignore")
    data = Path(a.data)
    info = load_dataset(data / "annotations" / "instances_val2017.json", data / "val2017")
    model = Darknet(a.cfg).train()
    if a.channels_last:
        model = model.to(memory_format=torch.channels_last)
    aug = AugmentConfig.from_model(model)
    ds = TrainDataset(info.records * 4, a.img_size, aug, augment=True)
    loader = torch.utils.data.DataLoader(ds, batch_size=a.batch, shuffle=True, num_workers=a.workers,
                                         collate_fn=collate, worker_init_fn=worker_init if a.workers else None,
                                         persistent_workers=a.workers > 0)
    loss_fn = YOLOLoss(model)
    opt = build_optimizer(model, Hyp.from_net(model.net))
    it = iter(loader)
    wait = busy = 0.0
    n_img = 0
    for i in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        batch = next(it)
        t1 = time.perf_counter()
        imgs = batch["images"].float().div_(255)
        if a.channels_last:
            imgs = imgs.contiguous(memory_format=torch.channels_last)
        loss, _ = loss_fn(model(imgs), batch["targets"], tuple(imgs.shape[-2:]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        t2 = time.perf_counter()
        if i >= a.warmup:
            wait += t1 - t0
            busy += t2 - t1
            n_img += len(imgs)
    total = wait + busy
    ips = n_img / total
    print(f"{a.cfg} {a.img_size}x{a.img_size} batch {a.batch}, {a.steps} steps, {torch.get_num_threads()} threads, "
          f"{a.workers} workers, channels_last={a.channels_last}")
    print(f"  {ips:.2f} images/s, {total / a.steps:.3f} s/step; waiting for data {100 * wait / total:.1f}% of the time")
    print(f"  vs the plain port's {REFERENCE_IMG_S} images/s: {ips / REFERENCE_IMG_S:.2f}x (target >= 1.25x)")


if __name__ == "__main__":
    main()
