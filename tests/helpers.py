"""What the tests share: paths, tiny cfgs built in a temp folder, randomised BatchNorm."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

from yolo import Darknet

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("YOLO_SHARED", ROOT.parent / "shared"))
FIXTURES = Path(__file__).resolve().parent / "fixtures"
TINY = FIXTURES / "tiny.cfg"  # inference-only fixture
TRAIN_TINY = FIXTURES / "train_tiny.cfg"  # a cfg small enough to train in seconds

NET = "[net]\nwidth={w}\nheight={w}\nchannels={c}\n\n"


def build(tmp_path: Path, body: str, c: int = 4, w: int = 32, name: str = "t.cfg") -> Darknet:
    """A Darknet model from a cfg body written under a minimal [net] (c channels, w x w)."""
    path = tmp_path / name
    path.write_text(NET.format(w=w, c=c) + body)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Darknet(path, warn_unused=False)


def randomize(model: nn.Module, seed: int = 0, conv_bias: bool = True) -> nn.Module:
    """Non-default BatchNorm affine parameters and statistics (and random conv biases), so that
    folding and stream-order mistakes change the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
                m.running_mean.copy_((torch.rand(m.running_mean.shape, generator=g) - 0.5) * 0.4)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            elif conv_bias and isinstance(m, nn.Conv2d) and m.bias is not None:
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
    return model
