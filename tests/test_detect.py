"""detect.py and the Detector API: Darknet's own detections, output formats, sources, errors."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from yolo import Detector
from yolo.boxes import box_iou
from yolo.cli.detect import main
from yolo.detector import DetectError
from yolo.outputs import detect_source
from yolo.plots import PALETTE, class_colour, draw_detections, text_colour
from yolo.sources import has_gui, resolve_source

# Darknet (AlexeyAB, CPU) `detector test` on dog.jpg with yolo-fastest-1.1: ../shared/README.md
DARKNET_DOG = {  # class id: (score, left, top, width, height)
    16: (0.65, 122, 222, 244, 295),  # dog
    1: (0.55, 245, 187, 342, 233),  # bicycle
    2: (0.88, 454, 78, 230, 102),  # car
}


@pytest.fixture(scope="module")
def detector(fastest_cfg: Path, fastest_weights: Path, coco_names: Path) -> Detector:
    return Detector(fastest_cfg, fastest_weights, names=coco_names)


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory, samples_dir: Path) -> Path:
    """Six 320x240 frames from the sample photos, MJPG in .avi, 5 fps."""
    path = tmp_path_factory.mktemp("video") / "clip.avi"
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (320, 240))
    assert vw.isOpened()
    for p in sorted(samples_dir.glob("*.jpg"))[:6]:
        vw.write(cv2.resize(cv2.imread(str(p)), (320, 240)))
    vw.release()
    return path


def _count_frames(path: Path) -> tuple[int, tuple[int, int]]:
    cap = cv2.VideoCapture(str(path))
    n, size = 0, (0, 0)
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        n, size = n + 1, (frame.shape[1], frame.shape[0])
    cap.release()
    return n, size


def _assert_matches_darknet(dets: np.ndarray) -> None:
    for cls, (score, left, top, w, h) in DARKNET_DOG.items():
        mine = dets[dets[:, 5] == cls]
        assert len(mine), f"class {cls} not detected"
        ref = torch.tensor([[left, top, left + w, top + h]], dtype=torch.float32)
        iou = box_iou(torch.from_numpy(mine[:, :4].astype(np.float32)), ref)[:, 0]
        best = int(iou.argmax())
        assert iou[best] >= 0.7, f"class {cls}: best IoU {float(iou[best]):.2f} with Darknet's box"
        assert abs(mine[best, 4] - score) <= 0.05, f"class {cls}: score {mine[best, 4]:.3f}, Darknet {score}"


# --- the API -------------------------------------------------------------------------------
def test_api_matches_darknet_on_dog(detector: Detector, samples_dir: Path) -> None:
    img = cv2.imread(str(samples_dir / "dog.jpg"))
    dets = detector(img)
    assert dets.shape[1] == 6 and dets.dtype == np.float32
    assert np.all(np.diff(dets[:, 4]) <= 0), "best first"
    assert dets[:, [0, 2]].max() <= img.shape[1] and dets[:, [1, 3]].max() <= img.shape[0]
    _assert_matches_darknet(dets)


def test_api_rgb_list_and_classes(detector: Detector, samples_dir: Path, fastest_cfg: Path,
                                  fastest_weights: Path) -> None:
    dog = cv2.imread(str(samples_dir / "dog.jpg"))
    eagle = cv2.imread(str(samples_dir / "eagle.jpg"))
    single = detector(dog)
    both = detector([dog, eagle])
    assert isinstance(both, list) and len(both) == 2
    np.testing.assert_allclose(both[0], single, atol=1e-3)  # batching does not change results
    np.testing.assert_allclose(detector(dog[..., ::-1].copy(), rgb=True), single, atol=1e-4)
    # an RGB image passed as BGR is a different input: the flag must matter
    assert not np.array_equal(detector(dog[..., ::-1].copy()), single)
    only_dogs = Detector(fastest_cfg, fastest_weights, classes=["Dog"])(dog)
    assert len(only_dogs) and set(only_dogs[:, 5].tolist()) == {16}
    assert only_dogs[0, 4] == pytest.approx(single[single[:, 5] == 16][0, 4])


def test_api_follows_letter_box_and_checks_sizes(tmp_path: Path, fastest_cfg: Path,
                                                 fastest_weights: Path) -> None:
    cfg = tmp_path / "lb.cfg"
    cfg.write_text(fastest_cfg.read_text().replace("[net]", "[net]\nletter_box=1", 1))
    det = Detector(cfg, fastest_weights, img_size=(256, 320))
    prepared, geometry = det.prepare(np.zeros((100, 400, 3), np.uint8))
    assert prepared.shape == (256, 320, 3)
    assert geometry.pad_xy == (0.0, 88.0)  # 400x100 -> 320x80, centred in 256 rows
    assert prepared[0, 0, 0] != 0 and prepared[128, 160, 0] == 0  # grey padding, image inside
    with pytest.raises(DetectError, match="multiple of the network's stride"):
        Detector(fastest_cfg, fastest_weights, img_size=300)
    with pytest.raises(DetectError, match="uint8"):
        det(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(DetectError, match="classes 0..79"):
        Detector(fastest_cfg, fastest_weights, classes=[80])
    with pytest.raises(DetectError, match="'unicorn' is not a class name"):
        Detector(fastest_cfg, fastest_weights, classes=["dog", "unicorn"])
    with pytest.raises(DetectError, match="CUDA"):
        Detector(fastest_cfg, fastest_weights, half=True)


def test_api_refuses_what_is_not_an_image(detector: Detector, samples_dir: Path, tmp_path: Path) -> None:
    """cv2.imread returns None for a missing file: say so, instead of "'NoneType' is not iterable"."""
    missing = cv2.imread(str(tmp_path / "missing.jpg"))
    assert missing is None
    with pytest.raises(DetectError, match="got None; did the image load"):
        detector(missing)
    dog = cv2.imread(str(samples_dir / "dog.jpg"))
    with pytest.raises(DetectError, match="image 1: .*got None; did the image load"):
        detector([dog, None])
    with pytest.raises(DetectError, match="got the path 'dog.jpg'; read it first"):
        detector("dog.jpg")
    with pytest.raises(DetectError, match="got int"):
        detector(3)
    assert detector([]) == []


# --- the command line ----------------------------------------------------------------------
def test_cli_json_and_txt_agree_and_match_darknet(tmp_path: Path, samples_dir: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    rc = main(["--source", str(samples_dir / "dog.jpg"), "--output", str(out), "--save-txt",
               "--save-json", "--no-progress"])
    assert rc == 0
    assert f"results saved to {out}" in capsys.readouterr().out
    annotated = cv2.imread(str(out / "dog.jpg"))
    assert annotated is not None and annotated.shape == (576, 768, 3)
    assert not np.array_equal(annotated, cv2.imread(str(samples_dir / "dog.jpg")))

    records = json.loads((out / "detections.json").read_text())
    assert {tuple(sorted(r)) for r in records} == {("bbox_xyxy", "class_id", "class_name", "file", "score")}
    assert all(r["file"].endswith("dog.jpg") for r in records)
    names = (samples_dir.parent / "coco.names").read_text().split("\n")
    assert all(r["class_name"] == names[r["class_id"]] for r in records)
    as_dets = np.array([[*r["bbox_xyxy"], r["score"], r["class_id"]] for r in records], np.float32)
    _assert_matches_darknet(as_dets)  # the CLI's defaults reproduce Darknet

    rows = np.loadtxt(out / "labels" / "dog.txt", ndmin=2)
    assert rows.shape == (len(records), 6)
    w, h = 768, 576
    from_json = np.array([[r["class_id"], (r["bbox_xyxy"][0] + r["bbox_xyxy"][2]) / 2 / w,
                           (r["bbox_xyxy"][1] + r["bbox_xyxy"][3]) / 2 / h,
                           (r["bbox_xyxy"][2] - r["bbox_xyxy"][0]) / w,
                           (r["bbox_xyxy"][3] - r["bbox_xyxy"][1]) / h, r["score"]] for r in records])
    assert np.all((rows[:, 1:5] >= 0) & (rows[:, 1:5] <= 1))
    np.testing.assert_allclose(rows, from_json, atol=1e-4)


def test_cli_folder_with_unreadable_image(tmp_path: Path, samples_dir: Path, caplog: pytest.LogCaptureFixture,
                                          capsys: pytest.CaptureFixture) -> None:
    src = tmp_path / "imgs"
    src.mkdir()
    for name in ("dog.jpg", "eagle.jpg"):
        (src / name).write_bytes((samples_dir / name).read_bytes())
    (src / "broken.jpg").write_bytes(b"this is not a JPEG")
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="yolo.outputs"):
        rc = main(["--source", str(src), "--output", str(out), "--no-progress", "--batch-size", "2",
                   "--workers", "0"])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["dog.jpg", "eagle.jpg"]
    assert any("broken.jpg" in r.getMessage() and "skipped" in r.getMessage() for r in caplog.records)
    summary = capsys.readouterr().out.strip().splitlines()[-2]
    assert summary.startswith("2 images") and "1 unreadable image(s) skipped" in summary


def test_cli_video_end_to_end(tmp_path: Path, video: Path) -> None:
    out = tmp_path / "out"
    assert main(["--source", str(video), "--output", str(out), "--save-json", "--save-txt",
                 "--no-progress", "--batch-size", "4"]) == 0
    written = [p for p in out.iterdir() if p.suffix in (".mp4", ".avi")]
    assert len(written) == 1
    assert _count_frames(written[0]) == (6, (320, 240))
    cap = cv2.VideoCapture(str(written[0]))
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(5.0)
    cap.release()
    frames = {r["frame"] for r in json.loads((out / "detections.json").read_text())}
    assert frames and frames <= set(range(6))
    assert len(list((out / "labels").glob("clip_*.txt"))) == 6


def test_video_with_undecodable_frame_is_skipped_and_counted(tmp_path: Path, video: Path,
                                                             detector: Detector) -> None:
    data = bytearray(video.read_bytes())
    starts = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xD8]
    assert len(starts) == 6  # one JPEG per frame
    data[starts[2]:starts[3] - 16] = bytes(starts[3] - 16 - starts[2])  # wipe the third frame
    bad = tmp_path / "bad.avi"
    bad.write_bytes(bytes(data))
    summary = detect_source(detector, bad, tmp_path / "out", progress=False)
    assert (summary.frames, summary.bad_frames) == (5, 1)
    assert "1 undecodable frame(s) skipped" in summary.line()
    assert _count_frames(summary.saved[0])[0] == 5


def test_webcam_stops_cleanly_on_ctrl_c(tmp_path: Path, detector: Detector, samples_dir: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    frame = cv2.resize(cv2.imread(str(samples_dir / "dog.jpg")), (320, 240))
    released = []

    class FakeCamera:  # three frames, then the user presses Ctrl-C
        def __init__(self, index: int) -> None:
            assert index == 0
            self.reads = 0

        def isOpened(self) -> bool:
            return True

        def get(self, prop: int) -> float:
            return 0.0  # a camera knows no frame count, and here no fps either

        def read(self) -> tuple[bool, np.ndarray]:
            self.reads += 1
            if self.reads > 3:
                raise KeyboardInterrupt
            return True, frame.copy()

        def release(self) -> None:
            released.append(True)

    monkeypatch.setattr(cv2, "VideoCapture", FakeCamera)
    summary = detect_source(detector, "0", tmp_path / "out", save_json=True, progress=False)
    assert summary.interrupted and summary.frames == 3 and released == [True]
    assert "stopped early" in summary.line()
    monkeypatch.undo()
    assert _count_frames(summary.saved[0]) == (3, (320, 240))  # the video was closed properly
    assert {r["frame"] for r in json.loads((tmp_path / "out" / "detections.json").read_text())} == {0, 1, 2}


@pytest.mark.parametrize("case", ["bad-video", "missing-weights", "names-mismatch", "missing-source",
                                  "half-on-cpu", "bad-device", "webcam"])
def test_cli_user_errors_are_one_clear_line(case: str, tmp_path: Path, capsys: pytest.CaptureFixture,
                                            samples_dir: Path) -> None:
    dog = str(samples_dir / "dog.jpg")
    base = ["--output", str(tmp_path / "out"), "--no-progress"]
    if case == "bad-video":
        (tmp_path / "broken.avi").write_bytes(b"\x00" * 1000)
        argv, expect = ["--source", str(tmp_path / "broken.avi")], "cannot open video"
    elif case == "missing-weights":
        argv, expect = ["--source", dog, "--weights", str(tmp_path / "nope.weights")], "nope.weights"
    elif case == "names-mismatch":
        (tmp_path / "three.names").write_text("a\nb\nc\n")
        argv, expect = ["--source", dog, "--names", str(tmp_path / "three.names")], "3 class names"
    elif case == "missing-source":
        argv, expect = ["--source", str(tmp_path / "nowhere")], "source not found"
    elif case == "half-on-cpu":
        argv, expect = ["--source", dog, "--half"], "CUDA"
    elif case == "bad-device":
        argv, expect = ["--source", dog, "--device", "gpu7"], "--device"
    else:
        argv, expect = ["--source", "97"], "cannot open webcam 97"
    assert main(argv + base) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expect in err[0], err
    if case == "names-mismatch":
        assert "80 classes" in err[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_view_without_gui_says_so(tmp_path: Path, samples_dir: Path, capsys: pytest.CaptureFixture) -> None:
    if has_gui():
        pytest.skip("this OpenCV has a GUI")
    assert main(["--source", str(samples_dir / "dog.jpg"), "--view", "--no-save", "--no-progress"]) == 2
    assert "GUI" in capsys.readouterr().err


def test_script_exit_codes(tmp_path: Path, root: Path) -> None:
    """`python detect.py` with no arguments works out of the box; an error is one line, no traceback."""
    ok = subprocess.run([sys.executable, str(root / "detect.py"), "--no-progress", "--quiet"], cwd=tmp_path,
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    out = tmp_path / "runs" / "detect" / "exp"
    assert f"results saved to {Path('runs') / 'detect' / 'exp'}" in ok.stdout
    assert len(list(out.glob("*.jpg"))) == len(list((root / "data" / "samples").glob("*.jpg")))
    bad = subprocess.run([sys.executable, str(root / "detect.py"), "--source", "missing.jpg"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == ["error: source not found: 'missing.jpg' (expected an image, "
                                               "a video, a folder, a glob, a .txt list of images or a "
                                               "webcam index)"]


# --- sources and drawing (no model) --------------------------------------------------------
def test_resolve_source_kinds(tmp_path: Path, samples_dir: Path, video: Path) -> None:
    assert resolve_source(samples_dir).paths == sorted(samples_dir.glob("*.jpg"))
    assert resolve_source(str(samples_dir / "d*.jpg")).paths == [samples_dir / "dog.jpg"]
    assert resolve_source(samples_dir / "dog.jpg").kind == "images"
    (tmp_path / "dog.jpg").write_bytes(b"")
    listing = tmp_path / "list.txt"
    listing.write_text(f"# comment\n{samples_dir / 'eagle.jpg'}\n\ndog.jpg\n")
    assert resolve_source(listing).paths == [samples_dir / "eagle.jpg", tmp_path / "dog.jpg"]
    assert resolve_source(video).kind == "video"
    assert (resolve_source("0").kind, resolve_source("0").target) == ("webcam", 0)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DetectError, match="no images"):
        resolve_source(empty)
    with pytest.raises(DetectError, match="matches no images"):
        resolve_source(str(tmp_path / "*.png"))
    (tmp_path / "notes.doc").write_text("x")
    with pytest.raises(DetectError, match="unknown source type"):
        resolve_source(tmp_path / "notes.doc")


def test_txt_list_resolves_against_its_folder_then_the_current_directory(
        tmp_path: Path, samples_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lists, cwd = tmp_path / "lists", tmp_path / "cwd"
    (lists / "imgs").mkdir(parents=True)
    (cwd / "imgs").mkdir(parents=True)
    dog = (samples_dir / "dog.jpg").read_bytes()
    for folder in (lists, cwd):
        (folder / "imgs" / "both.jpg").write_bytes(dog)  # beside the list and in the current dir
    (cwd / "imgs" / "cwd_only.jpg").write_bytes(dog)
    listing = lists / "list.txt"
    listing.write_text("imgs/both.jpg\nimgs/cwd_only.jpg\n")
    monkeypatch.chdir(cwd)
    paths = resolve_source(listing).paths
    assert paths[0] == lists / "imgs" / "both.jpg"  # the list's folder wins
    assert paths[1].resolve() == cwd / "imgs" / "cwd_only.jpg"  # then the current directory


def test_draw_colours_and_labels() -> None:
    assert class_colour(3) == class_colour(3 + len(PALETTE)) and len(set(PALETTE)) == len(PALETTE)
    assert text_colour((255, 255, 255)) == (0, 0, 0) and text_colour((0, 0, 0)) == (255, 255, 255)
    for colour in PALETTE:  # label text contrasts with its background: WCAG ratio >= 4.5 (AA)
        c = np.array(colour[::-1]) / 255  # RGB
        lin = np.where(c <= 0.03928, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
        lum = float(lin @ [0.2126, 0.7152, 0.0722])
        txt = 0.0 if text_colour(colour) == (0, 0, 0) else 1.0
        assert (max(lum, txt) + 0.05) / (min(lum, txt) + 0.05) >= 4.5, colour
    img = np.full((200, 300, 3), 90, np.uint8)
    dets = np.array([[50, 60, 150, 160, 0.9, 2], [0, 0, 40, 30, 0.5, 7]], np.float32)
    out = draw_detections(img, dets, names=[f"c{i}" for i in range(10)])
    assert np.all(img == 90), "input untouched"
    assert tuple(out[110, 50]) == class_colour(2)  # left edge of the first box
    assert np.array_equal(out[100:140, 70:140], img[100:140, 70:140])  # box inside untouched
    assert (out[:30, :40] != 90).any(axis=-1).sum() > 100  # label of the box at the border drawn inside


def test_api_reads_pt_checkpoint_with_its_names(tmp_path: Path, fastest_cfg: Path, fastest_weights: Path,
                                                samples_dir: Path, detector: Detector) -> None:
    from yolo import Darknet
    from yolo.checkpoint import save_checkpoint
    model = Darknet(fastest_cfg).load_darknet_weights(fastest_weights)
    names = [f"thing{i}" for i in range(80)]
    save_checkpoint({"model": model.state_dict(), "names": names}, tmp_path / "m.pt")
    det = Detector(fastest_cfg, tmp_path / "m.pt")
    assert det.names == names
    dog = cv2.imread(str(samples_dir / "dog.jpg"))
    np.testing.assert_allclose(det(dog), detector(dog), atol=1e-4)


def test_video_whose_frame_size_changes_midway_keeps_every_frame(tmp_path: Path, detector: Detector,
                                                                 samples_dir: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    dog = cv2.imread(str(samples_dir / "dog.jpg"))
    frames = [cv2.resize(dog, (320, 240))] * 3 + [cv2.resize(dog, (200, 150))] * 2

    class Capture:  # a stream that changes resolution after 3 frames
        def __init__(self, spec: str) -> None:
            self.i = 0

        def isOpened(self) -> bool:
            return True

        def get(self, prop: int) -> float:
            return {cv2.CAP_PROP_FPS: 5.0, cv2.CAP_PROP_FRAME_COUNT: 5.0}.get(prop, 0.0)

        def read(self) -> tuple[bool, np.ndarray | None]:
            self.i += 1
            return (True, frames[self.i - 1].copy()) if self.i <= len(frames) else (False, None)

        def release(self) -> None:
            pass

    monkeypatch.setattr(cv2, "VideoCapture", Capture)
    summary = detect_source(detector, "rtsp://camera/stream", tmp_path / "out", save_json=True, progress=False)
    monkeypatch.undo()
    assert (summary.frames, summary.bad_frames, summary.resized_frames) == (5, 0, 2)
    assert "2 frame(s) of another size" in summary.line()
    assert _count_frames(summary.saved[0]) == (5, (320, 240))
    dogs = [r for r in json.loads((tmp_path / "out" / "detections.json").read_text()) if r["class_name"] == "dog"]
    assert {r["frame"] for r in dogs} == set(range(5))  # detected at either size


def test_log_output_is_whole_lines(tmp_path: Path, root: Path) -> None:
    """Into a log (stdout and stderr to one pipe) the progress bar stays out: it draws with carriage
    returns that tear the per-image lines."""
    run = subprocess.run([sys.executable, str(root / "detect.py"), "--output", str(tmp_path / "o")], cwd=tmp_path,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert run.returncode == 0, run.stdout
    assert "\r" not in run.stdout
    lines = run.stdout.splitlines()
    for photo in (root / "data" / "samples").glob("*.jpg"):
        assert sum(line.startswith(str(photo) + ": ") for line in lines) == 1, (photo, lines)


def test_unreadable_checkpoint_is_one_short_line(tmp_path: Path, root: Path) -> None:
    """torch's weights-only refusal is a paragraph; the error keeps what the file is not and the first
    line of the cause."""
    import argparse

    import torch
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": {}, "args": argparse.Namespace(a=1)}, foreign)  # a class weights_only refuses
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a zip or a pickle" * 10)
    for path in (foreign, garbage):
        bad = subprocess.run([sys.executable, str(root / "detect.py"), "--weights", str(path)], cwd=tmp_path,
                             capture_output=True, text=True, timeout=300)
        assert bad.returncode == 2
        err = bad.stderr.strip().splitlines()
        assert len(err) == 1 and f"{path}: not a readable checkpoint (" in err[0] and len(err[0]) < 300, err
        assert "\x1b" not in err[0]  # torch's message carries terminal colour codes
