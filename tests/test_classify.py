"""Classifier cfgs in detect.py (``yolo.classify``): Darknet's ``classifier predict``.

The golden ``classifier`` case (``../shared/reference/darknet-golden/classifier``, mode ``classifier
predict``) gives Darknet's softmax for its input.f32: our scores match it within 1e-5 (its README's
bound) and the top-5 printed are Darknet's top_k of them. The CLI's own lines are compared with the
same computation on this machine.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from yolo.classify import Classifier, is_classifier, read_class_names, resize_min_crop, top_k
from yolo.cli.detect import main
from yolo.detect_inputs import DetectError

from helpers import SHARED

GOLDEN = SHARED / "reference" / "darknet-golden" / "classifier"
ZOO = SHARED / "models" / "darknet-cfg" / "zoo"
CFG, WEIGHTS = GOLDEN / "classifier.cfg", GOLDEN / "classifier.weights"
NAMES = [f"thing{i}" for i in range(10)]

needs_golden = pytest.mark.skipif(not GOLDEN.is_dir(), reason=f"Darknet golden outputs not found at {GOLDEN}")


@pytest.fixture(scope="module")
def classifier() -> Classifier:
    return Classifier(CFG, WEIGHTS, NAMES)


@needs_golden
def test_top5_are_darknets_softmax(classifier: Classifier) -> None:
    d = np.load(GOLDEN / "outputs.npz")
    assert json.loads(str(d["meta"]))["net"]["mode"] == "classifier predict"
    darknet = d["out_9"]  # [softmax]: what network_predict returns ([cost] after it is skipped)
    scores = classifier.scores(d["input"][None])[0]
    np.testing.assert_allclose(scores, darknet, atol=1e-5, rtol=0)
    lines = classifier.lines(scores, 5)
    assert [NAMES.index(line.split(": ")[0]) for line in lines] == top_k(darknet, 5)
    for line, i in zip(lines, top_k(darknet, 5)):
        assert re.fullmatch(r"thing\d: \d\.\d{6}", line)
        assert abs(float(line.split(": ")[1]) - darknet[i]) <= 1e-5


def test_top_k_breaks_ties_to_the_lower_index() -> None:
    assert top_k(np.array([0.1, 0.3, 0.3, 0.2, 0.3], np.float32), 4) == [1, 2, 4, 3]


def test_resize_min_then_centre_crop_as_darknet() -> None:
    img = np.random.default_rng(0).integers(0, 256, (50, 100, 3), np.uint8)  # h 50, w 100
    # shorter side (h) -> 64, w = 100 * 64 // 50 = 128; crop at ((128 - 64) / 2, 0)
    np.testing.assert_array_equal(resize_min_crop(img, (64, 64)), cv2.resize(img, (128, 64))[:, 32:96])
    tall = np.random.default_rng(1).integers(0, 256, (64, 64, 3), np.uint8)
    # net 64 wide, 96 high: resize_min uses the width only (no resize), crop y = (64 - 96) / 2 = -16:
    # Darknet's crop_image repeats the edge rows
    out = resize_min_crop(tall, (96, 64))
    assert out.shape == (96, 64, 3)
    np.testing.assert_array_equal(out[16:80], tall)
    np.testing.assert_array_equal(out[:16], np.repeat(tall[:1], 16, 0))
    np.testing.assert_array_equal(out[80:], np.repeat(tall[-1:], 16, 0))


def test_is_classifier(tmp_path: Path) -> None:
    (tmp_path / "c.cfg").write_text("[net]\nwidth=8\nheight=8\n[avgpool]\n[softmax]\n[cost]\n")
    (tmp_path / "b.cfg").write_text("[net]\nwidth=8\nheight=8\n[convolutional]\nfilters=2\n")
    assert is_classifier(tmp_path / "c.cfg") and not is_classifier(tmp_path / "b.cfg") and not is_classifier(None)
    if ZOO.is_dir():
        assert is_classifier(ZOO / "darknet19.cfg") and is_classifier(ZOO / "darknet53.cfg")
        assert not is_classifier(ZOO / "yolov3.cfg") and not is_classifier(ZOO / "writing.cfg")


@needs_golden
def test_detect_cli_prints_darknets_lines(classifier: Classifier, tmp_path: Path, samples_dir: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    names = tmp_path / "things.names"
    names.write_text("\n".join(NAMES) + "\n")
    dog = samples_dir / "dog.jpg"
    assert main(["--cfg", str(CFG), "--weights", str(WEIGHTS), "--source", str(dog), "--names", str(names)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert re.fullmatch(re.escape(str(dog)) + r": Predicted in \d+\.\d{6} milli-seconds\.", out[0])
    assert out[1:] == classifier.lines(classifier(cv2.imread(str(dog))), 5)

    data = tmp_path / "things.data"  # Darknet's .data: names (relative to it here) and top=
    data.write_text("classes = 10\nnames = things.names\ntop = 3\n")
    assert main(["--cfg", str(CFG), "--weights", str(WEIGHTS), "--source", str(dog), "--names", str(data)]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == out[1:4]


@needs_golden
def test_wrong_names_are_one_line_errors(tmp_path: Path, samples_dir: Path, capsys: pytest.CaptureFixture) -> None:
    names = tmp_path / "three.names"
    names.write_text("a\nb\nc\n")
    argv = ["--cfg", str(CFG), "--weights", str(WEIGHTS), "--source", str(samples_dir / "dog.jpg"), "--names"]
    assert main(argv + [str(names)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "three.names: 3 class names, but the network gives 10 scores" in err
    (tmp_path / "bad.data").write_text("classes = 10\n")
    assert main(argv + [str(tmp_path / "bad.data")]) == 2
    assert "bad.data: no 'names' (or 'labels') key" in capsys.readouterr().err
    with pytest.raises(DetectError, match=r"3 class names, but the network gives 4 scores"):
        read_class_names(["a", "b", "c"], 4)
