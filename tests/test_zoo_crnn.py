"""[crnn] (Darknet's convolutional RNN) against Darknet's own outputs over two predictions in a row, its
``.weights`` order, its hidden state (carried within one source, reset between sources, per batch row),
the refusals (training, ONNX export, tracing, pruning) and the rule that refuses Darknet's text models.

Golden case ``../shared/reference/darknet-golden/crnn``: Darknet ran ``network_predict`` on input.f32,
then on input_step1.f32 without a reset; its README measured float32 within 6.9e-7 of a float64
recomputation, so atol 1e-5 (data movement, [maxpool], bit-exact).
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from yolo.boxes import to_array
from yolo.cfg import ConfigError
from yolo.detector import Detector
from yolo.model import Darknet
from yolo.outputs import detect_source
from yolo.weights import stream

from helpers import SHARED, build

GOLDEN = SHARED / "reference" / "darknet-golden" / "crnn"
ZOO = SHARED / "models" / "darknet-cfg" / "zoo"
ATOL = 1e-5
TEXT_MODELS = ("rnn.cfg", "rnn.train.cfg", "gru.cfg", "lstm.train.cfg", "crnn.train.cfg")

needs_golden = pytest.mark.skipif(not GOLDEN.is_dir(), reason=f"Darknet golden outputs not found at {GOLDEN}")
needs_zoo = pytest.mark.skipif(not ZOO.is_dir(), reason=f"Darknet's cfg folder not found at {ZOO}")

CRNN = """
[convolutional]
batch_normalize=1
filters=8
size=3
stride=2
pad=1
activation=leaky

