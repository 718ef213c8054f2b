"""Darknet's zoo layers ([reorg], [reorg3d], [sam], [scale_channels], [avgpool], [local_avgpool],
[connected], [softmax], [cost], [dropout], [contrastive]) against Darknet's own outputs, layer by layer
(``../shared/reference/darknet-golden``: Darknet-written .weights, its input, every layer's output).

Tolerance: the golden README measured Darknet's float32 within 1.8e-6 of a float64 recomputation
(outputs of magnitude 0.2 to 5) and calls atol 1e-5 safe for a float32 reimplementation; pure data
movement (route, reorg, reorg3d, maxpool) is bit-exact, so those layers are compared exactly.
"""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from yolo.cfg import UnusedKeyWarning
from yolo.model import Darknet

from helpers import SHARED, build

GOLDEN = SHARED / "reference" / "darknet-golden"
ATOL = 1e-5
EXACT = {"ROUTE", "REORG", "REORG_OLD", "MAXPOOL", "DROPOUT"}
# case -> layers compared (None: all); reorg and contrastive end in heads built elsewhere
CASES = {"sam": None, "scale_channels": None, "scale_channels_wh": None, "classifier": None,
         "connected_bn": None, "local_avgpool": None, "reorg3d": None, "reorg": 11, "contrastive": 6}

needs_golden = pytest.mark.skipif(not GOLDEN.is_dir(), reason=f"Darknet golden outputs not found at {GOLDEN}")


def _load(case: str):
    d = np.load(GOLDEN / case / "outputs.npz")
    meta = json.loads(str(d["meta"]))
    with warnings.catch_warnings():
        # [route] onlyforward / [yolo] embedding_layer and tracking keys: training or head keys not ours
        warnings.simplefilter("ignore", UnusedKeyWarning)
        warnings.filterwarnings("ignore", "no \\[yolo\\] section")
        model = Darknet(GOLDEN / case / f"{case}.cfg").eval()
    model.load_darknet_weights(GOLDEN / case / f"{case}.weights")
    return d, meta, model


def _layer_outputs(model: Darknet, x: torch.Tensor, upto: int) -> list[torch.Tensor]:
    outs: list[torch.Tensor] = []
    for block in list(model.module_list)[:upto]:
        if block.inputs:
            y = block(x, [outs[j] for j in block.inputs])
        else:
            y = block(x)
        outs.append(y)
        x = y
    return outs


def _run(block, x: torch.Tensor, refs: list[torch.Tensor]) -> torch.Tensor:
    return block(x, [refs[j] for j in block.inputs]) if block.inputs else block(x)


@needs_golden
@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_layers(case: str, tmp_path) -> None:
    """Chained from Darknet's input, every layer within ATOL; each layer fed Darknet's own inputs
    (its previous and referenced layers' outputs): data movement bit-exact, the rest within ATOL."""
    d, meta, model = _load(case)
    net = meta["net"]
    x = np.fromfile(GOLDEN / case / "input.f32", dtype="<f4").reshape(net["channels"], net["height"], net["width"])
    x = torch.from_numpy(x.copy())[None]
    upto = CASES[case] or len(meta["layers"])
    blocks = list(model.module_list)[:upto]
    with torch.no_grad():
        outs = _layer_outputs(model, x, upto)
        theirs = [torch.from_numpy(d[f"out_{i}"].copy()).reshape(outs[i].shape) for i in range(upto)]
        alone = [_run(b, theirs[i - 1] if i else x, theirs) for i, b in enumerate(blocks)]
    for layer, chained, isolated in zip(meta["layers"][:upto], outs, alone):
        i, kind = layer["index"], layer["type"]
        want = theirs[i].numpy()
        if kind in ("COST", "CONTRASTIVE"):
            # Darknet leaves l.output at zeros; the network's output skips a [cost] (get_network_output),
            # so ours passes its input on; [contrastive] outputs zeros as Darknet does
            assert not want.any()
            if kind == "COST":
                assert torch.equal(chained, outs[i - 1])
            else:
                assert not chained.any()
            continue
        err = float(np.abs(chained.numpy() - want).max())
        assert err <= ATOL, f"{case} layer {i} ({layer['section']}, {kind}) chained: max abs diff {err:.3g}"
        err = float(np.abs(isolated.numpy() - want).max())
        limit = 0.0 if kind in EXACT else ATOL
        assert err <= limit, f"{case} layer {i} ({layer['section']}, {kind}) alone: max abs diff {err:.3g} > {limit}"
    # the float count is what Darknet read, and a save writes the same bytes back
    total = sum(L["weights_count"] for L in meta["layers"])
    assert model.num_weight_floats() == total
    for L, block_index in ((L, L["index"]) for L in meta["layers"] if L["weights_count"] > 0):
        assert model.num_weight_floats(block_index + 1) - model.num_weight_floats(block_index) == L["weights_count"]
    out = tmp_path / "again.weights"
    model.save_darknet_weights(out)
    assert out.read_bytes() == (GOLDEN / case / f"{case}.weights").read_bytes()


