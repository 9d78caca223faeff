"""Tests of upanets_keras.data: loaders for every dataset route and the tf.data pipelines.

All fixtures are written into pytest's tmp_path; nothing touches the network.
"""

import io
import json
import logging
import pickle
import socket
import subprocess
import sys
import tarfile
import time
import zipfile

import numpy as np
import pytest
from PIL import Image

from upanets_keras import data as D
from upanets_keras import defaults
from upanets_keras.data import DataError, DatasetInfo
from upanets_keras.data import draws
from upanets_keras.data.draws import steps_per_epoch
from upanets_keras.data.pipeline import make_eval_dataset, make_train_dataset
from upanets_keras.data.registry import canonical_name
from upanets_keras.data.sources.cifar import CIFAR10_CLASSES
from upanets_keras.data.splits import stratified_split
from upanets_keras.data.sources import tfds as tfds_source


# --------------------------------------------------------------- CIFAR fixtures

def cifar_image(i):
    """A 32x32 RGB image whose three planes differ and encode ``i``."""
    h = np.arange(32)[:, None]
    w = np.arange(32)[None, :]
    r = (h * 8 + w + i) % 256
    g = (255 - h * 7 - w * 2 - i) % 256
    b = (w * 8 + i * 3) % 256 + 0 * h
    return np.stack([r, g, b], -1).astype(np.uint8)


def image_id(img):
    """Recovers ``i`` from a ``cifar_image(i)`` (B plane at column 0 is 3*i)."""
    return int(img[0, 0, 2]) // 3


def planar_rows(ids):
    """CIFAR rows: 1024 R values, then 1024 G, then 1024 B, each row-major."""
    return np.stack([cifar_image(i).transpose(2, 0, 1).reshape(-1) for i in ids])


def add_file(tar, name, payload):
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


CIFAR10_TRAIN_IDS = [list(range(b * 3, b * 3 + 3)) for b in range(5)]  # 15 images
CIFAR10_TEST_IDS = [70, 71, 72, 73]
CIFAR10_NAMES = [f"name{k}" for k in range(10)]


def cifar10_python_files():
    files = {}
    for b, ids in enumerate(CIFAR10_TRAIN_IDS, 1):
        files[f"data_batch_{b}"] = {
            b"batch_label": f"training batch {b} of 5".encode(),
            b"labels": [i % 10 for i in ids],
            b"data": planar_rows(ids),
            b"filenames": [f"img{i}.png".encode() for i in ids],
        }
    files["test_batch"] = {
        b"batch_label": b"testing batch 1 of 1",
        b"labels": [i % 10 for i in CIFAR10_TEST_IDS],
        b"data": planar_rows(CIFAR10_TEST_IDS),
        b"filenames": [f"img{i}.png".encode() for i in CIFAR10_TEST_IDS],
    }
    files["batches.meta"] = {
        b"label_names": [n.encode() for n in CIFAR10_NAMES],
        b"num_cases_per_batch": 3, b"num_vis": 3072,
    }
    # protocol 2 is what the official (python 2) archive uses
    return {k: pickle.dumps(v, protocol=2) for k, v in files.items()}


def write_tar(path, folder, files):
    with tarfile.open(path, "w:gz") as tar:
        for name, payload in files.items():
            add_file(tar, f"{folder}/{name}", payload)


def check_cifar10(splits):
    info = splits.info
    assert info.name == "cifar10"
    assert info.num_classes == 10 and info.class_names == CIFAR10_NAMES
    assert info.image_size == 32 and info.pad == 4 and info.flip is True
    assert info.mean == defaults.CIFAR_MEAN and info.std == defaults.CIFAR_STD
    (xtr, ytr), (xva, yva), (xte, yte) = splits.train, splits.val, splits.test
    for x, y in (splits.train, splits.val, splits.test):
        assert x.dtype == np.uint8 and x.shape[1:] == (32, 32, 3)
        assert y.dtype == np.int32 and y.shape == (len(x),)
    assert len(xtr) + len(xva) == 15 and len(xva) >= 1 and len(xtr) >= 10
    # official test set, in file order, exact pixels (proves planar -> NHWC)
    assert len(xte) == 4
    np.testing.assert_array_equal(xte[0], cifar_image(70))
    assert xte[0, 5, 7].tolist() == [(5 * 8 + 7 + 70) % 256,
                                      (255 - 35 - 14 - 70) % 256,
                                      (7 * 8 + 70 * 3) % 256]
    assert yte.tolist() == [0, 1, 2, 3]
    ids = [image_id(img) for img in np.concatenate([xtr, xva])]
    assert sorted(ids) == list(range(15))
    for img, label in zip(np.concatenate([xtr, xva]), np.concatenate([ytr, yva])):
        np.testing.assert_array_equal(img, cifar_image(image_id(img)))
        assert label == image_id(img) % 10


