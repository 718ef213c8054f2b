"""Reduced precision: bf16 inference agrees with float32 on every cfg, keeps the shipped model's
mAP on coco128, fine-tunes with --amp; fp16 / bf16 where they cannot run fail with the reason."""
from __future__ import annotations

import json
import re
import warnings

import pytest
import torch

from yolo.backends import BackendError, load_backend
from yolo.backends import pytorch as torch_backend
from yolo.backends.pytorch import TorchBackend, cpu_bf16_problem
from yolo.blocks.yolo_layer import YOLOLayer
from yolo.cfg import ConfigError
from yolo.checkpoint import load_checkpoint, load_weights
from yolo.cli import detect as detect_cli
from yolo.cli import train as train_cli
from yolo.datasets import load_dataset
from yolo.evaluate import evaluate
from yolo.model import Darknet
from yolo.trainer import TrainSetupError, amp_dtype

from helpers import ROOT, build, randomize

needs_bf16 = pytest.mark.skipif(cpu_bf16_problem() is not None,
                                reason=f"no native bf16 on this CPU: {cpu_bf16_problem()}")
CFGS = sorted(p.name for p in (ROOT / "cfg").glob("*.cfg"))


def _model(cfg: str) -> tuple[Darknet, int]:
    """A randomised model (non-default BatchNorm, conv biases) and the smallest input side, at
    most 8 strides, every block can run at: big cfgs are cheap at 64 x 64."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = randomize(Darknet(ROOT / "cfg" / cfg, warn_unused=False), seed=1).eval()
    for k in (2, 4, 8):
        side = model.max_stride * k
        try:
            model.output_shapes(side, side)
            return model, side
        except ConfigError:  # scnet's pooling needs larger maps
            continue
    raise AssertionError(f"{cfg}: no input size up to 8 strides")


def _row_strides(model: Darknet, side: int) -> torch.Tensor:
    """The stride of each output row (rows come head by head, na * ny * nx each)."""
    parts = [torch.full((layer.num_anchors * (side // int(layer.out_stride)) ** 2,), float(layer.out_stride))
             for layer in model.yolo_layers]
    return torch.cat(parts)


# --- bf16 agrees with float32 ---------------------------------------------------------------
@needs_bf16
@pytest.mark.parametrize("cfg", CFGS)
def test_bf16_agrees_with_fp32(cfg):
    """bfloat16 keeps 8 significant bits: each rounding (weights once, activations after every
    layer; oneDNN accumulates in fp32) is off by at most u = 2^-8 relative. Independent errors
    add like a random walk, so after L ~ 100 layers (resnet50-yolov3) a head logit t = O(1) is
    off by about u * sqrt(L) ~ 0.04. Decoded: log(w), log(h) are t itself (0.04); objectness
    and classes are sigmoid(t), slope <= 1/4 (0.01); x, y are sigmoid(t) cells (0.01 cell).
    Those are the bounds; the measured errors are 5-15x smaller. A decode in bf16 (grid + offset
    rounded to 2^-5 cell at x = 8 cells) or bf16 anchors (319 -> 320) would break them."""
    model, side = _model(cfg)
    batch = 1 if model.num_weight_floats() > 20e6 else 2  # the yolov3-sized ones: one image is enough
    x = torch.rand(batch, 3, side, side, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = model(x)  # float32, unfused: the reference
    engine = TorchBackend(model, "bf16")  # handed over: fused, channels_last, cast in place
    assert engine.dtype == torch.bfloat16 and engine.describe() == "torch bf16 on cpu"
    assert all(layer.anchors.dtype == torch.float32 for layer in engine.model.yolo_layers)
    assert next(m for m in engine.model.modules() if isinstance(m, torch.nn.Conv2d)).weight.dtype == torch.bfloat16
    out = engine(x)
    assert out.dtype == torch.float32 and out.shape == ref.shape and torch.isfinite(out).all()
    strides = _row_strides(model, side)[None, :, None]
    xy_cells = ((out[..., :2] - ref[..., :2]) / strides).abs().max().item()
    log_wh = (out[..., 2:4].log() - ref[..., 2:4].log()).abs().max().item()
    obj = (out[..., 4] - ref[..., 4]).abs().max().item()
    cls = (out[..., 5:] - ref[..., 5:]).abs().max().item()
    print(f"{cfg} @{side}: max |d xy| {xy_cells:.2e} cells, |d log wh| {log_wh:.2e}, |d obj| {obj:.2e}, "
          f"|d cls| {cls:.2e}")
    assert 0 < xy_cells <= 0.01 and log_wh <= 0.04 and obj <= 0.01 and cls <= 0.01


@needs_bf16
@pytest.mark.parametrize("act", ["leaky", "relu", "linear", "logistic", "swish", "mish", "relu6", "tanh"])
def test_conv_activation_fusion_matches(tmp_path, act):
    """Each convolution's activation runs inside it where oneDNN has it (mish has not: separate);
    the result is the unfused pair's, within bf16 rounding, and a second input size still works
    (shape inference reads the fused unit's geometry)."""
    body = (f"[convolutional]\nbatch_normalize=1\nfilters=8\nsize=3\nstride=2\npad=1\nactivation={act}\n\n"
            "[convolutional]\nfilters=8\nsize=3\ngroups=8\nstride=1\npad=1\nactivation=leaky\n\n"
            "[convolutional]\nfilters=14\nsize=1\nstride=1\npad=1\nactivation=linear\n\n"
            "[yolo]\nmask=0,1\nanchors=10,13, 344,319\nclasses=2\nnum=2\n")
    model = randomize(build(tmp_path, body, c=3, w=32))
    model.eval()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = model(x)
    engine = TorchBackend(model, "bf16")
    fused = [m for m in engine.model.modules() if isinstance(m, torch_backend.ConvAct)]
    assert len(fused) == (3 if act != "mish" else 2)
    out = engine(x)
    torch.testing.assert_close(out[..., 4:], ref[..., 4:], atol=0.01, rtol=0)
    torch.testing.assert_close(out[..., 2:4].log(), ref[..., 2:4].log(), atol=0.04, rtol=0)
    assert engine(torch.rand(1, 3, 64, 64)).shape == (1, 2 * 32 * 32, 7)  # 2 anchors on a 32 x 32 map


@needs_bf16
def test_layers_kept_in_fp32_where_asked(monkeypatch, fastest_cfg):
    """The hook for a convolution type measured slower in bf16: depthwise ones kept in float32
    (cast around them) still give the float32 answer within bf16 rounding."""
    monkeypatch.setattr(torch_backend, "KEEP_FP32", lambda conv: conv.groups > 1 and conv.groups == conv.in_channels)
    model, side = _model("yolo-fastest-1.1.cfg")
    x = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = model(x)
    engine = TorchBackend(model, "bf16")
    islands = [m for m in engine.model.modules() if isinstance(m, torch_backend.Fp32Island)]
    assert islands and all(m.conv.weight.dtype == torch.float32 for m in islands)
    torch.testing.assert_close(engine(x)[..., 4:], ref[..., 4:], atol=0.01, rtol=0)


def test_yolo_layer_decodes_in_fp32():
    """A reduced-precision input is cast up before decoding: float32 out, the same numbers as
    decoding the cast input (bf16 would put x = grid + offset on a 2^-5 cell grid past 8 cells)."""
    anchors = torch.tensor([[344.0, 319.0], [10.0, 13.0]])
    layer = YOLOLayer(anchors, 2, 32.0, 1.0, False, 14).eval()
    x = torch.randn(1, 14, 16, 16).to(torch.bfloat16)
    out = layer(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, layer(x.float()), rtol=0, atol=0)
    layer.train()
    assert layer(x).dtype == torch.float32  # raw training output too: the loss runs in float32


# --- the shipped model on coco128 -------------------------------------------------------------
@needs_bf16
def test_bf16_coco128_map_matches_fp32(coco128, fastest_cfg, fastest_weights):
    """Known: fp32 0.1708 / 0.3292, bf16 0.1715 / 0.3297 (conf 0.005, @320)."""
    info = load_dataset(coco128 / "annotations" / "instances_val2017.json", coco128 / "val2017")
    model = Darknet(fastest_cfg)
    load_weights(model, fastest_weights)
    kw = dict(img_size=320, conf_thres=0.005, nms_thres=0.45, max_det=100, workers=1, verbose=False)
    fp32 = evaluate(model, info, fuse=True, **kw)
    bf16 = evaluate(model, info, precision="bf16", **kw)
    assert next(model.parameters()).dtype == torch.float32 and not model.fused  # the caller's model untouched
    print(f"coco128 yolo-fastest-1.1 @320: fp32 {fp32['map']:.4f}/{fp32['map50']:.4f}, "
          f"bf16 {bf16['map']:.4f}/{bf16['map50']:.4f}")
    assert abs(bf16["map"] - fp32["map"]) <= 0.005 and abs(bf16["map50"] - fp32["map50"]) <= 0.005
    assert fp32["map50"] >= 0.329


# --- training with --amp (bf16 autocast on the CPU) ----------------------------------------------
@needs_bf16
def test_bf16_finetune_on_coco128_improves(coco128, fastest_cfg, fastest_weights, tmp_path, capsys):
    """tests/test_train.py's fine-tune, under --amp: 2 epochs raise mAP@.5 above the 0.329 the
    pretrained model starts from; the checkpoint stays float32."""
    out = tmp_path / "ft"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = train_cli.main([
            "--cfg", str(fastest_cfg), "--weights", str(fastest_weights), "--data",
            str(coco128 / "annotations" / "instances_val2017.json"), "--images", str(coco128 / "val2017"),
            "--epochs", "2", "--batch", "16", "--batch-size", "16", "--lr", "1e-4", "--no-mosaic", "--amp",
            "--eval-interval", "2",  # one evaluation, after the last epoch
            "--output", str(out), "--no-progress", "--workers", "0"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "bfloat16" in printed  # the settings table says what ran
    assert re.search(r"^epoch 1/2: .* not evaluated \(--eval-interval\)", printed, re.M)  # not "mAP nan"
    assert re.search(r"^epoch 2/2: .* mAP@\.5 0\.\d{4} mAP 0\.\d{4}", printed, re.M)
    summary = json.loads((out / "summary.json").read_text())
    print(f"bf16 fine-tune: best mAP@.5 {summary['best_map50']:.4f}")
    assert summary["best_map50"] > 0.329, summary
    state = load_checkpoint(out / "last.pt")
    assert all(v.dtype == torch.float32 for v in state["model"].values() if v.dtype.is_floating_point)


def test_amp_dtype_choice(monkeypatch):
    cpu = torch.device("cpu")
    assert amp_dtype(cpu, None) is None and amp_dtype(cpu, False) is None  # off by default on the CPU
    monkeypatch.setattr(torch_backend, "cpu_bf16_problem", lambda: None)
    assert amp_dtype(cpu, True) == torch.bfloat16
    monkeypatch.setattr(torch_backend, "cpu_bf16_problem", lambda: "this CPU (Test) has no bf16")
    with pytest.raises(TrainSetupError, match="no bf16.*--no-amp"):
        amp_dtype(cpu, True)


# --- what cannot run says so -------------------------------------------------------------------
def test_bf16_without_cpu_support_is_a_clear_error(monkeypatch, fastest_cfg, fastest_weights):
    monkeypatch.setattr(torch_backend, "cpu_bf16_problem",
                        lambda: "this CPU (Test CPU) has no native bfloat16 instructions")
    with pytest.raises(BackendError, match=r"bf16 on the CPU: this CPU \(Test CPU\) has no native bfloat16.*"
                                           r"Use fp32"):
        load_backend(fastest_cfg, fastest_weights, precision="bf16")
    with pytest.raises(BackendError, match="bf16"):
        TorchBackend(Darknet(fastest_cfg), "bf16")


def test_fp16_on_cpu_is_a_clear_error(fastest_cfg, fastest_weights, tmp_path, capsys):
    with pytest.raises(BackendError, match="fp16 needs a CUDA device.*use bf16.*or fp32"):
        load_backend(fastest_cfg, fastest_weights, precision="fp16", device="cpu")
    image = next(p for p in (ROOT / "data" / "samples").iterdir() if p.suffix.lower() in (".jpg", ".png"))
    code = detect_cli.main(["--cfg", str(fastest_cfg), "--weights", str(fastest_weights), "--source", str(image),
                            "--half", "--device", "cpu", "--output", str(tmp_path), "--no-progress", "--quiet"])
    err = capsys.readouterr().err
    assert code != 0 and "fp16 needs a CUDA device" in err and "Traceback" not in err


def test_evaluate_refuses_a_precision_its_engine_does_not_run(fastest_cfg):
    """evaluate(engine, precision=...) cannot recast an engine it was handed: it says so."""
    from yolo.evaluate import EvalError, _engine

    engine = TorchBackend(Darknet(fastest_cfg).fuse(), "fp32")
    with pytest.raises(EvalError, match="engine given runs fp32"):
        _engine(engine, None, False, "bf16")


def test_cpu_bf16_problem_names_the_missing_instructions(monkeypatch):
    monkeypatch.setattr(torch.cpu, "get_capabilities",
                        lambda: {"cpu_name": "Old CPU", "avx512_bf16": False, "amx_bf16": False}, raising=False)
    problem = cpu_bf16_problem()
    if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        assert problem is not None and "Old CPU" in problem and "AVX-512 BF16" in problem
    else:
        assert problem is not None
