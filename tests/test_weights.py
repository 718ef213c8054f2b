"""The .weights file: header forms, the stream walk, round trips, cutoff, bad files."""
from __future__ import annotations

import filecmp
from pathlib import Path

import numpy as np
import pytest
import torch

from yolo import Darknet, WeightsError
from yolo.cfg import CFG_DIR

from helpers import TINY, randomize


def randomised(cfg: str | Path, seed: int = 0) -> Darknet:
    """A model with random weights and non-default BatchNorm statistics."""
    torch.manual_seed(seed)
    return randomize(Darknet(cfg), seed)


def stream_floats(model: Darknet) -> int:
    """Parameters + BatchNorm running statistics: what Darknet stores."""
    n = sum(p.numel() for p in model.parameters())
    return n + sum(b.numel() for name, b in model.named_buffers() if name.endswith(("running_mean", "running_var")))


def write(path: Path, header: tuple[int, int, int], seen: int, seen_dtype, floats: np.ndarray) -> Path:
    with open(path, "wb") as f:
        np.array(header, np.int32).tofile(f)
        np.array([seen], seen_dtype).tofile(f)
        floats.astype("<f4").tofile(f)
    return path


@pytest.mark.parametrize("cfg", sorted(p.name for p in CFG_DIR.glob("*.cfg")))
def test_round_trip_is_byte_identical(cfg, tmp_path):
    model = randomised(cfg)
    first, second = tmp_path / "a.weights", tmp_path / "b.weights"
    model.save_darknet_weights(first)
    assert first.stat().st_size == 20 + 4 * stream_floats(model) == 20 + 4 * model.num_weight_floats()
    fresh = Darknet(cfg).load_darknet_weights(first)
    fresh.save_darknet_weights(second)
    assert filecmp.cmp(first, second, shallow=False)


def test_shipped_weights_load_exactly(fastest_cfg, fastest_weights, tmp_path):
    model = Darknet(fastest_cfg).load_darknet_weights(fastest_weights)
    assert fastest_weights.stat().st_size == 20 + 4 * model.num_weight_floats()
    model.save_darknet_weights(tmp_path / "again.weights")
    assert filecmp.cmp(fastest_weights, tmp_path / "again.weights", shallow=False)


def test_stream_order_of_a_cb_unit_and_a_biased_conv(tmp_path):
    """bn.bias, bn.weight, running_mean, running_var, conv.weight; else conv.bias, conv.weight."""
    model = Darknet(TINY)
    n = model.num_weight_floats()
    write(tmp_path / "w", (0, 2, 5), 0, np.int64, np.arange(n, dtype=np.float32))
    model.load_darknet_weights(tmp_path / "w")
    unit = model.module_list[0].unit  # 8 filters, 3x3 from 3 channels, BN
    for k, t in enumerate((unit.bn.bias, unit.bn.weight, unit.bn.running_mean, unit.bn.running_var)):
        assert torch.equal(t, torch.arange(8 * k, 8 * k + 8, dtype=torch.float32))
    assert torch.equal(unit.conv.weight.flatten(), torch.arange(32, 32 + 8 * 27, dtype=torch.float32))
    head = model.module_list[8].unit.conv  # no BN: bias first
    start = model.num_weight_floats(cutoff=8)
    assert torch.equal(head.bias, torch.arange(start, start + 21, dtype=torch.float32))
    assert head.weight[0, 0, 0, 0] == start + 21


@pytest.mark.parametrize("header,seen_dtype,seen", [((0, 1, 0), np.int32, 12345),
                                                     ((0, 2, 5), np.int64, 2**40 + 7),
                                                     ((1, 0, 0), np.int64, 99)])
def test_both_header_forms(tmp_path, header, seen_dtype, seen):
    model = randomised(TINY)
    n = model.num_weight_floats()
    values = np.random.default_rng(1).standard_normal(n).astype(np.float32)
    path = write(tmp_path / "w", header, seen, seen_dtype, values)
    fresh = Darknet(TINY).load_darknet_weights(path)
    assert fresh.seen == seen
    model.load_darknet_weights(path)
    model.save_darknet_weights(tmp_path / "out")  # always written as 0.2.5 + int64 seen
    raw = (tmp_path / "out").read_bytes()
    assert np.frombuffer(raw[:12], np.int32).tolist() == [0, 2, 5]
    assert np.frombuffer(raw[12:20], np.int64)[0] == seen
    assert np.array_equal(np.frombuffer(raw[20:], "<f4"), values)