def test_cifar10_python_archive_and_extracted_folder(tmp_path):
    files = cifar10_python_files()
    write_tar(tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py", files)
    from_tar = D.load_splits("cifar10", data_dir=tmp_path)
    check_cifar10(from_tar)
    assert not (tmp_path / "cifar-10-batches-py").exists()  # read in place

    extracted = tmp_path / "other" / "cifar-10-batches-py"
    extracted.mkdir(parents=True)
    for name, payload in files.items():
        (extracted / name).write_bytes(payload)
    from_dir = D.load_splits("cifar10", data_dir=tmp_path / "other")
    check_cifar10(from_dir)
    for a, b in zip((from_tar.train, from_tar.val, from_tar.test),
                    (from_dir.train, from_dir.val, from_dir.test)):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])

    bigger = D.load_splits("cifar10", data_dir=tmp_path, image_size=64)
    assert bigger.train[0].shape[1:] == (64, 64, 3)
    assert bigger.info.image_size == 64 and bigger.info.pad == 8


def test_cifar10_binary_archive(tmp_path):
    def records(ids):
        return b"".join(bytes([i % 10]) + planar_rows([i])[0].tobytes() for i in ids)

    files = {f"data_batch_{b}.bin": records(ids)
             for b, ids in enumerate(CIFAR10_TRAIN_IDS, 1)}
    files["test_batch.bin"] = records(CIFAR10_TEST_IDS)
    files["batches.meta.txt"] = ("\n".join(CIFAR10_NAMES) + "\n\n").encode()
    write_tar(tmp_path / "cifar-10-binary.tar.gz", "cifar-10-batches-bin", files)
    check_cifar10(D.load_splits("cifar10", data_dir=tmp_path))


def test_cifar100_python_archive(tmp_path):
    train_ids, test_ids = list(range(12)), [40, 41]
    names = [f"fine{k}" for k in range(100)]

    def batch(ids):
        return pickle.dumps({
            b"filenames": [b"x.png"] * len(ids), b"batch_label": b"b",
            b"fine_labels": [(i * 9) % 100 for i in ids],
            b"coarse_labels": [i % 20 for i in ids],
            b"data": planar_rows(ids)}, protocol=2)

    files = {"train": batch(train_ids), "test": batch(test_ids),
             "meta": pickle.dumps({b"fine_label_names": [n.encode() for n in names],
                                   b"coarse_label_names": [b"c"] * 20}, protocol=2)}
    write_tar(tmp_path / "cifar-100-python.tar.gz", "cifar-100-python", files)
    splits = D.load_splits("cifar100", data_dir=tmp_path, val_split=0.25, seed=3)
    assert splits.info.num_classes == 100 and splits.info.class_names == names
    assert len(splits.train[0]) + len(splits.val[0]) == 12
    np.testing.assert_array_equal(splits.test[0][1], cifar_image(41))
    assert splits.test[1].tolist() == [(40 * 9) % 100, (41 * 9) % 100]
    for img, label in zip(splits.train[0], splits.train[1]):
        np.testing.assert_array_equal(img, cifar_image(image_id(img)))
        assert label == (image_id(img) * 9) % 100


