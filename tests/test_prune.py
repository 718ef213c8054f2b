"""Channel pruning (yolo.prune): exact on channels whose BN scale and shift are zero, for every cfg;
bias folding; OpenCV reads the pruned standard cfgs; refusals; the report; the sparsity penalty."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from yolo import Darknet, prune
from yolo.checkpoint import save_checkpoint
from yolo.prune import PruneError, SparsityPenalty, prune_model, sparsity_at, trace
from yolo.pruning import graph as graph_mod
from yolo.pruning.graph import ConvOp, group_table

from helpers import ROOT, build, randomize

CFGS = sorted(p.stem for p in (ROOT / "cfg").glob("*.cfg"))
# small inputs: a side the deepest stride divides; SCNet's pooling_r=4 needs a 4-cell map at stride 32
SIZES = {"scnet50-yolov3": 128, "yolov3-tiny": 64, "yolov3-tiny-ac": 64, "yolov4-tiny": 64, "yolo-fastest-1.1": 64}


def load(name: str) -> Darknet:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Darknet(ROOT / "cfg" / f"{name}.cfg", warn_unused=False)


def zero_groups(model: Darknet, share: float, seed: int = 0, shift: float | None = 0.0,
                pick=None) -> set[int]:
    """Set the BN scale (and shift, to ``shift``; None: leave it) of a random ``share`` of the prunable
    channel groups to zero, on every BN of the group (so pruning must remove exactly them)."""
    g = trace(model).graph
    scores, _ = group_table(g)
    gen = torch.Generator().manual_seed(seed)
    roots = [r for r in sorted(scores) if pick is None or pick(g, r)]
    chosen = {r for r in roots if torch.rand(1, generator=gen).item() < share}
    with torch.no_grad():
        for op in g.ops:
            if isinstance(op, ConvOp):
                mask = torch.tensor([g.find(n) in chosen for n in g.nodes(op.dst)], dtype=torch.bool)
                for _, bn in op.unit.weight_units():
                    if bn is not None:
                        bn.weight[mask] = 0
                        if shift is not None:
                            bn.bias[mask] = shift
    return chosen


def outputs(model: Darknet, size: int, seed: int = 0) -> torch.Tensor:
    x = torch.rand(1, model.net.channels, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.eval().double()(x.double())


@pytest.mark.parametrize("name", CFGS)
def test_pruning_zeroed_channels_is_exact(name):
    model = randomize(load(name), seed=1)
    chosen = zero_groups(model, 0.3)
    result = prune_model(model, threshold=1e-3)
    removed = result.decision.removed
    assert removed <= chosen and len(removed) > 0.8 * len(chosen)  # constraints may keep back a few (still zero)
    before = sum(p.numel() for p in model.parameters())
    after = sum(p.numel() for p in result.model.parameters())
    assert after < 0.9 * before
    size = SIZES.get(name, 32)  # the big ones at 32 px (a 1x1 map at stride 32): double precision is slow
    a, b = outputs(model, size), outputs(result.model, size)
    assert a.shape == b.shape
    assert (a - b).abs().max().item() < 1e-4
    # the heads keep every channel
    for old, new in zip(model.yolo_layers, result.model.yolo_layers):
        assert old.num_attrib == new.num_attrib and old.num_anchors == new.num_anchors


def _read_by_1x1_only(g, root) -> bool:
    """A group whose every tensor is read only by dense 1x1 convolutions (so its constant folds exactly)."""
    tensors = {t for t in range(len(g.sizes)) for n in g.nodes(t) if g.find(n) == root}
    readers = [op for op in g.ops if (isinstance(op, ConvOp) and op.src in tensors)
               or (not isinstance(op, ConvOp) and any(t in tensors for t, _, _ in op.srcs))]
    return bool(readers) and all(isinstance(op, ConvOp) and op.unit.weight_units().__next__()[0].kernel_size == (1, 1)
                                 and op.unit.weight_units().__next__()[0].groups == 1 for op in readers)


FOLD_BODY = """
[convolutional]
filters=8
size=3
batch_normalize=1
activation={act}

[convolutional]
filters=12
size=1
batch_normalize=1
activation={act}

