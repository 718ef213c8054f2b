"""yolo.partial: Darknet's partial (first N layers, header 0.2.5, seen = 0)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from yolo import Darknet
from yolo.partial import PartialError, main, partial

from helpers import ROOT, randomize

CFG = ROOT / "cfg" / "yolov3-tiny.cfg"


def _model():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Darknet(CFG, warn_unused=False)


@pytest.fixture(scope="module")
def full_weights(tmp_path_factory):
    """Random yolov3-tiny weights written by our saver, with a non-zero ``seen``."""
    model = randomize(_model(), seed=3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    model.seen = 123456
    path = tmp_path_factory.mktemp("partial") / "full.weights"
    model.save_darknet_weights(path)
    return model, path


def test_partial_15_header_and_stream(full_weights, tmp_path, capsys):
    model, path = full_weights
    out = tmp_path / "first15.weights"
    assert main([str(CFG), str(path), str(out), "15"]) == 0
    assert "seen = 0" in capsys.readouterr().out
    data = out.read_bytes()
    assert tuple(np.frombuffer(data, np.int32, 3)) == (0, 2, 5)
    assert int(np.frombuffer(data, np.int64, 1, 12)[0]) == 0  # seen reset (was 123456)
    reference = tmp_path / "ref.weights"
    model.save_darknet_weights(reference, cutoff=15)
    ref = reference.read_bytes()
    assert int(np.frombuffer(ref, np.int64, 1, 12)[0]) == 123456
    assert data[20:] == ref[20:]
    assert len(data) == 20 + 4 * model.num_weight_floats(cutoff=15)
    assert model.num_weight_floats(cutoff=15) < model.num_weight_floats()

    loaded = _model().load_darknet_weights(out, cutoff=15)
    assert loaded.seen == 0
    for i in range(15):
        a, b = model.module_list[i].state_dict(), loaded.module_list[i].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a if not k.endswith("num_batches_tracked"))
    with pytest.raises(ValueError, match="ran out"):  # it holds only 15 layers
        _model().load_darknet_weights(out)


def test_partial_of_a_partial(full_weights, tmp_path):
    model, path = full_weights
    first15 = tmp_path / "a.weights"
    partial(CFG, path, first15, 15)
    first5 = tmp_path / "b.weights"
    assert partial(CFG, first15, first5, 5) == model.num_weight_floats(cutoff=5)
    direct = tmp_path / "c.weights"
    partial(CFG, path, direct, 5)
    assert first5.read_bytes() == direct.read_bytes()


@pytest.mark.parametrize("n,words", [(25, "beyond the network"), (0, "positive"), (-3, "positive")])
def test_bad_n_is_a_clear_error(full_weights, tmp_path, capsys, n, words):
    _, path = full_weights
    out = tmp_path / "x.weights"
    with pytest.raises(PartialError, match=words):
        partial(CFG, path, out, n)
    assert main([str(CFG), str(path), str(out), str(n)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "1..24" in err
    assert not out.exists()


def test_short_input_file_names_the_section(full_weights, tmp_path, capsys):
    _, path = full_weights
    short = tmp_path / "short.weights"
    short.write_bytes(path.read_bytes()[:1000])
    assert main([str(CFG), str(short), str(tmp_path / "o.weights"), "15"]) == 2
    assert "ran out in section" in capsys.readouterr().err