# --- without the golden files ------------------------------------------------------------------------
LOCAL_BODY = """
[convolutional]
filters=4
size=3
stride=2
pad=1
activation=leaky

[local]
filters=5
size=3
stride=1
pad=1
activation=leaky

[batchnorm]

[crop]
crop_height=6
crop_width=4
noadjust={noadjust}

[connected]
output=7
batch_normalize=1
activation=linear
"""


def _darknet_local(x: np.ndarray, weights: np.ndarray, biases: np.ndarray, size: int, pad: int) -> np.ndarray:
    """Darknet's forward_local_layer, loop for loop (stride 1): im2col, one kernel per location."""
    c, h, w = x.shape
    filters = biases.shape[0]
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    out = biases.astype(np.float64).copy()
    for j in range(h):
        for i in range(w):
            col = xp[:, j:j + size, i:i + size].reshape(-1)  # (c, dy, dx): im2col's row order
            out[:, j, i] += weights[j * w + i].reshape(filters, -1) @ col
    return out


@pytest.mark.parametrize("noadjust", [0, 1])
def test_local_batchnorm_crop_connected(tmp_path, noadjust: int) -> None:
    """[local] as Darknet's loop computes it, [batchnorm], [crop] at inference (centre; x*2-1 unless
    noadjust), [connected] with BatchNorm; the stream holds each layout's floats in Darknet's order."""
    model = build(tmp_path, LOCAL_BODY.format(noadjust=noadjust), c=3, w=16).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        for blk in (model.module_list[2].bn, model.module_list[4].bn):
            blk.running_mean.copy_(torch.randn(blk.running_mean.shape, generator=g) * 0.2)
            blk.running_var.copy_(torch.rand(blk.running_var.shape, generator=g) + 0.5)
    x = torch.rand(1, 3, 16, 16, generator=g)
    with torch.no_grad():
        outs = _layer_outputs(model, x, 5)
    local = model.module_list[1]
    want = _darknet_local(outs[0][0].double().numpy(), local.weight.detach().double().numpy(),
                          local.bias.detach().double().numpy(), 3, 1)
    np.testing.assert_allclose(outs[1][0].numpy(), np.where(want > 0, want, 0.1 * want), atol=1e-5)
    bn = model.module_list[2].bn
    y = (outs[1] - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + 1e-5)
    torch.testing.assert_close(outs[2], y * bn.weight[:, None, None] + bn.bias[:, None, None])
    crop = outs[2][:, :, 1:7, 2:6]  # 8x8 -> 6 rows from (8-6)//2, 4 columns from (8-4)//2
    torch.testing.assert_close(outs[3], crop if noadjust else crop * 2 - 1)
    assert outs[4].shape == (1, 7, 1, 1)
    # floats: conv 4+108, local biases 5*8*8 + weights 64*5*36, batchnorm 4*5, connected 7+7*120+3*7
    assert model.num_weight_floats() == (4 + 108) + (5 * 64 + 64 * 5 * 36) + 4 * 5 + (7 + 7 * 120 + 3 * 7)
    first = tmp_path / "a.weights"
    model.save_darknet_weights(first)
    again = build(tmp_path, LOCAL_BODY.format(noadjust=noadjust), c=3, w=16).eval()
    again.load_darknet_weights(first)
    conn = again.module_list[4]
    raw = np.fromfile(first, "<f4", offset=20)[-(7 + 7 * 120 + 3 * 7):]
    np.testing.assert_array_equal(raw[:7], conn.bn.bias.detach().numpy())  # biases, weights, then scales
    np.testing.assert_array_equal(raw[7:7 + 840], conn.linear.weight.detach().numpy().reshape(-1))
    np.testing.assert_array_equal(raw[847:854], conn.bn.weight.detach().numpy())
    with torch.no_grad():  # same values (the bytes below); loaded tensors are views of one buffer, whose
        # alignment may pick another SIMD path: rounding-level differences only
        torch.testing.assert_close(again(x), model(x), rtol=0, atol=1e-6)
    second = tmp_path / "b.weights"
    again.save_darknet_weights(second)
    assert second.read_bytes() == first.read_bytes()
    with pytest.raises(ValueError, match=r"t\.cfg:\d+: \[local\]: built for a 8x8 input, got 16x16"):
        model(torch.rand(1, 3, 32, 32))


