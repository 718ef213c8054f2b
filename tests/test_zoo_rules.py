"""The parser and size rules of Darknet that the zoo cfgs lean on (issue 20), each as Darknet computes it:

- a key repeated in a section: ``option_find`` returns the first (a different later value warns once);
- a number with spaces inside: Darknet's ``strip`` removes every space of a line first;
- [yolo] anchors: ``parse_yolo`` reads ``2 * num`` values into a zeroed array;
- input sizes that are not multiples of the stride: every map by Darknet's floor formulas (a network
  without detection heads runs at any size whose maps exist);
- [shortcut] of a map a whole multiple of this input's size: ``shortcut_cpu``'s strided add (resnet50.cfg);
- a damaged data file (yolo9000's 9k.tree): one line naming the file, line and byte offset;
- Total BFLOPS: only what Darknet's layers count, added up in float32.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from yolo.cfg import CfgWarning, ConfigError, RepeatedKeyWarning, UnusedKeyWarning, parse_cfg, parse_cfg_text
from yolo.model import Darknet

from helpers import ROOT, ZOO, build

needs_zoo = pytest.mark.skipif(not ZOO.is_dir(), reason=f"Darknet's cfg folder not found at {ZOO}")
HEAD = "[convolutional]\nsize=1\nfilters=7\nactivation=linear\n\n[yolo]\nmask=0\nanchors=10,14\nclasses=2\nnum=1\n"


# --- repeated keys ------------------------------------------------------------------------------------------
def test_a_repeated_key_keeps_its_first_value_and_warns_only_when_the_values_differ():
    text = "[net]\nbatch=1\nsubdivisions=1\nbatch = 1\nmomentum=0.9\nwidth=32\nmomentum=0.8\n"
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        net = parse_cfg_text(text, "r.cfg")[0]
    assert net.int("batch") == 1 and net.float("momentum") == 0.9  # Darknet's option_find: the first
    assert net.where("momentum") == "r.cfg:5: [net] key 'momentum'"  # where the value in use was written
    repeated = [w for w in seen if issubclass(w.category, RepeatedKeyWarning)]
    assert len(repeated) == 1 and not any(issubclass(w.category, UnusedKeyWarning) for w in seen)
    msg = str(repeated[0].message)
    assert msg.startswith("r.cfg:7: [net] key 'momentum=0.8'") and "'momentum=0.9' (line 5)" in msg, msg
    assert "ignores this one" in msg


@needs_zoo
@pytest.mark.parametrize("name, key, first", [("efficientnet_b0.cfg", "decay", 0.0005),
                                              ("yolov3-openimages.cfg", "batch", 1.0),
                                              ("yolo9000.cfg", "batch", 1.0)])
def test_zoo_repeated_keys_read_as_darknet(name, key, first):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        net = parse_cfg(ZOO / name)[0]
    assert net.float(key) == first
    assert not any(issubclass(w.category, UnusedKeyWarning) for w in seen)
    # yolo9000 repeats batch=1 with the same value: nothing to say
    assert bool([w for w in seen if issubclass(w.category, RepeatedKeyWarning)]) == (name != "yolo9000.cfg")


# --- numbers with spaces inside --------------------------------------------------------------------------
def test_a_number_with_spaces_inside_reads_as_darknet_strip_reads_it():
    sec = parse_cfg_text("[net]\n[yolo]\nanchors = 13,17,  61,45    61,45\nnum = 1 6\n", "s.cfg")[1]
    with pytest.warns(CfgWarning, match=r"s\.cfg:3: \[yolo\] key 'anchors': '45    61' .* reads '4561'"):
        assert sec.floats("anchors") == [13, 17, 61, 4561, 45]
    with pytest.warns(CfgWarning, match="reads '16'"):
        assert sec.int("num") == 16


# --- [yolo] anchors as parse_yolo reads them -------------------------------------------------------------------
def _yolo(tmp_path, yolo_keys: str, filters: int = 7) -> Darknet:
    body = (f"[convolutional]\nsize=1\nstride=2\nfilters={filters}\nactivation=linear\n\n"
            f"[yolo]\nclasses=2\n{yolo_keys}")
    return Darknet(_write(tmp_path, body, 32), warn_unused=False)  # its warnings are the caller's to see


def test_yolo_reads_two_values_per_anchor_up_to_num_and_zeros_past_what_is_written(tmp_path):
    with pytest.warns(CfgWarning, match=r"5 numbers for num=3 anchors: Darknet sets the 1 missing to 0"):
        m = _yolo(tmp_path, "mask=0,1,2\nnum=3\nanchors=10,14, 23,27, 37\n", filters=21)
    assert m.heads[0].all_anchors == [(10, 14), (23, 27), (37, 0)]
    m = _yolo(tmp_path, "mask=1\nnum=2\nanchors=10,14, 23,27, 37,58\n")  # extra pairs past num: unread
    assert m.heads[0].all_anchors == [(10, 14), (23, 27)] and m.heads[0].anchors.tolist() == [[23, 27]]
    with pytest.warns(CfgWarning, match=r"mask indices \[2\] are past num=2"):  # cspx-p7-mish.cfg's case
        m = _yolo(tmp_path, "mask=2\nnum=2\nanchors=10,14, 23,27, 37,58\n")
    assert m.heads[0].anchors.tolist() == [[37, 58]]
    with pytest.raises(ConfigError, match=r"s\.cfg:\d+: \[yolo\] key 'mask': mask indices \[3\] are outside"):
        _yolo(tmp_path, "mask=3\nnum=2\nanchors=10,14, 23,27, 37,58\n")


@needs_zoo
def test_cspx_p7_cfgs_build_with_darknets_anchors():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.device("meta"):
            hp = Darknet(ZOO / "cspx-p7-mish_hp.cfg", warn_unused=False)
            p7 = Darknet(ZOO / "cspx-p7-mish.cfg", warn_unused=False)
    # '61,45    61,45' has no comma: Darknet reads 4561; 31 numbers for 16 anchors: the last height is 0
    assert hp.heads[0].all_anchors[3] == (61, 4561) and hp.heads[0].all_anchors[15] == (800, 0)
    assert len(hp.heads[0].all_anchors) == 16
    assert [len(h.mask) for h in p7.heads] == [4] * 5 and p7.heads[-1].mask == [16, 17, 18, 19]


# --- sizes that are not multiples of the stride ---------------------------------------------------------------
@needs_zoo
@pytest.mark.parametrize("name, side, hw", [
    # Darknet: conv (h + 2*pad - size)/stride + 1, maxpool (h + padding - size)/stride + 1 (padding = size-1)
    ("alexnet.cfg", 227, [55, 27, 27, 13, 13, 13, 13, 6]),
    ("darknet.cfg", 224, [224, 112, 112, 56, 56, 28, 28, 14, 14, 7, 7, 4, 4, 4]),
    ("jnet-conv.cfg", 10, [10, 10, 5, 5, 5, 3, 3, 3, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1]),
])
def test_classifiers_at_sizes_that_are_not_multiples_of_their_stride(name, side, hw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.device("meta"):
            model = Darknet(ZOO / name, warn_unused=False)
    assert model.input_size == (side, side) and side % model.max_stride
    assert [s[1] for s in model.shapes[:len(hw)]] == hw and all(s[1] == s[2] for s in model.shapes)


def test_a_backbone_runs_at_any_size_its_maps_compute_at_and_a_detector_still_refuses(tmp_path):
    body = ("[convolutional]\nfilters=4\nsize=3\nstride=2\npad=1\n\n[maxpool]\nsize=2\nstride=2\n\n"
            "[convolutional]\nfilters=4\nsize=3\nstride=2\npad=0\n\n")
    model = build(tmp_path, body, c=3, w=27).eval()  # 27 -> 14 -> 7 -> 3 (pad 0: (7 - 3)/2 + 1)
    assert [s[1:] for s in model.shapes] == [(14, 14), (7, 7), (3, 3)]
    with torch.no_grad():
        assert model(torch.rand(1, 3, 27, 40)).shape == (1, 4, 3, 4)  # 40 -> 20 -> 10 -> (10 - 3)/2 + 1 = 4
        with pytest.raises(ConfigError, match=r"shrinks to"):
            model(torch.rand(1, 3, 4, 4))
    with pytest.raises(ConfigError, match=r"width=27, height=27 must be multiples of the network's stride 8.*"
                                          r"detection heads"):
        build(tmp_path, body.replace("filters=4\nsize=3\nstride=2\npad=0", "filters=7\nsize=3\nstride=2\npad=0")
              + HEAD, c=3, w=27)
    detector = build(tmp_path, body.replace("filters=4\nsize=3\nstride=2\npad=0", "filters=7\nsize=3\nstride=2\npad=1")
                     + HEAD, c=3, w=32)
    with pytest.raises(ValueError, match="multiple of the network's stride 8"):
        detector(torch.rand(1, 3, 32, 36))


def test_the_shipped_model_keeps_its_sizes():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = Darknet(ROOT / "cfg" / "yolo-fastest-1.1.cfg", warn_unused=False)
    assert model.input_size == (320, 320) and model.max_stride == 32 and model.heads
    with pytest.raises(ValueError, match="multiple of the network's stride 32"):
        model.check_input(torch.empty(1, 3, 321, 320, device="meta"))


# --- [shortcut] of maps of different sizes ------------------------------------------------------------------------
def _shortcut_cpu(add: np.ndarray, out: np.ndarray) -> np.ndarray:
    """pjreddie's Darknet ``shortcut_cpu`` (blas.c), loop for loop: ``out`` (c2, h2, w2) += ``add`` (c1, h1, w1)."""
    (c1, h1, w1), (c2, h2, w2) = add.shape, out.shape
    stride, sample = max(w1 // w2, 1), max(w2 // w1, 1)
    out = out.copy()
    for k in range(min(c1, c2)):
        for j in range(min(h1, h2)):
            for i in range(min(w1, w2)):
                out[k, j * sample, i * sample] += add[k, j * stride, i * stride]
    return out


@pytest.mark.parametrize("body, src", [
    # resnet50.cfg's downsampling block: from=-4 reaches a map twice this one's size (and fewer channels)
    ("[convolutional]\nfilters=4\nsize=1\n\n[convolutional]\nfilters=6\nsize=3\nstride=2\npad=1\n\n"
     "[shortcut]\nfrom=-2\n", 0),
    # the other way: a map half this one's size, added at every 2nd pixel (and more channels than this input)
    ("[convolutional]\nfilters=6\nsize=3\nstride=2\npad=1\n\n[upsample]\nstride=2\n\n"
     "[convolutional]\nfilters=4\nsize=1\n\n[shortcut]\nfrom=-3\n", 0),
])
def test_shortcut_of_a_whole_multiple_adds_as_shortcut_cpu(tmp_path, body, src):
    with pytest.warns(CfgWarning, match=r"\[shortcut\] key 'from': layer 0 has stride .*pjreddie"):
        model = Darknet(_write(tmp_path, body), warn_unused=False).eval()
    x = torch.rand(1, 3, 16, 16)
    outs = {}
    hooks = [b.register_forward_hook(lambda m, a, o, i=i: outs.__setitem__(i, o))
             for i, b in enumerate(model.module_list)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    last = len(model.module_list) - 1
    want = _shortcut_cpu(outs[src][0].numpy(), outs[last - 1][0].numpy())
    np.testing.assert_allclose(outs[last][0].numpy(), want, rtol=0, atol=1e-6)


def _write(tmp_path, body: str, w: int = 16):
    path = tmp_path / "s.cfg"
    path.write_text(f"[net]\nwidth={w}\nheight={w}\nchannels=3\n\n{body}")
    return path


def test_shortcut_of_maps_that_are_no_whole_multiple_is_refused_naming_both(tmp_path):
    body = ("[convolutional]\nfilters=4\nsize=1\n\n[convolutional]\nfilters=4\nsize=3\nstride=2\npad=1\n\n"
            "[shortcut]\nfrom=-2\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CfgWarning)
        model = Darknet(_write(tmp_path, body), warn_unused=False)  # 16 -> 8: a step of 2
        with pytest.raises(ConfigError, match=r"s\.cfg:\d+: \[shortcut\]: cannot add layer 0 \(.*s\.cfg:6: "
                                              r"\[convolutional\], 13x13\) to this section's input \(7x7\)"):
            model(torch.rand(1, 3, 13, 13))  # 13 -> 7: 13 // 7 = 1, Darknet would add a corner


@needs_zoo
def test_resnet50_builds_with_the_strided_shortcuts():
    with pytest.warns(CfgWarning, match=r"resnet50\.cfg:\d+: \[shortcut\] key 'from': layer 13 has stride 4"):
        with torch.device("meta"):
            model = Darknet(ZOO / "resnet50.cfg", warn_unused=False)
    assert model.shapes[17] == (512, 32, 32) and model.shapes[13] == (256, 64, 64)


# --- damaged data files ---------------------------------------------------------------------------------------------
@needs_zoo
def test_yolo9000s_damaged_tree_is_one_line_naming_file_line_and_offset():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ConfigError) as e:
            with torch.device("meta"):
                Darknet(ZOO / "yolo9000.cfg", warn_unused=False)
    msg = str(e.value)
    assert "\n" not in msg and "9k.tree:5804: damaged file" in msg and "byte offset 91648" in msg, msg
    assert "yolo9000.cfg:" in msg and "[region] key 'tree'" in msg


def test_a_tree_file_with_nul_bytes_is_refused_at_its_line(tmp_path):
    (tmp_path / "t.tree").write_bytes(b"a -1\nb -1\nc 0\x00\x00\nd 0\n")
    body = ("[convolutional]\nsize=1\nfilters=9\nactivation=linear\n\n[region]\nanchors=1,1\nclasses=4\nnum=1\n"
            f"coords=4\nsoftmax=1\ntree={tmp_path / 't.tree'}\n")
    with pytest.raises(ConfigError, match=r"t\.tree:3: damaged file: 2 NUL bytes, the first at byte offset 13"):
        build(tmp_path, body, c=3, w=32)


# --- Total BFLOPS as Darknet counts it ----------------------------------------------------------------------------
def test_layers_darknet_does_not_count_have_no_bflops(tmp_path):
    from yolo.info import layer_table, total_bflops

    body = ("[convolutional]\nfilters=8\nsize=3\npad=1\n\n[avgpool]\n\n[convolutional]\nfilters=8\nsize=1\n"
            "activation=logistic\n\n[scale_channels]\nfrom=-3\n\n[sam]\nfrom=-4\n\n"
            "[local]\nsize=3\nstride=1\npad=1\nfilters=4\n\n[connected]\noutput=10\n")
    rows = layer_table(build(tmp_path, body, c=3, w=8))
    assert [r.type for r in rows] == ["conv", "avg", "conv", "scale_channels", "sam", "local", "connected"]
    assert [r.bflops for r in rows[3:]] == [0, 0, 0, 0]  # no l.bflops in their Darknet layer files
    conv = 2 * 3 * 8 * 9 * 8 * 8 / 1e9 + 2 * 8 * 8 / 1e9
    assert total_bflops(rows) == pytest.approx(conv, rel=1e-6)


@needs_zoo
def test_alexnet_total_bflops_by_darknets_rules():
    from yolo.info import total_bflops

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = Darknet(ZOO / "alexnet.cfg", warn_unused=False)
    def conv(ci: int, co: int, k: int, o: int) -> float:
        return 2 * ci * co * k * k * o * o / 1e9

    def pool(c: int, o: int) -> float:  # 3x3 compares per output
        return 9 * c * o * o / 1e9

    layers = [conv(3, 96, 11, 55), pool(96, 27), conv(96, 256, 5, 27), pool(256, 13), conv(256, 384, 3, 13),
              conv(384, 384, 3, 13), conv(384, 256, 3, 13), pool(256, 6)]  # then [connected]: not counted
    expected = np.float32(0)
    for value in layers:  # in layer order, into a float, as parse_network_cfg_custom
        expected = np.float32(expected + np.float32(value))
    assert total_bflops(model) == float(expected)
    assert f"{total_bflops(model):5.3f}" == "2.154"
