"""Exponential moving average of a model's weights, the model that is evaluated and saved as best."""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from .distributed import unwrap
from .params import default


class ModelEMA:
    """EMA of the weights (buffers such as BatchNorm's ``num_batches_tracked`` are copied).

    The decay ramps up from 0, ``decay * (1 - exp(-updates / tau))``, so that a short run, or the
    start of a long one, is not dominated by the initial weights.
    """

    def __init__(self, model: nn.Module, decay: float = default("ema_decay"), tau: float = 2000.0,
                 updates: int = 0) -> None:
        self.module = copy.deepcopy(unwrap(model)).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay, self.tau, self.updates = decay, tau, updates

    def current_decay(self) -> float:
        """The decay the next ``update`` uses (after it has counted itself)."""
        return self.decay * (1 - math.exp(-(self.updates + 1) / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        self.updates += 1
        msd = unwrap(model).state_dict()
        for k, v in self.module.state_dict().items():
            if v.dtype.is_floating_point:
                v.mul_(d).add_(msd[k].detach(), alpha=1 - d)
            else:
                v.copy_(msd[k])