[crnn]
{extra}
batch_normalize=1
size=3
pad=1
output=6
hidden=4
activation=leaky
"""  # {extra} first: Darknet (and yolo.cfg) use the first of a repeated key


@pytest.fixture(scope="module")
def golden():
    d = np.load(GOLDEN / "outputs.npz")
    return d, json.loads(str(d["meta"]))


def golden_model() -> Darknet:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Darknet printed no "Unused field" for this cfg; neither do we
        model = Darknet(GOLDEN / "crnn.cfg")
    return model.load_darknet_weights(GOLDEN / "crnn.weights").eval()


def layer_outputs(model: Darknet, x: torch.Tensor) -> list[torch.Tensor]:
    outs: list[torch.Tensor] = []
    for block in model.module_list:
        x = block(x, [outs[j] for j in block.inputs]) if block.inputs else block(x)
        outs.append(x)
    return outs


def step_input(d, step: int) -> torch.Tensor:
    return torch.from_numpy(d["input" if step == 0 else "input_step1"].copy())[None]


# --- Darknet's numbers ------------------------------------------------------------------------------
@needs_golden
@pytest.mark.parametrize("fused", [False, True], ids=["unfused", "fused"])
def test_two_predictions_in_a_row_match_darknet(golden, fused: bool) -> None:
    """Every layer of both steps within ATOL (a [maxpool] fed Darknet's input: exact), and the hidden state;
    Darknet leaves the [crnn]'s BatchNorms unfused, folding them changes nothing beyond rounding."""
    d, meta = golden
    model = golden_model()
    if fused:
        model.fuse(channels_last=False)
    model.reset_state()
    crnn = model.module_list[4]
    with torch.no_grad():
        for step in (0, 1):
            outs = layer_outputs(model, step_input(d, step))
            for layer in meta["layers"][:7]:
                i = layer["index"]
                want = d[f"out_{i}_step{step}"]
                message = f"step {step} layer {i}"
                np.testing.assert_allclose(outs[i][0].numpy(), want, atol=ATOL, rtol=0, err_msg=message)
                if layer["type"] == "MAXPOOL":  # fed Darknet's own input: bit-exact
                    alone = model.module_list[i](torch.from_numpy(d[f"out_{i - 1}_step{step}"].copy())[None])
                    np.testing.assert_array_equal(alone[0].numpy(), want, err_msg=message)
            np.testing.assert_allclose(crnn.state[0].numpy(), d[f"state_4_step{step}"], atol=ATOL, rtol=0)


@needs_golden
def test_each_step_alone_from_darknets_state(golden) -> None:
    """The [crnn] fed Darknet's own input and Darknet's state of the step before gives Darknet's output."""
    d, _ = golden
    crnn = golden_model().module_list[4]
    crnn.reset_state()
    with torch.no_grad():
        crnn.state = torch.from_numpy(d["state_4_step0"].copy())[None]
        out = crnn(torch.from_numpy(d["out_3_step1"].copy())[None])
    np.testing.assert_allclose(out[0].numpy(), d["out_4_step1"], atol=ATOL, rtol=0)
    np.testing.assert_allclose(crnn.state[0].numpy(), d["state_4_step1"], atol=ATOL, rtol=0)


@needs_golden
def test_the_detections_of_both_steps_decode_darknets_yolo_output(golden) -> None:
    """model(x) twice after reset_state(): each eval output is Darknet's [yolo] l.output decoded; a reset
    gives step 0 again, and without carrying step 1 differs (the state matters)."""
    d, _ = golden
    model = golden_model()
    head = model.module_list[7]
    model.reset_state()
    with torch.no_grad():
        got = [model(step_input(d, s))[0].numpy() for s in (0, 1)]
        model.reset_state()
        again = model(step_input(d, 0))[0].numpy()
        model.reset_state(carry=False)
        fresh1 = model(step_input(d, 1))[0].numpy()
    for step in (0, 1):
        o = d[f"out_7_step{step}"].reshape(3, 6, 16, 16)
        cols, rows = np.meshgrid(np.arange(16), np.arange(16))
        anchors = head.anchors.numpy()[:, :, None, None]
        ref = np.concatenate([np.stack([(cols + o[:, 0]) / 16 * 64, (rows + o[:, 1]) / 16 * 64,
                                        np.exp(o[:, 2]) * anchors[:, 0], np.exp(o[:, 3]) * anchors[:, 1]], -1),
                              np.moveaxis(o[:, 4:], 1, -1)], -1)
        np.testing.assert_allclose(got[step].reshape(3, 16, 16, 6), ref, atol=1e-4, rtol=1e-5)
    np.testing.assert_array_equal(again, got[0])
    assert np.abs(fresh1 - got[1]).max() > 1e-3


@needs_golden
def test_weights_float_count_and_byte_exact_round_trip(golden, tmp_path: Path) -> None:
    _, meta = golden
    model = golden_model()
    data = (GOLDEN / "crnn.weights").read_bytes()
    assert model.num_weight_floats() == (len(data) - 20) // 4 == (meta["net"]["weights_bytes"] - 20) // 4
    layer = meta["layers"][4]
    ours = sum(t.numel() for i, t in stream(model) if i == 4)
    assert ours == layer["weights_count"] == sum(s["weights_count"] for s in layer["sub_weights"])
    model.save_darknet_weights(tmp_path / "back.weights")
    assert (tmp_path / "back.weights").read_bytes() == data


# --- the zoo cfg --------------------------------------------------------------------------------------
@needs_zoo
def test_zoo_occlusion_tracker_builds_without_unused_keys() -> None:
    """yolov3-tiny_occlusion_track.cfg on the meta device: every key read ([net] track, time_steps,
    augment_speed too), each [crnn] holding Darknet's float count (three conv + BN units)."""
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("error")
        model = Darknet(ZOO / "yolov3-tiny_occlusion_track.cfg")
    assert model.stateful
    crnns = [(i, b) for i, b in enumerate(model.module_list) if b.section_type == "crnn"]
    assert [(b.hidden, b.out_channels) for _, b in crnns] == [(256, 512), (128, 256)]
    for i, b in crnns:
        c, h, o = model.shapes[i - 1][0], b.hidden, b.out_channels
        expected = (9 * c * h + 4 * h) + (9 * h * h + 4 * h) + (9 * h * o + 4 * o)
        assert sum(t.numel() for j, t in stream(model) if j == i) == expected


# --- the hidden state ----------------------------------------------------------------------------------
def _small(tmp_path: Path, extra: str = "") -> Darknet:
    model = build(tmp_path, CRNN.format(extra=extra), c=3, w=16)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-0.5, 0.5)
    return model.eval()


