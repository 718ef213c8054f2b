"""The dataset-format registry: one dispatch for every caller, a new format is one registered
class, an input no format recognises is refused with the formats named, and ``difficult`` flags
ride along with every record."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from yolo.datasets import (
    DataError,
    DatasetFormat,
    DatasetInfo,
    DataWarning,
    ImageRecord,
    dataset_images,
    dataset_splits,
    drop_crowd,
    formats,
    load_coco,
    load_dataset,
    register_format,
    write_darknet_dataset,
)
from yolo.datasets import registry as format_registry


def _image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((48, 64, 3), 100, np.uint8))
    return path


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def fake_format(monkeypatch, tmp_path):
    """A ``.fake`` format registered for one test only: one image, one box of class 0."""
    monkeypatch.setattr(format_registry, "_FORMATS", dict(format_registry._FORMATS))
    img = _image(tmp_path / "fake_images" / "a.jpg")

    @register_format("fake")
    class Fake(DatasetFormat):
        describe = "a .fake file"
        calls: list[tuple[Path, Path | None, str]] = []

        def recognises(self, path: Path) -> bool:
            return path.suffix == ".fake"

        def read(self, path, images=None, split="valid", names=None):
            self.calls.append((path, images, split))
            rec = ImageRecord(img, 7, np.array([[0, .5, .5, .2, .2]], np.float32), np.zeros(1, bool))
            return DatasetInfo([rec], ["thing"], [1], f"fake {path}")

    return Fake


def test_builtin_formats_registered():
    assert {"darknet", "coco", "image-list"} <= set(formats())


def test_registered_format_is_picked_by_every_dispatch(fake_format, tmp_path):
    fake = _write(tmp_path / "set.fake", "anything")
    assert "fake" in formats()
    info = load_dataset(fake, split="train")
    assert info.source == f"fake {fake}" and [r.image_id for r in info.records] == [7]
    assert fake_format.calls[-1] == (fake, None, "train")
    # a .data split naming a file of the new format reads it through the same dispatch
    data = _write(tmp_path / "x.data", f"classes = 1\nvalid = set.fake\nvalid_images = {tmp_path}\n")
    assert load_dataset(data).source == f"fake {fake}"
    assert fake_format.calls[-1] == (fake, tmp_path, "valid")
    bad = _write(tmp_path / "y.data", "classes = 2\nvalid = set.fake\n")
    with pytest.raises(DataError, match=r"y\.data:1: classes=2 but .*set\.fake has 1 categories"):
        load_dataset(bad)
    # calibration images and anchors' split choice go through it too
    assert dataset_images(fake) == [tmp_path / "fake_images" / "a.jpg"]
    assert dataset_splits(fake) == ()


def test_duplicate_or_incomplete_format_refused(fake_format):
    with pytest.raises(ValueError, match="'fake' is already registered"):
        register_format("fake")(fake_format)

    class NoDescription(fake_format):
        describe = ""

    with pytest.raises(TypeError, match="NoDescription: .* sets 'describe'"):
        register_format("nodesc")(NoDescription)

    class NoRead(DatasetFormat):
        describe = "a reader that cannot read"

        def recognises(self, path: Path) -> bool:
            return False

    with pytest.raises(TypeError, match="abstract"):
        register_format("noread")(NoRead)
    assert "nodesc" not in formats() and "noread" not in formats()


def test_unrecognised_input_names_the_formats(tmp_path):
    csv = _write(tmp_path / "boxes.csv", "a,b\n")
    with pytest.raises(DataError, match=r"boxes\.csv: not a dataset format this reads \(formats: ") as e:
        load_dataset(csv, names=["x"])
    assert all(f"{name}: " in str(e.value) for name in formats())
    with pytest.raises(DataError, match=r"not a dataset format"):
        load_dataset(tmp_path, names=["x"])  # a folder with no images in it
    with pytest.raises(DataError, match="dataset not found"):
        dataset_images(tmp_path / "absent.json")


def test_data_file_split_is_a_list_whatever_its_suffix(tmp_path):
    """Inside a .data file the split key names an image list (Darknet's rule), so a ``.lst``
    file no format recognises by itself is still read as one."""
    img = _image(tmp_path / "images" / "a.jpg")
    _write(tmp_path / "labels" / "a.txt", "1 0.5 0.5 0.2 0.2\n")
    _write(tmp_path / "val.lst", f"{img}\n")
    data = _write(tmp_path / "a.data", "classes = 2\ntrain = val.lst\nvalid = val.lst\n")
    info = load_dataset(data)
    assert [r.path for r in info.records] == [img] and info.records[0].labels[0, 0] == 1
    assert dataset_splits(data) == ("train", "valid")
    # image lists and folders of images read directly, with the caller's names
    assert len(load_dataset(_write(tmp_path / "val.txt", f"{img}\n"), names=["a", "b"]).records) == 1
    assert len(load_dataset(tmp_path / "images", names=["a", "b"]).records) == 1
    with pytest.raises(DataError, match="an image list needs class names"):
        load_dataset(tmp_path / "val.txt")


def test_difficult_defaults_false_and_follows_the_boxes(tmp_path):
    img = _image(tmp_path / "images" / "a.jpg")
    _write(tmp_path / "labels" / "a.txt", "0 0.5 0.5 0.2 0.2\n1 0.3 0.3 0.1 0.1\n")
    rec = load_dataset(_write(tmp_path / "l.txt", f"{img}\n"), names=["a", "b"]).records[0]
    assert rec.difficult.dtype == bool and rec.difficult.tolist() == [False, False]
    ann = _write(tmp_path / "ann.json", '{"images": [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48}],'
                 '"annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 1, 8, 8]}],'
                 '"categories": [{"id": 3, "name": "c"}]}')
    assert load_coco(ann, tmp_path / "images").records[0].difficult.tolist() == [False]

    labels = np.array([[0, .5, .5, .2, .2], [1, .3, .3, .1, .1], [0, .7, .7, .1, .1]], np.float32)
    rec = ImageRecord(img, 1, labels, np.array([False, True, False]), difficult=np.array([True, False, False]))
    kept = drop_crowd(DatasetInfo([rec], ["a", "b"], [1, 2], "t")).records[0]
    assert kept.difficult.tolist() == [True, False] and kept.labels[:, 1].tolist() == pytest.approx([.5, .7])
    with pytest.raises(ValueError, match="2 difficult flags for 3 boxes"):
        ImageRecord(img, 1, labels, np.zeros(3, bool), difficult=np.zeros(2, bool))


def test_calibration_images_dispatch(fake_format, tmp_path):
    from yolo.export import ExportError, calibration_images

    assert calibration_images(_write(tmp_path / "c.fake", "x")) == [tmp_path / "fake_images" / "a.jpg"]
    with pytest.raises(ExportError, match=r"--calib-data: .*c\.csv: not a dataset format"):
        calibration_images(_write(tmp_path / "c.csv", "x"))


def test_darknet_writer_drops_crowd_and_difficult_boxes(tmp_path):
    img = _image(tmp_path / "src" / "a.jpg")
    labels = np.array([[0, .5, .5, .2, .2], [1, .3, .3, .1, .1], [0, .7, .7, .1, .1]], np.float32)
    rec = ImageRecord(img, 1, labels, np.array([False, True, False]), difficult=np.array([False, True, True]))
    with pytest.warns(DataWarning) as caught:
        data = write_darknet_dataset(DatasetInfo([rec], ["a", "b"], [1, 2], "t"), tmp_path / "dn")
    assert sorted(str(w.message).split(": ", 1)[1] for w in caught) == [
        "1 crowd box(es) dropped: Darknet labels cannot mark iscrowd",
        "1 difficult box(es) dropped: Darknet labels cannot mark difficult"]
    back = load_dataset(data).records[0]
    np.testing.assert_allclose(back.labels, labels[:1], atol=1e-6)
