"""The head seam: loss, trainer, augmentation, ModelInfo, export and evaluation ask the head.

A fake head type registered here (not [yolo], no code of its own anywhere in ``yolo/``) must be
collected by the model, trained through its own loss, asked for its NMS settings, jitter,
multi-scale wish, priors and settings row; and [yolo]'s Darknet defaults (``beta_nms`` 0.6) come
from one place whichever engine reads them.
"""
from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pytest
import torch

from yolo.augment import AugmentConfig
from yolo.backends.pytorch import TorchBackend
from yolo.cfg import Section
from yolo.darknet_map import darknet_nms
from yolo.evaluate import _nms
from yolo.heads import Head, HeadLoss
from yolo.heads.yolo import YOLOLayer, YoloSettings
from yolo.heads.yolo_loss import YoloLoss
from yolo.loss import YOLOLoss
from yolo.model import Darknet
from yolo.registry import BuildContext, register
from yolo.trainer import Trainer, TrainOptions, TrainSetupError, init_head_biases

from helpers import FIXTURES, ROOT

sys.path.insert(0, str(FIXTURES))
from train_synth import make_dataset  # noqa: E402

CLASSES = 3
FAKE_NMS = {"nms_kind": "diounms", "beta_nms": 0.25}


class FakeLoss(HeadLoss):
    """(sum of raw outputs, sum of squares, number of targets) per batch: easy to recompute."""

    calls: list[int] = []

    def __init__(self, heads: Sequence[Head]) -> None:
        self.heads = list(heads)

    def __call__(self, outputs: Sequence[torch.Tensor], targets: torch.Tensor,
                 input_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        FakeLoss.calls.append(len(outputs))
        box = sum(o.sum() for o in outputs)
        obj = sum(o.square().sum() for o in outputs)
        return box, obj, torch.tensor(float(len(targets)), device=outputs[0].device)


@register("test_fake_head")
class FakeHead(Head):
    """One box per cell: channels are 5 + classes; decoded like an anchor-free [yolo] of size stride."""

    def __init__(self, num_classes: int, stride: float, channels: int, refuse: bool) -> None:
        super().__init__(channels, stride)
        self.num_classes = num_classes
        self.refuse = refuse
        self.bias_calls: list[tuple[tuple[int, int], int, float]] = []

    @classmethod
    def from_section(cls, s: Section, ctx: BuildContext) -> "FakeHead":
        classes = s.int("classes", 1)
        if ctx.c_in != classes + 5:
            raise s.error(f"needs {classes + 5} channels, got {ctx.c_in}")
        return cls(classes, ctx.stride_in, ctx.c_in, s.bool("refuse", False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = x.float().permute(0, 2, 3, 1)  # (b, ny, nx, 5 + C)
        return p.contiguous() if self.training else self.decode(p).reshape(x.shape[0], -1, 5 + self.num_classes)

    def decode(self, p: torch.Tensor) -> torch.Tensor:
        ny, nx = p.shape[1:3]
        ys, xs = torch.meshgrid(torch.arange(ny, dtype=p.dtype), torch.arange(nx, dtype=p.dtype), indexing="ij")
        xy = (torch.sigmoid(p[..., :2]) + torch.stack((xs, ys), -1)) * self.out_stride
        return torch.cat((xy, torch.exp(p[..., 2:4]) * self.out_stride, torch.sigmoid(p[..., 4:])), -1)

    @classmethod
    def make_loss(cls, heads: Sequence[Head]) -> HeadLoss:
        return FakeLoss(heads)

    def nms_settings(self) -> dict[str, Any]:
        return dict(FAKE_NMS)

    @property
    def jitter(self) -> float:
        return 0.456

    @property
    def multiscale(self) -> bool:
        return True

    def training_problem(self) -> str | None:
        return "refuse=1 says so" if self.refuse else None

    def init_bias(self, bias: torch.Tensor, input_hw: tuple[int, int], num_heads: int,
                  objects_per_image: float) -> None:
        self.bias_calls.append((input_hw, num_heads, objects_per_image))
        with torch.no_grad():
            bias.fill_(0.125)

    def settings_row(self) -> tuple[str, str, str]:
        return ("fake head", "asked of the head", "cfg [test_fake_head]")


NET = """[net]
batch=4
subdivisions=1
width=64
height=64
channels=3
max_batches=10
"""
CONV = "[convolutional]\nbatch_normalize={bn}\nfilters={f}\nsize={k}\nstride={s}\npad=1\nactivation={a}\n\n"
YOLO = """[yolo]
mask=0,1,2
anchors=10,10, 20,20, 30,30
classes=3
num=3
{extra}
"""


def fake_cfg(tmp_path: Path, refuse: bool = False, with_yolo: bool = True, name: str = "fake.cfg",
             yolo_extra: str = "") -> Path:
    """conv s2 -> conv s2 -> head conv (8 = 5 + 3) -> [test_fake_head]; then, reading the stride-4 map
    again, a [yolo] head (24 = 3 x (5 + 3)) unless ``with_yolo`` is False."""
    body = (CONV.format(bn=1, f=8, k=3, s=2, a="leaky") + CONV.format(bn=1, f=8, k=3, s=2, a="leaky")
            + CONV.format(bn=0, f=5 + CLASSES, k=1, s=1, a="linear")
            + f"[test_fake_head]\nclasses={CLASSES}\nrefuse={int(refuse)}\n\n")
    if with_yolo:
        body += "[route]\nlayers=-3\n\n" + CONV.format(bn=0, f=3 * (5 + CLASSES), k=1, s=1, a="linear")
        body += YOLO.format(extra=yolo_extra)
    path = tmp_path / name
    path.write_text(NET + "\n" + body)
    return path


def build(path: Path) -> Darknet:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Darknet(path, warn_unused=False)


def test_the_model_collects_any_head_type(tmp_path):
    model = build(fake_cfg(tmp_path)).eval()
    fake, yolo = model.heads
    assert isinstance(fake, FakeHead) and isinstance(yolo, YOLOLayer)
    assert model.yolo_layers is model.heads  # the older name still works
    assert model.strides == [4.0, 4.0] and model.num_classes == CLASSES
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 64))
    assert out.shape == (1, 16 * 16 + 3 * 16 * 16, 5 + CLASSES)


def test_the_loss_sums_what_each_head_type_returns(tmp_path):
    model = build(fake_cfg(tmp_path)).train()
    torch.manual_seed(0)
    outs = [o.detach().requires_grad_() for o in model(torch.rand(2, 3, 64, 64))]
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.3, 0.3], [1, 2, 0.25, 0.3, 0.2, 0.4]])
    FakeLoss.calls.clear()
    loss, parts = YOLOLoss(model)(outs, targets, (64, 64))
    assert FakeLoss.calls == [1]  # the fake head type's own loss, once, with its one output
    box, obj, cls = YoloLoss([model.heads[1]])(outs[1:], targets, (64, 64))
    fake = torch.stack((outs[0].sum(), outs[0].square().sum(), torch.tensor(2.0)))
    expected = (fake + torch.stack((box, obj, cls))) / 2  # summed, then divided by the batch size
    torch.testing.assert_close(parts, expected.detach())
    torch.testing.assert_close(loss, expected.sum())
    grad = torch.autograd.grad(loss, outs[0])[0]  # the fake head's outputs get its loss's gradient
    torch.testing.assert_close(grad, (1 + 2 * outs[0].detach()) / 2)