def test_a_new_model_carries_nothing_between_forwards(tmp_path: Path) -> None:
    """The default (independent images): each forward starts from zeros, the same input gives the same
    output, and nothing is kept."""
    model = _small(tmp_path)
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        a, b = model(x), model(x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert model.module_list[1].state is None


@pytest.mark.parametrize("shortcut", [0, 1])
def test_batch_rows_are_separate_streams(tmp_path: Path, shortcut: int) -> None:
    """Carrying, row i continues row i: a batch of two streams = each stream alone (shortcut adds the
    old state); another batch size is refused naming the section until reset_state()."""
    model = _small(tmp_path, f"shortcut={shortcut}")
    frames = torch.rand(3, 2, 3, 16, 16)  # 3 steps, 2 streams
    with torch.no_grad():
        model.reset_state()
        together = [model(f) for f in frames]
        alone = []
        for row in range(2):
            model.reset_state()
            alone.append([model(f[row:row + 1]) for f in frames])
        model.reset_state()
        model(frames[0])
        with pytest.raises(ValueError, match=r"t\.cfg:\d+: \[crnn\].*for \(2, 4, 8, 8\).*needs \(1, 4, 8, 8\)"):
            model(frames[0][:1])
        model.reset_state()
        model(frames[0][:1])  # after a reset any batch is fine
    for step in range(3):
        for row in range(2):
            torch.testing.assert_close(together[step][row], alone[row][step][0], atol=1e-6, rtol=1e-6)
    assert (together[2] - together[0]).abs().max() > 1e-3  # the state changed what step 2 saw


def test_training_mode_starts_each_forward_from_zeros(tmp_path: Path) -> None:
    model = _small(tmp_path)
    model.reset_state()
    x = torch.rand(1, 3, 16, 16)
    model.train()
    a, b = model(x), model(x)
    assert model.module_list[1].state is None
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def _write_video(path: Path, samples: Path, n: int = 3) -> list[np.ndarray]:
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (96, 64))
    assert vw.isOpened()
    for p in sorted(samples.glob("*.jpg"))[:n]:
        vw.write(cv2.resize(cv2.imread(str(p)), (96, 64)))
    vw.release()
    cap, frames = cv2.VideoCapture(str(path)), []
    while True:
        ok, img = cap.read()
        if not ok:
            break
        frames.append(img)
    cap.release()
    return frames


def _recording(detector: Detector) -> list[np.ndarray]:
    seen: list[np.ndarray] = []
    forward = detector.forward
    detector.forward = lambda x: seen.append(forward(x)) or seen[-1]  # type: ignore[method-assign]
    return seen