def test_cifar_pickle_with_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    files = cifar10_python_files()
    files["test_batch"] = pickle.dumps({b"data": Evil()}, protocol=2)
    write_tar(tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py", files)
    with pytest.raises(DataError, match="test_batch"):
        D.load_splits("cifar10", data_dir=tmp_path)


def test_cifar_tfds_route_with_mock_data(tmp_path, monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    monkeypatch.setattr(tfds_source, "host_reachable", lambda *a, **k: True)
    with tfds.testing.mock_data(num_examples=12):
        splits = D.load_splits("cifar10", data_dir=tmp_path, val_split=0.25)
    assert splits.info.class_names == list(CIFAR10_CLASSES)
    assert len(splits.train[0]) + len(splits.val[0]) == 12
    assert len(splits.val[0]) >= 1 and len(splits.test[0]) == 12
    for x, y in (splits.train, splits.val, splits.test):
        assert x.dtype == np.uint8 and x.shape[1:] == (32, 32, 3)
        assert y.dtype == np.int32 and ((y >= 0) & (y < 10)).all()


def test_cifar_offline_without_data_fails_fast(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(tfds_source, "host_reachable", lambda *a, **k: False)
    start = time.monotonic()
    with pytest.raises(DataError) as err, caplog.at_level("WARNING"):
        D.load_splits("cifar10", data_dir=tmp_path)
    assert time.monotonic() - start < 30
    message = str(err.value)
    assert "cifar-10-python.tar.gz" in message and str(tmp_path) in message
    assert "unreachable" in message and "\n" not in message
    # The one-line error only: no absl warning about the version folder that a first run does not have yet.
    assert not [r.getMessage() for r in caplog.records if r.name == "absl"]

    start = time.monotonic()
    with pytest.raises(DataError, match="download"):
        D.load_splits("cifar100", data_dir=tmp_path, download=False)
    assert time.monotonic() - start < 30


def test_host_reachable_is_bounded_by_its_timeout(monkeypatch):
    def hang(*args, **kwargs):
        time.sleep(5)
        raise OSError("never")

    for var in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(socket, "create_connection", hang)
    start = time.monotonic()
    assert tfds_source.host_reachable("example.invalid", timeout=0.2) is False
    assert time.monotonic() - start < 3


# --------------------------------------------------------- Tiny ImageNet fixture

TINY_WNIDS = ["n01443537", "n01629819", "n09999999"]
TINY_COLOURS = [(220, 30, 30), (30, 200, 40), (40, 50, 210)]


def make_tiny_imagenet(root):
    base = root / "tiny-imagenet-200"
    (base / "val" / "images").mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(TINY_WNIDS) + "\n")
    (base / "words.txt").write_text(
        "n00000001\tentity\n"
        "n01443537\tgoldfish, Carassius auratus\n"
        "n01629819\tEuropean fire salamander, Salamandra salamandra\n")
    for k, wnid in enumerate(TINY_WNIDS):
        images = base / "train" / wnid / "images"
        images.mkdir(parents=True)
        (base / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
        for j in range(4):
            img = Image.new("RGB", (64, 64), TINY_COLOURS[k])
            if k == 2 and j == 0:
                img = Image.new("L", (64, 64), 128)  # real set has grayscale JPEGs
            img.save(images / f"{wnid}_{j}.JPEG", quality=95)
    val_labels = [2, 0, 1, 1, 0, 2]
    lines = []
    for j, k in enumerate(val_labels):
        Image.new("RGB", (64, 64), TINY_COLOURS[k]).save(
            base / "val" / "images" / f"val_{j}.JPEG", quality=95)
        lines.append(f"val_{j}.JPEG\t{TINY_WNIDS[k]}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return base, val_labels


def check_tiny(splits, val_labels):
    info = splits.info
    assert info.num_classes == 3
    assert info.class_names == ["goldfish", "European fire salamander", "n09999999"]
    assert info.image_size == 64 and info.pad == 8 and info.flip
    assert info.mean == defaults.IMAGENET_MEAN and info.std == defaults.IMAGENET_STD
    (xtr, ytr), (xva, yva), (xte, yte) = splits.train, splits.val, splits.test
    assert xtr.shape[1:] == (64, 64, 3) and xtr.dtype == np.uint8
    assert len(xtr) + len(xva) == 12 and len(xva) >= 1
    assert yte.tolist() == val_labels
    for img, label in zip(xte, yte):
        assert np.abs(img.mean((0, 1)) - TINY_COLOURS[label]).max() < 12
    grays = [img for img in np.concatenate([xtr, xva])
             if np.abs(img.astype(int) - 128).max() < 6]
    assert len(grays) == 1  # the grayscale JPEG became 3 equal channels
    for img, label in zip(xtr, ytr):
        if np.abs(img.astype(int) - 128).max() >= 6:
            assert np.abs(img.mean((0, 1)) - TINY_COLOURS[label]).max() < 12


def test_tiny_imagenet_folder_and_zip(tmp_path):
    base, val_labels = make_tiny_imagenet(tmp_path / "raw")
    check_tiny(D.load_splits("tiny_imagenet", data_dir=tmp_path / "raw"), val_labels)
    direct = D.load_splits("tiny_imagenet", data_dir=base)
    check_tiny(direct, val_labels)

    zipped = tmp_path / "zipped"
    zipped.mkdir()
    with zipfile.ZipFile(zipped / "tiny-imagenet-200.zip", "w") as zf:
        for path in sorted(base.rglob("*")):
            zf.write(path, path.relative_to(base.parent).as_posix())
    from_zip = D.load_splits("tiny_imagenet", data_dir=zipped)
    check_tiny(from_zip, val_labels)
    np.testing.assert_array_equal(from_zip.train[0], direct.train[0])
    np.testing.assert_array_equal(from_zip.test[0], direct.test[0])

    small = D.load_splits("tiny_imagenet", data_dir=base, image_size=32)
    assert small.test[0].shape == (6, 32, 32, 3) and small.info.pad == 4


def test_tiny_imagenet_missing(tmp_path):
    with pytest.raises(DataError, match="tiny-imagenet-200"):
        D.load_splits("tiny_imagenet", data_dir=tmp_path)
    with pytest.raises(DataError, match="data-dir"):
        D.load_splits("tiny_imagenet")


# -------------------------------------------------------------- image folders

def save_mixed_images(folder, seed):
    """Writes images of many modes and formats; returns how many are valid."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    rgb = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(folder / "rgb.png")
    Image.new("L", (16, 16), 100).save(folder / "gray.png")
    Image.new("RGBA", (30, 30), (10, 20, 30, 0)).save(folder / "alpha.png")
    palette = Image.new("P", (12, 12), 1)
    palette.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    palette.save(folder / "palette.png")
    Image.fromarray(rgb).resize((50, 40)).save(folder / "photo.jpg")
    Image.fromarray(np.full((8, 8), 65535, np.uint16)).save(folder / "deep.png")
    Image.new("RGB", (33, 17), (0, 90, 0)).save(folder / "bitmap.BMP")
    Image.new("RGB", (40, 40), (5, 5, 250)).convert("P").save(folder / "anim.gif")
    Image.new("CMYK", (20, 20), (0, 255, 255, 0)).save(folder / "cmyk.jpg")
    Image.new("RGB", (20, 20), (9, 9, 9)).save(folder / "pic.webp")
    Image.new("RGB", (20, 20), (7, 7, 7)).save(folder / "pic.tiff")
    (folder / "notes.txt").write_text("not an image")
    return 11


def test_load_image_files_converts_every_mode(tmp_path):
    save_mixed_images(tmp_path / "imgs", 0)
    d = tmp_path / "imgs"
    names = ["gray.png", "alpha.png", "palette.png", "deep.png", "photo.jpg",
             "cmyk.jpg", "bitmap.BMP", "anim.gif", "pic.webp", "pic.tiff"]
    x = D.load_image_files([d / n for n in names], 32)
    assert x.shape == (10, 32, 32, 3) and x.dtype == np.uint8
    assert (x[0] == 100).all()                      # L -> equal channels
    assert (x[1] == [10, 20, 30]).all()             # alpha dropped
    assert (x[2] == [200, 10, 10]).all()           # palette
    assert (x[3] == 255).all()                      # 16-bit scaled, not clipped
    assert x[5, 16, 16, 0] > 200 and x[5, 16, 16, 1] < 60  # CMYK red
    assert (x[6] == [0, 90, 0]).all() and (x[9] == 7).all()
    one = D.load_image_files(str(d / "rgb.png"), 16)
    assert one.shape == (1, 16, 16, 3)

    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    with pytest.raises(DataError, match="broken.jpg"):
        D.load_image_files([d / "gray.png", d / "broken.jpg"], 32)
    with pytest.raises(DataError, match="missing.png"):
        D.load_image_files([d / "missing.png"], 32)
    with pytest.raises(DataError, match="multiple of 8"):
        D.load_image_files([d / "gray.png"], 30)


def test_folder_flat_layout_skips_corrupt_files(tmp_path, caplog):
    n_cat = save_mixed_images(tmp_path / "cat", 1)
    n_dog = save_mixed_images(tmp_path / "dog", 2)
    (tmp_path / "dog" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (tmp_path / "empty_class").mkdir()
    with caplog.at_level(logging.WARNING, logger="upanets_keras.data"):
        splits = D.load_splits("folder", data_dir=tmp_path)
    info = splits.info
    assert info.class_names == ["cat", "dog"] and info.num_classes == 2
    assert info.image_size == 32 and info.pad == 4 and info.flip
    assert all(0 < m < 1 for m in info.mean) and all(0 < s < 1 for s in info.std)
    sizes = [len(s[0]) for s in (splits.train, splits.val, splits.test)]
    assert sum(sizes) == n_cat + n_dog and min(sizes) >= 1
    for x, y in (splits.train, splits.val, splits.test):
        assert x.shape[1:] == (32, 32, 3) and x.dtype == np.uint8
        assert set(y.tolist()) <= {0, 1}
    messages = [r.getMessage() for r in caplog.records]
    assert sum("bad.png" in m for m in messages) == 1
    assert any("skipped 1 unreadable" in m for m in messages)
    json.dumps(info.to_dict())

    again = D.load_splits("folder", data_dir=tmp_path, seed=7)
    np.testing.assert_array_equal(again.test[0], splits.test[0])  # fixed test seed
    small = D.load_splits("folder", data_dir=tmp_path, image_size=16)
    assert small.train[0].shape[1:] == (16, 16, 3) and small.info.pad == 2


def test_folder_split_layout(tmp_path):
    counts = {"train": 3, "val": 1, "test": 2}
    for split, n in counts.items():
        for k, cls in enumerate(["ant", "bee"]):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            for j in range(n):
                Image.new("RGB", (10, 10), (k * 200, j * 20, 50)).save(folder / f"{j}.png")
    splits = D.load_splits("folder", data_dir=tmp_path, image_size=8)
    assert [len(s[0]) for s in (splits.train, splits.val, splits.test)] == [6, 2, 4]
    assert splits.info.class_names == ["ant", "bee"] and splits.info.pad == 1
    assert splits.test[1].tolist() == [0, 0, 1, 1]
    assert (splits.test[0][2] == [200, 0, 50]).all()

    # no test/: carved out of train with a fixed seed
    import shutil
    shutil.rmtree(tmp_path / "test")
    a = D.load_splits("folder", data_dir=tmp_path, seed=0)
    b = D.load_splits("folder", data_dir=tmp_path, seed=1)
    assert len(a.val[0]) == 2 and len(a.train[0]) + len(a.test[0]) == 6
    np.testing.assert_array_equal(a.test[0], b.test[0])

    # a val/ class that train/ lacks is an error
    (tmp_path / "val" / "cow").mkdir()
    Image.new("RGB", (10, 10)).save(tmp_path / "val" / "cow" / "x.png")
    with pytest.raises(DataError, match="cow"):
        D.load_splits("folder", data_dir=tmp_path)


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match="no images"):
        D.load_splits("folder", data_dir=tmp_path)
    (tmp_path / "only").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "only" / "a.png")
    with pytest.raises(DataError, match="at least 2"):
        D.load_splits("folder", data_dir=tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        D.load_splits("folder", data_dir=tmp_path / "nope")
    with pytest.raises(DataError, match="data-dir"):
        D.load_splits("folder")
    with pytest.raises(DataError, match="multiple of 8"):
        D.load_splits("folder", data_dir=tmp_path, image_size=30)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.png").write_bytes(b"corrupt")
    with pytest.raises(DataError, match="too few images"):
        D.load_splits("folder", data_dir=tmp_path)
    (tmp_path / "only" / "a.png").write_bytes(b"corrupt too")
    with pytest.raises(DataError, match="no readable images"):
        D.load_splits("folder", data_dir=tmp_path)


def test_argument_errors():
    with pytest.raises(DataError, match="cifar10, cifar100, tiny_imagenet, folder, digits"):
        D.load_splits("mnist")
    for bad in (0, 1, 1.5, -0.1):
        with pytest.raises(DataError, match="val_split"):
            D.load_splits("digits", val_split=bad)
    assert canonical_name("CIFAR-10") == "cifar10"
    assert "\n" not in str(DataError("two\nlines"))


# -------------------------------------------------------------------- digits

def test_digits():
    a = D.load_splits("digits")
    b = D.load_splits("digits", seed=1)
    info = a.info
    assert info.num_classes == 10 and info.class_names == [str(i) for i in range(10)]
    assert info.image_size == 32 and info.pad == 4 and info.flip is False
    for x, y in (a.train, a.val, a.test):
        assert x.shape[1:] == (32, 32, 3) and x.dtype == np.uint8
        assert (x[..., 0] == x[..., 2]).all()
    assert sum(len(s[0]) for s in (a.train, a.val, a.test)) == 1797
    assert len(a.test[0]) == pytest.approx(0.2 * 1797, abs=10)
    assert len(a.val[0]) == pytest.approx(0.1 * 0.8 * 1797, abs=10)
    assert a.train[0].max() == 255
    np.testing.assert_array_equal(a.test[0], b.test[0])
    np.testing.assert_array_equal(a.test[1], b.test[1])
    assert not np.array_equal(a.val[1], b.val[1])
    assert info.mean == b.info.mean and 0.1 < info.mean[0] < 0.6
    assert np.bincount(a.test[1]).min() >= 30  # stratified
    assert D.load_splits("digits", image_size=16).train[0].shape[1:] == (16, 16, 3)


def test_dataset_info_roundtrip():
    info = D.load_splits("digits").info
    restored = DatasetInfo.from_dict(json.loads(json.dumps(info.to_dict())))
    assert restored == info


def test_stratified_split():
    keep, held = stratified_split(np.arange(10), 0.3, seed=0)  # singleton classes
    assert len(held) == 3 and len(keep) == 7
    with pytest.raises(DataError, match="too few"):
        stratified_split(np.array([4]), 0.1, seed=0)
    y = np.repeat(np.arange(4), [10, 20, 1, 9])
    keep, held = stratified_split(y, 0.1, seed=0)
    assert np.bincount(y[held], minlength=4).tolist() == [1, 2, 0, 1]
    assert sorted(np.concatenate([keep, held]).tolist()) == list(range(len(y)))
    keep, held = stratified_split(np.array([0, 0, 1]), 0.1, seed=0)
    assert len(held) == 1 and len(keep) == 2


# ----------------------------------------------------------------- pipelines

N, SIZE = 40, 8


@pytest.fixture(scope="module")
def toy():
    rng = np.random.default_rng(0)
    # values >= 1 so zeros in a batch can only come from the padding
    x = rng.integers(1, 256, (N, SIZE, SIZE, 3), dtype=np.uint8)
    y = np.arange(N, dtype=np.int32)  # label = index of the source image
    return x, y


def toy_info(pad, flip):
    return DatasetInfo("toy", N, [str(i) for i in range(N)], SIZE,
                       (0.5,) * 3, (0.25,) * 3, pad, flip)


def collect(ds):
    return [(a.numpy(), b.numpy()) for a, b in ds]


def match_augmentation(out, src, pad):
    """All (dy, dx, flipped) whose pad+crop(+flip) of src gives out."""
    padded = np.pad(src, ((pad, pad), (pad, pad), (0, 0)))
    found = []
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            crop = padded[dy:dy + SIZE, dx:dx + SIZE]
            for flipped in (False, True):
                if np.array_equal(crop[:, ::-1] if flipped else crop, out):
                    found.append((dy, dx, flipped))
    return found


def test_train_dataset_is_deterministic_and_resumable(toy):
    x, y = toy
    info = toy_info(2, True)
    full = collect(make_train_dataset(x, y, info, 6, seed=5, num_epochs=3))
    steps = steps_per_epoch(N, 6)
    assert steps == 6 and len(full) == 3 * steps
    again = collect(make_train_dataset(x, y, info, 6, seed=5, num_epochs=3))
    resumed = collect(make_train_dataset(x, y, info, 6, seed=5, first_epoch=1,
                                           num_epochs=2))
    endless = collect(make_train_dataset(x, y, info, 6, seed=5).take(3 * steps + 1))
    other_seed = collect(make_train_dataset(x, y, info, 6, seed=6, num_epochs=1))
    for ref, runs in ((full, [again, endless[:3 * steps]]), (full[steps:], [resumed])):
        for run in runs:
            assert len(run) == len(ref)
            for (a, la), (b, lb) in zip(ref, run):
                np.testing.assert_array_equal(a, b)
                np.testing.assert_array_equal(la, lb)
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(full, other_seed))
    for epoch in range(3):
        labels = np.concatenate([l for _, l in full[epoch * steps:(epoch + 1) * steps]])
        assert len(set(labels.tolist())) == steps * 6  # a permutation, no repeats
    epoch0 = np.concatenate([l for _, l in full[:steps]])
    epoch1 = np.concatenate([l for _, l in full[steps:2 * steps]])
    assert not np.array_equal(epoch0, epoch1)


def test_train_augmentation_pads_crops_and_flips(toy):
    x, y = toy
    ds = make_train_dataset(x, y, toy_info(2, True), 8, seed=1, num_epochs=2)
    assert ds.cardinality().numpy() == 2 * (N // 8)
    offsets, flips, changed = set(), set(), 0
    for images, labels in collect(ds):
        assert images.dtype == np.float32 and images.shape == (8, SIZE, SIZE, 3)
        assert labels.dtype == np.int32 and labels.shape == (8,)
        assert images.min() >= 0 and images.max() <= 255
        assert np.array_equal(images, np.round(images))
        for img, label in zip(images.astype(np.uint8), labels):
            found = match_augmentation(img, x[label], 2)
            assert found, "output is not a pad+crop(+flip) of its source image"
            offsets.update((dy, dx) for dy, dx, _ in found)
            flips.update(f for _, _, f in found)
            changed += not np.array_equal(img, x[label])
    assert flips == {False, True} and len(offsets) > 5 and changed > 40


def test_train_without_flip_or_pad(toy):
    x, y = toy
    for images, labels in collect(
            make_train_dataset(x, y, toy_info(0, False), 7, num_epochs=1)):
        np.testing.assert_array_equal(images, x[labels].astype(np.float32))
    for images, labels in collect(
            make_train_dataset(x, y, toy_info(1, False), 10, num_epochs=2)):
        for img, label in zip(images.astype(np.uint8), labels):
            found = match_augmentation(img, x[label], 1)
            assert found and not any(f for _, _, f in found)


def test_hflip_and_crop_padding_switch_the_flip_and_the_shift(toy):
    """0 turns each off, hflip 1 flips every image; the tf.data stream and the numpy batches agree."""
    from upanets_keras.data.batches import TrainBatches
    from upanets_keras.data.draws import Augmentations

    x, y = toy
    info = toy_info(2, True)
    for hflip, pad, expected in ((0.0, 2, {False}), (1.0, 0, {True}), (0.0, 0, {False})):
        augment = Augmentations(hflip=hflip, crop_padding=pad)
        batches = collect(make_train_dataset(x, y, info, 8, seed=1, num_epochs=2, augment=augment))
        numpy = TrainBatches(x, y, info, 8, seed=1, num_epochs=2, augment=augment, workers=0)
        offsets, flips = set(), set()
        for k, (images, labels) in enumerate(batches):
            np.testing.assert_array_equal(numpy[k][0], images)
            for img, label in zip(images.astype(np.uint8), labels):
                found = match_augmentation(img, x[label], 2)  # offsets in the 2-pixel frame: (2, 2) is no shift
                assert found, (hflip, pad)
                offsets.update((dy, dx) for dy, dx, _ in found)
                flips.update(f for _, _, f in found)
        assert flips == expected, (hflip, pad)
        assert (len(offsets) > 5) if pad else offsets == {(2, 2)}, (hflip, pad)
    half = draws.plan_training(x, y, info, 8, seed=1, augment=Augmentations(hflip=0.5))
    assert half.hflip == 0.5 and half.pad == 2
    with pytest.raises(DataError, match="flip probability"):
        draws.plan_training(x, y, info, 8, augment=Augmentations(hflip=1.5))


def test_the_default_augmentation_draws_what_it_always_drew():
    """The paper's pad-crop-flip by default, pixel for pixel as before --hflip and --crop-padding existed."""
    import hashlib

    rng = np.random.default_rng(0)
    x, y = rng.integers(1, 256, (40, 8, 8, 3), dtype=np.uint8), np.arange(40) % 4
    h = hashlib.sha256()
    for flip in (True, False):
        info = DatasetInfo("toy", 4, list("abcd"), 8, (0.5,) * 3, (0.25,) * 3, pad=1, flip=flip)
        plan = draws.plan_training(x, y, info, 8, seed=3)
        for epoch in (0, 2):
            for step in range(plan.steps):
                images, labels = plan.batch(epoch, step)
                h.update(images.tobytes())
                h.update(labels.tobytes())
    # the sha256 of these batches drawn by the code before the options (commit 3c3f31b)
    assert h.hexdigest() == "8aac9a7c8b07a97cf1f0e323438f3f00d7dfa45b5d99ef903b060cefe21f5bd8"


def test_train_dataset_errors(toy):
    x, y = toy
    with pytest.raises(DataError, match="--batch-size"):
        make_train_dataset(x, y, toy_info(1, True), N + 1)
    assert len(collect(make_train_dataset(x, y, toy_info(1, True), N,
                                            num_epochs=1))) == 1
    with pytest.raises(DataError, match="image size|px"):
        make_train_dataset(x[:, :4, :4], y, toy_info(1, True), 4)
    with pytest.raises(DataError):
        make_train_dataset(x, y[:-1], toy_info(1, True), 4)


EXIT_WITH_LIVE_ITERATOR = """
import time, numpy as np, tensorflow as tf
from upanets_keras.data import DatasetInfo
from upanets_keras.data.pipeline import make_train_dataset
x, y = np.zeros((8, 8, 8, 3), np.uint8), np.arange(8) % 2
ours = iter(make_train_dataset(x, y, DatasetInfo("toy", 2, ["a", "b"], 8, (0.5,) * 3, (0.25,) * 3, 1, True), 4))
def slow(i):
    time.sleep(0.05)
    return i
busy = tf.data.Dataset.range(10 ** 9).map(lambda i: tf.numpy_function(slow, [i], tf.int64), num_parallel_calls=4)
busy = iter(busy.prefetch(8))
next(ours), next(busy)
print("done")
"""


@pytest.mark.heavy  # a TensorFlow subprocess
def test_a_process_with_live_iterators_exits():
    """Iterators alive at exit are freed before finalization (TensorFlow otherwise hangs on in-flight numpy calls)."""
    proc = subprocess.run([sys.executable, "-c", EXIT_WITH_LIVE_ITERATOR], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "done", proc.stderr[-2000:]


def test_eval_dataset(toy):
    x, y = toy
    batches = collect(make_eval_dataset(x, y, 16))
    assert [len(l) for _, l in batches] == [16, 16, 8]
    images = np.concatenate([a for a, _ in batches])
    assert images.dtype == np.float32
    np.testing.assert_array_equal(images, x.astype(np.float32))
    np.testing.assert_array_equal(np.concatenate([l for _, l in batches]), y)
    assert len(collect(make_eval_dataset(x, y, 1000))) == 1
    with pytest.raises(DataError, match="batch"):
        make_eval_dataset(x, y, 0)