def test_a_yolo_only_model_loses_nothing_in_the_sum():
    """The model-level sum of one [yolo] group is bit-identical to that group's own loss."""
    model = build(ROOT / "tests" / "fixtures" / "train_tiny.cfg").train()
    torch.manual_seed(0)
    outs = [o.detach() for o in model(torch.rand(2, 3, 128, 128))]
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.3, 0.3], [1, 2, 0.25, 0.3, 0.2, 0.4]])
    loss, parts = YOLOLoss(model)(outs, targets, (128, 128))
    box, obj, cls = YoloLoss(model.heads)(outs, targets, (128, 128))
    assert torch.equal(loss, (box + obj + cls) / 2) and torch.equal(parts, torch.stack((box, obj, cls)) / 2)


def test_model_info_augmentation_and_priors_ask_the_head(tmp_path):
    model = build(fake_cfg(tmp_path, with_yolo=False))
    info = TorchBackend(model).info
    assert info.extra == FAKE_NMS  # the last head's nms_settings(), nothing [yolo]-specific
    assert AugmentConfig.from_model(model).jitter == 0.456
    init_head_biases(model, objects_per_image=3.0)
    fake = model.heads[0]
    assert fake.bias_calls == [((64, 64), 1, 3.0)]
    assert torch.all(model.module_list[2].unit.conv.bias == 0.125)  # the conv feeding the head


def test_darknet_evaluation_uses_the_heads_nms(tmp_path):
    model = build(fake_cfg(tmp_path, with_yolo=False))
    nms = _nms(TorchBackend(model).info, True, 0.01, 0.45, 0, (64, 64))
    rng = np.random.default_rng(0)
    pred = np.concatenate((rng.uniform(10, 50, (40, 2)), rng.uniform(5, 30, (40, 2)), rng.uniform(0, 1, (40, 4))), 1)
    pred = pred.astype(np.float32)
    ours = nms(torch.from_numpy(pred[None]))[0]
    np.testing.assert_array_equal(ours, darknet_nms(pred, 0.01, 0.45, "diounms", 0.25, (64, 64)))
    assert not np.array_equal(ours, darknet_nms(pred, 0.01, 0.45, "diounms", 0.9, (64, 64)))