def test_one_float_short_names_section_and_counts(tmp_path):
    model = randomised(TINY)
    model.save_darknet_weights(tmp_path / "full")
    raw = (tmp_path / "full").read_bytes()
    (tmp_path / "short").write_bytes(raw[:-4])
    n = model.num_weight_floats()
    with pytest.raises(WeightsError) as e:
        Darknet(TINY).load_darknet_weights(tmp_path / "short")
    msg = str(e.value)
    # the last floats belong to section 13, the [convolutional] before the last [yolo]
    assert "section 13" in msg and "[convolutional]" in msg and f"{TINY}:" in msg
    assert f"needs {n} floats" in msg and f"has {n - 1}" in msg


def test_extra_bytes_and_partial_floats_fail(tmp_path):
    model = randomised(TINY)
    model.save_darknet_weights(tmp_path / "full")
    raw = (tmp_path / "full").read_bytes()
    (tmp_path / "long").write_bytes(raw + b"\0" * 4)
    with pytest.raises(WeightsError, match="1 floats left"):
        Darknet(TINY).load_darknet_weights(tmp_path / "long")
    (tmp_path / "odd").write_bytes(raw + b"\0")
    with pytest.raises(WeightsError, match="whole number of float32"):
        Darknet(TINY).load_darknet_weights(tmp_path / "odd")
    (tmp_path / "stub").write_bytes(raw[:10])
    with pytest.raises(WeightsError, match="too short for a Darknet header"):
        Darknet(TINY).load_darknet_weights(tmp_path / "stub")
    with pytest.raises(WeightsError, match="cannot read"):
        Darknet(TINY).load_darknet_weights(tmp_path / "missing")


def test_cutoff_reads_and_writes_only_its_sections(tmp_path):
    cutoff = 6
    source = randomised(TINY, seed=1)
    source.save_darknet_weights(tmp_path / "full")
    source.save_darknet_weights(tmp_path / "backbone", cutoff=cutoff)
    floats = source.num_weight_floats(cutoff)
    assert 0 < floats < source.num_weight_floats()
    assert (tmp_path / "backbone").stat().st_size == 20 + 4 * floats

    for path in ("backbone", "full"):  # a file cut to the cutoff, and a full file
        target = randomised(TINY, seed=2)
        before = {k: v.clone() for k, v in target.state_dict().items()}
        target.load_darknet_weights(tmp_path / path, cutoff=cutoff)
        for key, value in target.state_dict().items():
            index = int(key.split(".")[1])
            if key.endswith("num_batches_tracked") or "anchors" in key:
                continue
            expected = source.state_dict()[key] if index < cutoff else before[key]
            assert torch.equal(value, expected), (path, key)
    with pytest.raises(WeightsError, match="stream ran out"):  # the cut file is not a whole model
        Darknet(TINY).load_darknet_weights(tmp_path / "backbone")


def test_loaded_parameters_are_independent_and_trainable(tmp_path):
    """One flat read, but each parameter still behaves as its own tensor."""
    randomised(TINY).save_darknet_weights(tmp_path / "w")
    model = Darknet(TINY).load_darknet_weights(tmp_path / "w")
    params = list(model.parameters())
    snapshot = [p.detach().clone() for p in params]
    with torch.no_grad():
        params[0].add_(1.0)
    assert torch.equal(params[0], snapshot[0] + 1)
    assert all(torch.equal(p, s) for p, s in zip(params[1:], snapshot[1:]))
    sum(o.sum() for o in model.train()(torch.rand(1, 3, 64, 64))).backward()
    assert all(p.grad is not None for p in params)


def test_load_into_float64_model_keeps_dtype(tmp_path):
    model = randomised(TINY)
    model.save_darknet_weights(tmp_path / "w")
    double = Darknet(TINY).double().load_darknet_weights(tmp_path / "w")
    assert all(p.dtype == torch.float64 for p in double.parameters())
    assert torch.equal(double.module_list[0].unit.conv.weight.float(), model.module_list[0].unit.conv.weight)