def test_zoo_layers_refuse_bad_keys_and_pruning(tmp_path) -> None:
    """An unknown key still warns; keys Darknet reads but we do not implement are refused; a block that
    cannot be pruned is refused naming its section."""
    from yolo.cfg import ConfigError
    from yolo.prune import prune_model

    path = tmp_path / "w.cfg"
    path.write_text("[net]\nwidth=16\nheight=16\nchannels=3\n\n[convolutional]\nfilters=8\nsize=1\n"
                    "batch_normalize=1\n\n[reorg3d]\nstride=2\nfoo=1\n")
    with pytest.warns(UnusedKeyWarning, match=r"w\.cfg:\d+: \[reorg3d\] key 'foo'"):
        Darknet(path)
    with pytest.raises(ConfigError, match=r"\[reorg\] key 'reverse'.*not supported"):
        build(tmp_path, "[reorg]\nstride=2\nreverse=1\n")
    with pytest.raises(ConfigError, match=r"\[reorg\] key 'stride'.*not divisible by stride\*stride = 4"):
        build(tmp_path, "[reorg]\nstride=2\n", c=3)
    with pytest.raises(ConfigError, match=r"\[scale_channels\].*needs 1x1"):
        build(tmp_path, "[convolutional]\nfilters=4\nsize=1\n\n[convolutional]\nfilters=4\nsize=1\n\n"
                        "[scale_channels]\nfrom=-2\n")
    model = build(tmp_path, "[convolutional]\nfilters=8\nsize=1\nbatch_normalize=1\n\n[reorg3d]\nstride=2\n")
    with pytest.raises(ValueError, match=r"t\.cfg:\d+.*no pruning rule for \[reorg3d\]"):
        prune_model(model, ratio=0.3)


def test_info_rows(tmp_path) -> None:
    """Darknet's names and BFLOPs: [connected] 0 (connected_layer.c sets no l.bflops), [local_avgpool]
    size^2 * C * out (maxpool_layer.c)."""
    from yolo.info import layer_table

    model = build(tmp_path, "[local_avgpool]\nsize=2\nstride=2\n\n[avgpool]\n\n[connected]\noutput=10\n\n"
                            "[softmax]\n\n[cost]\n", c=4, w=16)
    rows = layer_table(model)
    assert [r.type for r in rows] == ["avg", "avg", "connected", "softmax", "cost"]
    assert rows[0].bflops == pytest.approx(4 * 4 * 8 * 8 / 1e9)
    assert rows[2].output == (1, 1, 10) and rows[2].bflops == 0