def trainer_opts(tmp_path: Path, cfg: Path) -> TrainOptions:
    data = make_dataset(tmp_path / "data", n_train=4, n_valid=2, size=64)
    return TrainOptions(cfg=str(cfg), data=str(data), output=str(tmp_path / "run"), epochs=1, workers=0,
                        progress=False)


def test_the_trainer_asks_the_heads(tmp_path):
    said: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Trainer(trainer_opts(tmp_path, fake_cfg(tmp_path)), torch.device("cpu"),
                say=lambda *a, **k: said.append(" ".join(map(str, a))))
    table = "\n".join(said)
    assert "asked of the head" in table and "cfg [test_fake_head]" in table  # the fake head's row
    assert "iou_loss=mse" in table  # and [yolo]'s, one per head type
    assert "multiscale" in table and "off" not in [line.split()[1] for line in table.splitlines()
                                                   if line.strip().startswith("multiscale")]


def test_the_trainer_refuses_what_a_head_says_it_cannot_train(tmp_path):
    with pytest.raises(TrainSetupError, match=r"test_fake_head.*refuse=1 says so"):
        Trainer(trainer_opts(tmp_path, fake_cfg(tmp_path, refuse=True)), torch.device("cpu"), say=lambda *a, **k: None)


# --- [yolo]'s defaults, written once ---------------------------------------------------------------
def test_beta_nms_default_is_the_same_in_the_torch_and_onnx_model_info(tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from yolo.backends import load_backend
    from yolo.export import export_onnx

    model = build(_yolo_only_cfg(tmp_path))  # its [yolo] states no beta_nms, no nms_kind
    torch_info = TorchBackend(model).info
    default = YoloSettings()
    assert torch_info.extra == {"nms_kind": default.nms_kind, "beta_nms": default.beta_nms}
    path = export_onnx(model, tmp_path / "plain.onnx")
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert (meta["nms_kind"], float(meta["beta_nms"])) == (default.nms_kind, default.beta_nms)
    assert _nms_of(load_backend(None, path).info.extra) == torch_info.extra


def _nms_of(extra: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in extra.items() if k in ("nms_kind", "beta_nms")}  # the onnx engine adds its file


def _yolo_only_cfg(tmp_path: Path, extra: str = "") -> Path:
    body = (CONV.format(bn=1, f=8, k=3, s=2, a="leaky") + CONV.format(bn=1, f=8, k=3, s=2, a="leaky")
            + CONV.format(bn=0, f=3 * (5 + CLASSES), k=1, s=1, a="linear") + YOLO.format(extra=extra))
    path = tmp_path / f"yolo{len(extra)}.cfg"
    path.write_text(NET + "\n" + body)
    return path


def test_a_cfgs_nms_settings_reach_model_info_and_the_onnx_file(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from yolo.backends import load_backend
    from yolo.export import export_onnx

    model = build(_yolo_only_cfg(tmp_path, "nms_kind=diounms\nbeta_nms=0.35"))
    info = TorchBackend(model).info
    assert info.extra == {"nms_kind": "diounms", "beta_nms": 0.35}
    path = export_onnx(model, tmp_path / "diou.onnx")
    assert _nms_of(load_backend(None, path).info.extra) == info.extra


def test_darknet_nms_has_no_beta_of_its_own():
    pred = np.array([[10, 10, 4, 4, 0.9, 1.0], [11, 10, 4, 4, 0.8, 1.0]], np.float32)
    with pytest.raises(ValueError, match="diounms needs beta_nms"):
        darknet_nms(pred, nms_kind="diounms")
    assert len(darknet_nms(pred)) == 1  # plain IoU NMS needs none


def test_old_import_path_and_inference_without_the_loss():
    from yolo.blocks.yolo_layer import YOLOLayer as Old

    assert Old is YOLOLayer and issubclass(YOLOLayer, Head)
    code = ("import sys, torch; from yolo.backends.pytorch import TorchBackend; from yolo.model import Darknet; "
            "m = Darknet('yolov3-tiny.cfg').eval(); TorchBackend(m)(torch.rand(1, 3, 416, 416)); "
            "print(sorted(k for k in sys.modules if k in ('yolo.loss', 'yolo.heads.yolo_loss')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"
