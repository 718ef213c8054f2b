"""Network slimming of the shipped model on coco128, end to end: the figures issue 14 asks for.

Stages, each through the project's own commands (``train.py``, ``python -m yolo.prune``,
``test.py``), on ``../shared/data/coco128`` (train = val = the 128 images, as in the README's
fine-tuning example):

1. ``base``: the shipped yolo-fastest-1.1 as it is;
2. ``ft``: fine-tuned unpruned (the reference a pruned model is judged against);
3. ``sparse``: fine-tuned with ``--sparsity S`` (L1 on the BN scales);
4. for each ``--ratios`` R: ``pR``: the sparse model pruned (no training), then ``pR-ft``: fine-tuned.

For each stage: parameters, BFLOPs at 320 (``yolo.info``'s count), forward ms of the fused model
(batch 1, 2 threads, all models timed round-robin in this one process, as a ratio to the shipped
model) and pycocotools mAP@.5 / mAP@[.5:.95] (test.py defaults). About 8 min on 2 cores at
``--epochs 5``, 30 min at 20. Train = val: the mAP figures are training-set figures.

    python benchmarks/prune_coco128.py [--epochs 20] [--sparsity 1] [--ratios 0.1,0.3] [--prune-lr 0.001] \
        [--out runs/prune128]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from yolo import Darknet  # noqa: E402
from yolo.checkpoint import load_weights  # noqa: E402
from yolo.info import layer_table, total_bflops  # noqa: E402
from yolo.machine import machine_line  # noqa: E402

from bench_inference import THREADS, interleaved_ms  # noqa: E402

COCO = ROOT.parent / "shared" / "data" / "coco128"
DATA = ["--data", str(COCO / "annotations" / "instances_val2017.json"), "--images", str(COCO / "val2017")]
CFG = "yolo-fastest-1.1.cfg"


def sh(*args: str) -> None:
    print("$", " ".join(args), flush=True)
    subprocess.run([sys.executable, *args], cwd=ROOT, check=True)


def train(cfg: str, weights: str, out: Path, epochs: int, lr: float, extra: list[str]) -> str:
    every = str(max(1, epochs // 4))  # evaluate a few times per run, not every epoch
    sh("train.py", "--cfg", cfg, "--weights", weights, *DATA, "--epochs", str(epochs), "--batch", "16",
       "--batch-size", "16", "--lr", str(lr), "--workers", "1", "--no-progress", "--output", str(out),
       "--eval-interval", every, *extra)
    return str(out / "last.pt")


def evaluate(cfg: str, weights: str, out: Path) -> dict:
    path = out.parent / (out.name + ".json")
    sh("test.py", "--cfg", cfg, "--weights", weights, *DATA, "--metrics-json", str(path))
    return json.loads(path.read_text())


def load(cfg: str, weights: str) -> Darknet:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = Darknet(cfg, warn_unused=False)
        load_weights(model, weights)  # a .pt: its EMA, as train.py evaluates it
    return model.eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=20, help="epochs of each fine-tuning stage")
    p.add_argument("--lr", type=float, default=1e-4, help="learning rate of the unpruned fine-tuning stages")
    p.add_argument("--prune-lr", type=float, default=1e-3,
                   help="learning rate after pruning (a damaged model needs more than --lr)")
    p.add_argument("--sparsity", type=float, default=1.0)
    p.add_argument("--ratios", default="0.1,0.3", help="comma-separated pruning ratios")
    p.add_argument("--out", default="runs/prune128")
    args = p.parse_args()
    if not COCO.is_dir():
        sys.exit(f"{COCO} is missing: this experiment needs ../shared/data/coco128")
    out = (ROOT / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    shipped = str(ROOT / "weights" / "yolo-fastest-1.1.weights")
    stages: dict[str, tuple[str, str]] = {"base": (CFG, shipped)}
    stages["ft"] = (CFG, train(CFG, shipped, out / "ft", args.epochs, args.lr, []))
    stages["sparse"] = (CFG, train(CFG, shipped, out / "sparse", args.epochs, args.lr,
                                   ["--sparsity", str(args.sparsity)]))
    for r in [float(r) for r in args.ratios.split(",")]:
        cfg, weights = str(out / f"p{r}.cfg"), str(out / f"p{r}.weights")
        sh("-m", "yolo.prune", "--cfg", CFG, "--weights", stages["sparse"][1], "--ratio", str(r),
           "--out-cfg", cfg, "--out-weights", weights, "--time-runs", "0")
        stages[f"p{r}"] = (cfg, weights)
        stages[f"p{r}-ft"] = (cfg, train(cfg, weights, out / f"p{r}-ft", args.epochs, args.prune_lr, []))

    metrics = {name: evaluate(cfg, w, out / f"metrics-{name}") for name, (cfg, w) in stages.items()}
    report(stages, metrics)


def report(stages: dict[str, tuple[str, str]], metrics: dict[str, dict]) -> None:
    """One row per stage: parameters, BFLOPs, fused forward ms (round-robin, and / the first stage's), mAP."""
    torch.set_num_threads(THREADS)
    print(machine_line(THREADS))
    x = torch.rand(1, 3, 320, 320)
    first = next(iter(stages))
    size: dict[str, tuple[int, float]] = {}
    fused: dict[str, Darknet] = {}
    for name, (cfg, w) in stages.items():
        model = load(cfg, w)
        size[name] = (sum(t.numel() for t in model.parameters()), total_bflops(layer_table(model, (320, 320))))
        fused[name] = model.fuse()
    with torch.inference_mode():
        ms = interleaved_ms({n: (lambda m=m: m(x)) for n, m in fused.items()}, repeat=50)
    print(f"\n{'stage':<10}{'params':>10}{'BFLOPs':>9}{'fwd ms':>8}{'x base':>8}{'mAP@.5':>8}{'mAP':>8}")
    for name, (params, bflops) in size.items():
        m = metrics[name]
        print(f"{name:<10}{params:>10,}{bflops:>9.3f}{ms[name]:>8.2f}{ms[name] / ms[first]:>8.2f}"
              f"{m['map50']:>8.3f}{m['map']:>8.3f}")


if __name__ == "__main__":
    main()