[convolutional]
filters=8
size=1
batch_normalize=1
activation=linear

[shortcut]
from=-3
activation={act}

[convolutional]
filters=10
size=1
activation=linear

[convolutional]
filters=18
size=1
activation=linear

[yolo]
mask=0,1,2
anchors=4,5, 8,9, 12,10
classes=1
num=3
"""


@pytest.mark.parametrize("act", ["leaky", "relu", "linear"])
def test_bias_folding_keeps_outputs_when_removed_channels_have_a_shift(tmp_path, act, monkeypatch):
    model = randomize(build(tmp_path, FOLD_BODY.format(act=act), c=3, w=32))
    chosen = zero_groups(model, 0.5, seed=3, shift=None, pick=_read_by_1x1_only)
    assert chosen
    result = prune_model(model, threshold=1e-3)
    assert result.decision.removed == chosen
    a, b = outputs(model, 32), outputs(result.model, 32)
    assert (a - b).abs().max().item() < 1e-4
    # without the folding the shifts are lost
    monkeypatch.setattr(prune, "fold_constants", lambda *args: None)
    c = outputs(prune_model(model, threshold=1e-3).model, 32)
    if act != "relu":  # relu of a negative shift is 0 anyway; of a positive one, not
        assert (a - c).abs().max().item() > 1e-3


def test_bias_folding_on_a_real_cfg():
    model = randomize(load("yolov3-tiny"), seed=2)
    chosen = zero_groups(model, 0.5, seed=1, shift=None, pick=_read_by_1x1_only)
    assert len(chosen) > 50
    result = prune_model(model, threshold=1e-3)
    a, b = outputs(model, 64), outputs(result.model, 64)
    assert (a - b).abs().max().item() < 1e-4


# --- coupling --------------------------------------------------------------------------------------
def test_route_groups_and_shortcuts_keep_their_structure():
    model = randomize(load("yolov4-tiny"), seed=4)
    result = prune_model(model, ratio=0.5)
    new = result.model
    for block in new.module_list:  # [route] groups=2 slices stay halves of an even count
        if type(block).__name__ == "Route" and not block.whole:
            for i, (a, b) in zip(block.inputs, block.slices):
                assert new.module_list[i].out_channels == 2 * (b - a)
    # every section's output keeps its channel count or loses some; [yolo] inputs all
    for old, nb in zip(model.module_list, new.module_list):
        assert nb.out_channels <= old.out_channels
    assert outputs(new, 64).shape == outputs(model, 64).shape


def test_depthwise_and_shortcut_coupling_in_yolo_fastest():
    model = randomize(load("yolo-fastest-1.1"), seed=5)
    new = prune_model(model, ratio=0.4).model
    for block in new.module_list:
        conv = getattr(getattr(block, "unit", None), "conv", None)
        if conv is not None and conv.groups > 1:
            assert conv.groups == conv.in_channels == conv.out_channels
        if type(block).__name__ == "Shortcut":
            assert all(c == block.out_channels for c in block.ref_channels)


def test_res2net_widths_stay_equal_and_representable():
    model = randomize(load("res2net-triangle-yolov3"), seed=6)
    new = prune_model(model, ratio=0.5).model
    changed = 0
    for old, block in zip(model.module_list, new.module_list):
        if type(block).__name__ in ("Res2Net", "Triangle"):
            assert block.conv1.conv.out_channels == block.width * block.scale
            assert all(c.conv.out_channels == block.width for c in block.convs)
            changed += block.width != old.width
    assert changed > 5


# --- OpenCV reads the pruned standard cfgs ----------------------------------------------------------
@pytest.mark.parametrize("name,size", [("yolov3-tiny", (224, 224)), ("yolov4-tiny", (224, 160))])
def test_opencv_reads_pruned_cfg_and_weights(name, size, tmp_path):
    cv2 = pytest.importorskip("cv2")  # noqa: F841
    from test_parity_opencv import compare, opencv_cfg, opencv_rows, randomise_bn

    blob = np.random.default_rng(0).random((1, 3, *size), dtype=np.float32)
    model = randomise_bn(load(name), blob)
    result = prune_model(model, ratio=0.4)
    cfg, weights = tmp_path / f"{name}-pruned.cfg", tmp_path / "pruned.weights"
    cfg.write_text(result.cfg_text)
    result.model.save_darknet_weights(weights)
    pruned = result.model
    for m in pruned.modules():  # OpenCV's BN eps (see test_parity_opencv.py)
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eps = 1e-6
    assert sum(p.numel() for p in pruned.parameters()) < 0.8 * sum(p.numel() for p in model.parameters())
    theirs = opencv_rows(opencv_cfg(cfg, tmp_path), weights, blob, pruned)
    with torch.no_grad():
        ours = pruned(torch.from_numpy(blob))[0].numpy()
    compare(ours, theirs, size, atol=1e-4)


# --- bad input -------------------------------------------------------------------------------------
def test_a_ratio_that_would_empty_a_layer_keeps_min_keep(capsys, tmp_path):
    model = randomize(load("yolov3-tiny"), seed=7)
    result = prune_model(model, ratio=0.995, min_keep=4)
    assert result.notes and all("--min-keep 4" in n for n in result.notes)
    for block in result.model.module_list:
        if type(block).__name__ == "Convolutional":
            assert block.out_channels >= 4
    assert outputs(result.model, 64).shape == outputs(model, 64).shape
    # the command line says so too
    rc = prune.main(["--cfg", "yolov3-tiny.cfg", "--ratio", "0.999", "--min-keep", "2", "--time-runs", "0",
                     "--out-cfg", str(tmp_path / "p.cfg"), "--out-weights", str(tmp_path / "p.weights")])
    out = capsys.readouterr().out
    assert rc == 0 and "note:" in out and "--min-keep 2" in out


def test_fused_and_deployed_models_are_refused(tmp_path, capsys):
    model = load("yolov3-tiny")
    with pytest.raises(PruneError, match="fused"):
        prune_model(load("yolov3-tiny").fuse(), ratio=0.3)
    with pytest.raises(PruneError, match="deployed"):
        prune_model(load("yolov3-tiny-ac").deploy(), ratio=0.3)
    from yolo.deploy import deploy_files

    deploy_files(ROOT / "cfg" / "yolov3-tiny-ac.cfg", None, tmp_path / "d.cfg", tmp_path / "d.weights")
    rc = prune.main(["--cfg", str(tmp_path / "d.cfg"), "--weights", str(tmp_path / "d.weights"), "--ratio", "0.3",
                     "--out-cfg", str(tmp_path / "p.cfg"), "--out-weights", str(tmp_path / "p.weights")])
    assert rc == 1 and "deployed" in capsys.readouterr().err
    with pytest.raises(PruneError, match="ratio"):
        prune_model(model, ratio=1.5)


def test_checkpoint_of_another_cfg_is_refused(tmp_path, capsys):
    other = load("yolov4-tiny")
    ckpt = tmp_path / "other.pt"
    save_checkpoint({"model": other.state_dict(), "cfg_text": other.cfg_text, "cfg_name": "yolov4-tiny.cfg"}, ckpt)
    args = ["--cfg", "yolov3-tiny.cfg", "--weights", str(ckpt), "--ratio", "0.3", "--time-runs", "0",
            "--out-cfg", str(tmp_path / "p.cfg"), "--out-weights", str(tmp_path / "p.weights")]
    assert prune.main(args) == 1
    assert "different cfg" in capsys.readouterr().err
    # same cfg text, but a state dict that does not fit
    mine = load("yolov3-tiny")
    save_checkpoint({"model": other.state_dict(), "cfg_text": mine.cfg_text}, ckpt)
    assert prune.main(args) == 1
    assert "does not fit" in capsys.readouterr().err
    # its own checkpoint works
    save_checkpoint({"model": mine.state_dict(), "cfg_text": mine.cfg_text}, ckpt)
    assert prune.main(args) == 0


# --- the report and the files --------------------------------------------------------------------------
def test_cli_writes_a_smaller_model_with_its_report(fastest_cfg, fastest_weights, tmp_path, capsys):
    rc = prune.main(["--cfg", str(fastest_cfg), "--weights", str(fastest_weights), "--ratio", "0.3",
                     "--time-runs", "1", "--out-cfg", str(tmp_path / "p.cfg"), "--out-weights", str(tmp_path / "p.w")])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "bflops" in out and "forward_ms" in out and "weights_bytes" in out
    before = Darknet(fastest_cfg).load_darknet_weights(fastest_weights)
    after = Darknet(tmp_path / "p.cfg").load_darknet_weights(tmp_path / "p.w")
    report = prune.compare(before, after, runs=0)
    assert report["total"]["bflops"][1] < report["total"]["bflops"][0]
    assert report["total"]["params"][1] < report["total"]["params"][0]
    assert report["total"]["weights_bytes"][1] == (tmp_path / "p.w").stat().st_size
    assert len(report["layers"]) == len(before.module_list)
    assert "total at 320x320" in prune.format_comparison(report)


# --- sparsity training ---------------------------------------------------------------------------------
def test_sparsity_penalty_adds_s_sign_gamma_to_prunable_scales_only():
    model = randomize(load("yolov3-tiny"), seed=8)
    with torch.no_grad():
        model.module_list[0].unit.bn.weight[:3] *= -1
    penalty = SparsityPenalty(model)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in bns:
        bn.weight.grad = torch.zeros_like(bn.weight)
    penalty(0.01)
    first = model.module_list[0].unit.bn
    assert torch.allclose(first.weight.grad, 0.01 * torch.sign(first.weight.detach()))
    assert len(penalty.scales()) == sum(bn.num_features for bn in bns)  # tiny: every BN conv is prunable
    assert sparsity_at(1e-3, 0.1, 0.0) == 1e-3 and abs(sparsity_at(1e-3, 0.1, 1.0) - 1e-4) < 1e-12
    # channels coupled into a fixed group (here: a depthwise conv reading the network input) are not penalised
    fixed = build(Path(__import__("tempfile").mkdtemp()), "[convolutional]\nfilters=4\nsize=3\ngroups=4\n"
                  "batch_normalize=1\nactivation=leaky\n\n[convolutional]\nfilters=4\nsize=1\n"
                  "batch_normalize=1\nactivation=leaky\n\n[convolutional]\nfilters=4\nsize=1\n"
                  "batch_normalize=1\nactivation=leaky\n", c=4)
    assert len(SparsityPenalty(fixed).params) == 1


def test_graph_search_finds_the_cheapest_repair():
    assert graph_mod._search(lambda w, o: o % 2 == 0 and o // 2 * 26 // 64 == w, [3, 15], [26, 64]) is not None
    assert graph_mod._search(lambda p, o: o % p == 0, [40, 199], [64, 256]) == [0, 1]
    assert graph_mod._search(lambda h, o: o == 8 * h, [10, 100], [32, 256]) == [3, 4]


def test_train_with_sparsity_shrinks_bn_scales_and_plots_them(tmp_path):
    import sys

    from yolo.cli import train as train_cli

    from helpers import FIXTURES, TRAIN_TINY

    sys.path.insert(0, str(FIXTURES))
    from train_synth import make_dataset

    data = make_dataset(tmp_path / "shapes", n_train=16, n_valid=8, size=64)
    runs = {}
    for s in ("0", "0.5"):
        out = tmp_path / f"run{s}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert train_cli.main(["--cfg", str(TRAIN_TINY), "--data", str(data), "--epochs", "2", "--batch", "8",
                                   "--output", str(out), "--sparsity", s, "--sparsity-decay", "0.5",
                                   "--eval-interval", "100", "--no-progress", "--workers", "0",
                                   "--img-size", "64"]) == 0
        model = Darknet(TRAIN_TINY)
        model.load_state_dict(torch.load(out / "last.pt", weights_only=True)["model"])
        runs[s] = SparsityPenalty(model).scales()
    assert (tmp_path / "run0.5" / "bn_scales.png").stat().st_size > 0
    assert not (tmp_path / "run0" / "bn_scales.png").exists()
    assert runs["0.5"].mean() < runs["0"].mean() - 0.005