@needs_golden
def test_detect_source_continues_a_video_and_resets_between_images(tmp_path: Path, samples_dir: Path) -> None:
    """detect_source: a video runs one frame a forward, each continuing the state of the one before
    (= a manual loop after reset_state()); a folder of images is batched and carries nothing."""
    detector = Detector(GOLDEN / "crnn.cfg", GOLDEN / "crnn.weights", conf_thres=0.01)
    assert detector.stateful
    frames = _write_video(tmp_path / "clip.avi", samples_dir)
    seen = _recording(detector)
    detect_source(detector, tmp_path / "clip.avi", None, save=False, batch_size=4, workers=0, progress=False,
                  verbose=False)
    assert [p.shape[0] for p in seen] == [1] * len(frames) == [1, 1, 1]
    video = list(seen)
    seen.clear()

    def run(carry: bool) -> list[np.ndarray]:
        detector.reset_state(carry)
        return [detector.forward(to_array([detector.prepare(f)[0]])) for f in frames]

    for got, want in zip(video, run(True)):
        np.testing.assert_array_equal(got, want)
    assert np.abs(video[2] - run(False)[2]).max() > 1e-3  # the carried state changed frame 2

    folder = tmp_path / "images"
    folder.mkdir()
    for i, f in enumerate(frames):
        cv2.imwrite(str(folder / f"{i}.png"), f)
    seen.clear()
    detect_source(detector, folder, None, save=False, batch_size=2, workers=0, progress=False, verbose=False)
    assert [p.shape[0] for p in seen] == [2, 1]
    together = np.concatenate(seen)
    seen.clear()
    np.testing.assert_allclose(together, np.concatenate(run(False)), atol=1e-4, rtol=1e-5)  # batch 2 vs 1


# --- refusals -----------------------------------------------------------------------------------------
@needs_golden
def test_training_is_refused_naming_the_section(tmp_path: Path) -> None:
    from yolo.trainer import Trainer, TrainOptions, TrainSetupError

    opts = TrainOptions(cfg=str(GOLDEN / "crnn.cfg"), data=str(tmp_path / "none.data"), output=str(tmp_path / "r"),
                        epochs=1, workers=0, progress=False)
    with pytest.raises(TrainSetupError, match=r"crnn\.cfg:53: \[crnn\]: \[crnn\] is a recurrent layer .*track=1"):
        Trainer(opts, torch.device("cpu"), say=lambda *a, **k: None)


def test_export_tracing_and_pruning_are_refused_naming_the_section(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    from yolo.export import ExportError
    from yolo.prune import prune_model

    body = CRNN.format(extra="") + "\n[convolutional]\nfilters=18\nsize=1\nactivation=linear\n\n[yolo]\nmask=0,1,2\n" \
        "anchors=10,14,23,27,37,58\nclasses=1\nnum=3\n"
    model = build(tmp_path, body, c=3, w=32).eval()
    with pytest.raises(ExportError, match=r"t\.cfg:\d+: \[crnn\] cannot be expressed in ONNX.*recurrent \(stateful\)"):
        model.export_onnx(tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
    with pytest.raises(ConfigError, match=r"t\.cfg:\d+: \[crnn\]: a recurrent layer .*pruning does not handle it"):
        prune_model(model, ratio=0.5)
    with pytest.raises(RuntimeError, match=r"recurrent \(stateful\).*t\.cfg:\d+: \[crnn\]"):
        model.optimize_for_inference()(torch.rand(1, 3, 32, 32))


@pytest.mark.parametrize("extra, match", [
    ("stride=2", r"must keep the map size.*stride=2"),
    ("pad=0", r"must keep the map size.*padding=0"),
    ("groups=4", r"groups=4 must divide the output \(6\)"),
    ("xnor=1", r"'xnor=1' is not supported"),
])
def test_bad_keys_are_one_line_errors(tmp_path: Path, extra: str, match: str) -> None:
    with pytest.raises(ConfigError, match=r"t\.cfg:\d+: \[crnn\].*" + match):
        build(tmp_path, CRNN.format(extra=extra), c=3, w=16)


@needs_zoo
@pytest.mark.parametrize("name", TEXT_MODELS)
def test_text_models_are_refused_naming_file_and_section(name: str) -> None:
    with pytest.raises(ConfigError) as e:
        Darknet(ZOO / name)
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"{ZOO / name}:")
    assert "[net] key 'inputs'" in message and "a character (text) model" in message
    assert "image models only" in message


def test_a_text_layer_in_an_image_cfg_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"t\.cfg:6: \[lstm\]: a character \(text\) model \(a \[lstm\] layer"):
        build(tmp_path, "[lstm]\noutput=8\n", c=3, w=16)
