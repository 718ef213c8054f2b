"""cfg text -> typed sections, and every configuration error naming file and line."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from yolo import ConfigError, Darknet
from yolo.cfg import UnusedKeyWarning, parse_cfg_text

from helpers import TINY


def test_comments_blank_lines_and_spaces_as_darknet_accepts():
    text = "[net]\n# comment\n; other comment\n\n width = 32 \nheight=32 # trailing\n[convolutional]\nfilters = 4;x\n"
    net, conv = parse_cfg_text(text, "x.cfg")
    assert net.int("width") == 32 and net.int("height") == 32
    assert conv.int("filters") == 4 and conv.line == 7 and conv.index == 0


def test_values_are_typed_once_and_zero_is_false():
    (_, s) = parse_cfg_text("[net]\n[x]\na=0\nb=1\nc=1.0\nd=1,2, 3\ne=.5\n", "x.cfg")
    assert s.bool("a") is False and s.bool("b") is True
    assert s.int("c") == 1 and s.ints("d") == [1, 2, 3] and s.float("e") == 0.5
    model = Darknet(TINY)
    assert model.module_list[8].unit.bn is None  # batch_normalize absent
    (_, conv) = parse_cfg_text("[net]\n[convolutional]\nbatch_normalize=0\nfilters=2\n", "x.cfg")
    assert conv.bool("batch_normalize") is False


def test_bare_cfg_name_is_found_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert Darknet("yolov3-tiny.cfg").num_classes == 80


def write_variant(tmp_path: Path, old: str, new: str) -> Path:
    text = TINY.read_text()
    assert old in text
    path = tmp_path / "bad.cfg"
    path.write_text(text.replace(old, new, 1))
    return path


def line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


@pytest.mark.parametrize("old,new,needle,message", [
    ("[dropout]", "[dropoutt]", "[dropoutt]", "unknown section type"),
    ("[route]\nlayers=-4", "[route]\nlayer=-4", "layer=-4", "missing required key 'layers'"),  # header
    ("filters=8", "filters=eight", "filters=eight", "expected an integer, got 'eight'"),
    ("probability=0.1", "probability=high", "probability=high", "expected a finite number"),
    ("layers=-1, 2", "layers=-1, 20", "layers=-1, 20", "outside layers 0..11"),
    ("from=-2", "from=-9", "from=-9", "outside layers"),
    ("filters=21", "filters=24", "[yolo]", "need 3 * (2 + 5) = 21"),
    ("classes=2\nnum=6\nscale_x_y", "classes=3\nnum=6\nscale_x_y", "[yolo]", "need 3 * (3 + 5) = 24"),
    ("mask=3,4,5", "mask=3,4,9", "mask=3,4,9", "outside the 6 anchors"),
    ("activation=mish", "activation=mish2", "activation=mish2", "expected one of"),
    ("batch_normalize=1\nfilters=16\nsize=3\nstride=2", "batch_normalize=2\nfilters=16\nsize=3\nstride=2",
     "batch_normalize=2", "expected 0 or 1"),
])
def test_errors_name_file_line_and_reason(tmp_path, old, new, needle, message):
    path = write_variant(tmp_path, old, new)
    with pytest.raises(ConfigError) as e:
        Darknet(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}:") and "\n" not in msg, msg  # one line, file first
    assert message in msg
    if needle.startswith("["):  # a section-level error: the section header's line
        lines = [i for i, line in enumerate(path.read_text().splitlines(), 1) if line.strip() == needle]
        assert any(f"{path}:{n}:" in msg for n in lines), msg
    else:  # the key's line; a missing key: its section header's, just above
        line = line_of(path, needle) - ("missing" in message)
        assert f"{path}:{line}:" in msg, msg


def test_malformed_text_names_the_line():
    with pytest.raises(ConfigError, match=r"x.cfg:3: expected 'key=value'"):
        parse_cfg_text("[net]\nwidth=3\njunk\n", "x.cfg")
    with pytest.raises(ConfigError, match=r"x.cfg:1: the first section must be \[net\]"):
        parse_cfg_text("[convolutional]\n", "x.cfg")
    with pytest.raises(ConfigError, match=r"x.cfg:2: malformed section header"):
        parse_cfg_text("[net]\n[conv\n", "x.cfg")


def test_unused_key_is_warned_with_its_line(tmp_path):
    path = write_variant(tmp_path, "probability=0.1", "probability=0.1\nprobabilty=0.2")
    with pytest.warns(UnusedKeyWarning, match=rf"{path}:{line_of(path, 'probabilty')}: \[dropout\] key 'probabilty'"):
        Darknet(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnusedKeyWarning)
        Darknet(TINY)  # every key of the fixture is read by some block


def test_net_section_typed(tmp_path):
    model = Darknet("yolov3.cfg")
    net = model.net
    assert (net.width, net.height, net.channels) == (608, 608, 3)
    assert net.steps == [400000, 450000] and net.scales == [0.1, 0.1] and net.policy == "steps"
    assert net.hue == pytest.approx(0.1) and net.letter_box is False
    with pytest.raises(ConfigError, match="2 steps but 1 scales"):
        bad = tmp_path / "net.cfg"
        bad.write_text(model.cfg_text.replace("scales=.1,.1", "scales=.1", 1))
        Darknet(bad)


def test_conv_without_activation_is_logistic():
    model = Darknet(TINY).eval()
    conv = model.module_list[13]
    x = torch.randn(1, 32, 8, 8)
    with torch.no_grad():
        expected = torch.sigmoid(torch.nn.functional.conv2d(x, conv.unit.conv.weight, conv.unit.conv.bias))
        torch.testing.assert_close(conv(x), expected)


@pytest.mark.parametrize("section, key_line", [
    ("[convolutional]\nfilters=4\nsize=3\nstride=1\nstride_x=2\n", "stride_x=2"),
    ("[convolutional]\nfilters=4\nsize=3\nbinary=1\n", "binary=1"),
    ("[convolutional]\nfilters=3\nsize=1\n[shortcut]\nfrom=-1\nweights_type=per_channel\n",
     "weights_type=per_channel"),
])
def test_unsupported_darknet_keys_are_errors_not_silent(tmp_path, section, key_line):
    cfg = tmp_path / "bad.cfg"
    cfg.write_text("[net]\nwidth=32\nheight=32\nchannels=3\n" + section)
    line = cfg.read_text().splitlines().index(key_line) + 1
    with pytest.raises(ConfigError, match=rf"bad.cfg:{line}:.*not supported"):
        Darknet(cfg)
