"""Datasets bigger than memory: the disk cache, streaming reads, imagenet_resized, per-worker reading."""

import json
import os
import resource
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from upanets_keras import data as D
from upanets_keras.data import DataError
from upanets_keras.data.cache import CachedImages
from upanets_keras.data.pipeline import make_eval_dataset, make_train_dataset
from upanets_keras.data.sources import tfds as tfds_source
from upanets_keras.defaults import IMAGENET_MEAN

CLI = [sys.executable, "-m", "upanets_keras_cli.main"]


def make_folder(root, per_class=30, classes=("ant", "bee", "cow"), size=20):
    rng = np.random.default_rng(0)
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for j in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            pixels[..., 0] = k * 80
            Image.fromarray(pixels).save(root / name / f"{j:03d}.png")
    return root


def batches(dataset, n):
    return [(x.numpy(), y.numpy()) for x, y in dataset.take(n)]


def test_disk_cache_holds_exactly_the_images_and_batches_of_memory(tmp_path):
    data = make_folder(tmp_path / "photos")
    memory = D.load_splits("folder", data_dir=data, image_size=16, cache="memory")
    disk = D.load_splits("folder", data_dir=data, image_size=16, cache="disk", cache_dir=tmp_path / "cache")
    for (xm, ym), (xd, yd) in zip((memory.train, memory.val, memory.test), (disk.train, disk.val, disk.test)):
        assert isinstance(xm, np.ndarray) and isinstance(xd, CachedImages)
        assert xd.shape == xm.shape and len(xd) == len(xm)
        np.testing.assert_array_equal(np.asarray(xd), xm)
        np.testing.assert_array_equal(yd, ym)
    assert disk.info == memory.info
    first_memory = batches(make_train_dataset(*memory.train, memory.info, 8, seed=4, num_epochs=2), 12)
    first_disk = batches(make_train_dataset(*disk.train, disk.info, 8, seed=4, num_epochs=2), 12)
    for (xm, ym), (xd, yd) in zip(first_memory, first_disk):
        np.testing.assert_array_equal(xd, xm)
        np.testing.assert_array_equal(yd, ym)
    for (xm, ym), (xd, yd) in zip(batches(make_eval_dataset(*memory.test, 7), 10),
                                  batches(make_eval_dataset(*disk.test, 7), 10)):
        np.testing.assert_array_equal(xd, xm)
        np.testing.assert_array_equal(yd, ym)


def test_disk_cache_is_reused_and_rebuilt_when_the_source_changes(tmp_path, capsys):
    data = make_folder(tmp_path / "photos", per_class=10)
    cache = tmp_path / "cache"
    first = D.load_splits("folder", data_dir=data, image_size=16, cache="disk", cache_dir=cache)
    assert "decoded images cached in" in capsys.readouterr().err
    (folder,) = [p for p in cache.iterdir() if p.is_dir()]
    stamp = (folder / "meta.json").stat().st_mtime_ns

    again = D.load_splits("folder", data_dir=data, image_size=16, cache="disk", cache_dir=cache)
    assert "using the decoded-image cache" in capsys.readouterr().err
    np.testing.assert_array_equal(np.asarray(again.test[0]), np.asarray(first.test[0]))

    Image.new("RGB", (20, 20), (1, 2, 3)).save(data / "bee" / "000.png")  # the source changes
    os.utime(data / "bee" / "000.png", ns=(stamp + 10**9, stamp + 10**9))
    changed = D.load_splits("folder", data_dir=data, image_size=16, cache="disk", cache_dir=cache)
    message = capsys.readouterr().err
    assert "changed since its cache was built" in message and str(data) in message
    pool = np.concatenate([np.asarray(changed.train[0]), np.asarray(changed.val[0]), np.asarray(changed.test[0])])
    assert (pool.reshape(len(pool), -1) == np.tile([1, 2, 3], 16 * 16)).all(axis=1).sum() == 1
    assert [p.name for p in cache.iterdir() if p.is_dir()] == [folder.name]  # replaced, not piled up
    other_size = D.load_splits("folder", data_dir=data, image_size=8, cache="disk", cache_dir=cache)
    assert other_size.train[0].shape[1:] == (8, 8, 3)


@pytest.mark.parametrize("damage", ["truncated", "a flipped byte", "labels missing"])
def test_a_damaged_cache_is_decoded_again_never_read(tmp_path, capsys, damage):
    data = make_folder(tmp_path / "photos", per_class=10)
    cache = tmp_path / "cache"
    D.load_splits("folder", data_dir=data, image_size=16, cache="disk", cache_dir=cache)
    (folder,) = [p for p in cache.iterdir() if p.is_dir()]
    images = sorted(folder.glob("*.u8"), key=lambda p: p.stat().st_size)[-1]
    content = images.read_bytes()
    if damage == "truncated":  # a full disk, a copy cut short
        images.write_bytes(content[: len(content) // 3])
    elif damage == "a flipped byte":  # bit rot
        images.write_bytes(content[:100] + bytes([content[100] ^ 0xFF]) + content[101:])
    else:
        next(folder.glob("*.labels.npy")).unlink()
    capsys.readouterr()
    again = D.load_splits("folder", data_dir=data, image_size=16, cache="disk", cache_dir=cache)
    message = capsys.readouterr().err.strip().splitlines()
    assert len(message) == 2 and f"the decoded-image cache {folder} is damaged (" in message[0], message
    reason = {"truncated": f"{images.name} holds {len(content) // 3:,} of {len(content):,} bytes",
              "a flipped byte": f"{images.name} does not match its checksum",
              "labels missing": ".labels.npy: No such file or directory"}[damage]
    assert reason in message[0] and "decoding it again" in message[0] and "decoded images cached in" in message[1]
    memory = D.load_splits("folder", data_dir=data, image_size=16, cache="memory")
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(np.asarray(getattr(again, name)[0]), getattr(memory, name)[0])


@pytest.mark.heavy
def test_a_killed_build_never_looks_complete(tmp_path):
    data = make_folder(tmp_path / "photos", per_class=40)
    cache = tmp_path / "cache"
    script = ("import sys; from upanets_keras import data; "
              "data.load_splits('folder', data_dir=sys.argv[1], image_size=16, cache='disk', cache_dir=sys.argv[2])")
    proc = subprocess.run([sys.executable, "-c", script, str(data), str(cache)], capture_output=True, text=True,
                          env={**os.environ, "UPANETS_FAULT_AT": "cache"}, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    leftovers = [p.name for p in cache.iterdir() if p.is_dir()]
    assert leftovers and all(".partial-" in name for name in leftovers)  # nothing that looks finished
    splits = D.load_splits("folder", data_dir=data, image_size=16, cache="disk", cache_dir=cache)
    assert len(splits.train[0]) + len(splits.val[0]) + len(splits.test[0]) == 120
    assert [p.name for p in cache.iterdir() if p.is_dir() and ".partial-" in p.name] == []


def test_cache_dir_errors_are_one_line_and_leave_nothing_half_written(tmp_path, monkeypatch):
    data = make_folder(tmp_path / "photos", per_class=10)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(DataError) as err:
        D.load_splits("folder", data_dir=data, image_size=16, cache="disk", cache_dir=blocker / "cache")
    assert "not writable" in str(err.value) and str(blocker) in str(err.value) and "--cache-dir" in str(err.value)

    import collections
    import shutil

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 100, 100))
    with pytest.raises(DataError, match="0.0 GB free"):
        D.load_splits("folder", data_dir=data, image_size=16, cache="disk", cache_dir=tmp_path / "full")
    assert not any(p.is_dir() for p in (tmp_path / "full").iterdir())


@pytest.mark.heavy
def test_a_cache_dir_that_fills_up_mid_write_is_a_clean_cli_error(tmp_path):
    data = make_folder(tmp_path / "photos", per_class=40)
    cache, out = tmp_path / "cache", tmp_path / "run"

    def small_files():  # files of this process may not grow past 64 KiB: a disk that fills up
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, resource.RLIM_INFINITY))

    proc = subprocess.run(CLI + ["train", "--dataset", "folder", "--data-dir", str(data), "--image-size", "16",
                                 "--filters", "4", "--epochs", "1", "--batch-size", "16", "--cache", "disk",
                                 "--cache-dir", str(cache), "-o", str(out)],
                          capture_output=True, text=True, preexec_fn=small_files, timeout=300)
    assert proc.returncode == 1, proc.stderr
    error = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and "ran out of space" in error[0] and str(cache) in error[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not any(p.is_dir() for p in cache.iterdir())  # the partial cache was removed


def test_auto_keeps_memory_within_the_budget_and_goes_to_disk_past_it(tmp_path):
    data = make_folder(tmp_path / "photos", per_class=10)
    small = D.load_splits("folder", data_dir=data, image_size=16, cache="auto", cache_dir=tmp_path / "c")
    assert isinstance(small.train[0], np.ndarray)
    big = D.load_splits("folder", data_dir=data, image_size=16, cache="auto", cache_dir=tmp_path / "c",
                        cache_budget=1000)
    assert isinstance(big.train[0], CachedImages)
    with pytest.raises(DataError, match="auto, memory, disk"):
        D.load_splits("digits", cache="ssd")


def _rss_anon_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    pytest.skip("no RssAnon in /proc/self/status")


def test_reading_a_disk_cache_does_not_load_it_into_memory(tmp_path):
    from upanets_keras.benchmark import _disk_cached

    n, size = 24_000, 32  # 74 MB of decoded images
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    y = rng.integers(0, 10, n).astype(np.int32)
    images, labels = _disk_cached(x, y, tmp_path)
    del x
    info = D.DatasetInfo("synthetic", 10, [str(i) for i in range(10)], size, (0.5,) * 3, (0.25,) * 3, 4, True)
    dataset = make_train_dataset(images, labels, info, 100, num_epochs=1)
    before = _rss_anon_mb()
    seen = sum(len(batch) for batch, _ in dataset)
    grown = _rss_anon_mb() - before
    assert seen == n
    assert grown < 40, f"anonymous memory grew by {grown:.0f} MB reading a 74 MB cache"


def test_imagenet_resized_from_tfds_mock_data_and_offline(tmp_path, monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    monkeypatch.setattr(tfds_source, "host_reachable", lambda *a, **k: True)
    with tfds.testing.mock_data(num_examples=24):
        splits = D.load_splits("imagenet_resized", data_dir=tmp_path, val_split=0.25, cache="disk",
                               cache_dir=tmp_path / "cache")
        small = D.load_splits("imagenet_resized", data_dir=tmp_path, image_size=16, cache="memory")
    assert splits.info.num_classes == 1000 and splits.info.image_size == 32
    assert splits.info.mean == IMAGENET_MEAN and splits.info.flip
    assert len(splits.train[0]) + len(splits.val[0]) == 24 and len(splits.test[0]) == 24
    for x, y in (splits.train, splits.val, splits.test):
        assert x.shape[1:] == (32, 32, 3) and y.dtype == np.int32 and ((y >= 0) & (y < 1000)).all()
    assert small.train[0].shape[1:] == (16, 16, 3)

    monkeypatch.setattr(tfds_source, "host_reachable", lambda *a, **k: False)
    start = time.monotonic()
    with pytest.raises(DataError) as err:
        D.load_splits("imagenet_resized", data_dir=tmp_path / "empty", image_size=64)
    assert time.monotonic() - start < 30
    message = str(err.value)
    assert "imagenet_resized/64x64" in message and "unreachable" in message and "\n" not in message


SHARDS = """
import json, sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from upanets_keras import data as D
from upanets_keras.data.pipeline import make_train_dataset
from upanets_keras.distribute.distribution import ReplicatedDistribution
from upanets_keras.distribute.strategies import make_strategy
from upanets_keras.training import Plan, TrainConfig
from upanets_keras.training.assemble import train_input
splits = D.load_splits("digits", image_size=16, cache=sys.argv[1], cache_dir=sys.argv[2])
whole = [(x.numpy(), y.numpy())
         for x, y in make_train_dataset(*splits.train, splits.info, 64, seed=2, first_epoch=1).take(3)]
strategy = make_strategy("mirrored")
config = TrainConfig(dataset="digits", seed=2, batch_size=64).resolved()  # the dataset's crop and flip
plan = Plan.resolve(config, ReplicatedDistribution(strategy, 64), splits.info, len(splits.train[0]))
stream = iter(train_input(plan, *splits.train, 1))
same = True
for x, y in whole:
    images, labels = next(stream)
    parts = [v.numpy() for v in strategy.experimental_local_results(images)]
    hot = [v.numpy() for v in strategy.experimental_local_results(labels)]
    same &= len(parts) == 2 and all(len(p) == 32 for p in parts)
    same &= np.array_equal(np.concatenate(parts), x) and np.array_equal(np.concatenate(hot).argmax(1), y)
print(json.dumps({"same": bool(same)}))
"""


@pytest.mark.heavy
@pytest.mark.parametrize("cache", ["memory", "disk"])
def test_each_replica_reads_only_its_slice_and_together_they_make_the_global_batch(tmp_path, cache):
    proc = subprocess.run([sys.executable, "-c", SHARDS, cache, str(tmp_path)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"same": True}


def test_slices_of_a_batch_are_the_batch(tmp_path):
    splits = D.load_splits("digits", image_size=16)
    whole = batches(make_train_dataset(*splits.train, splits.info, 60, seed=3), 4)
    thirds = batches(make_train_dataset(*splits.train, splits.info, 60, seed=3, shards=[0, 1, 2],
                                          num_shards=3), 12)
    for k, (x, y) in enumerate(whole):
        np.testing.assert_array_equal(np.concatenate([t[0] for t in thirds[3 * k:3 * k + 3]]), x)
        np.testing.assert_array_equal(np.concatenate([t[1] for t in thirds[3 * k:3 * k + 3]]), y)
    middle = batches(make_train_dataset(*splits.train, splits.info, 60, seed=3, shards=[1], num_shards=3), 4)
    for k, (x, _) in enumerate(middle):
        np.testing.assert_array_equal(x, whole[k][0][20:40])
    with pytest.raises(DataError, match="equal slices"):
        make_train_dataset(*splits.train, splits.info, 64, shards=[0], num_shards=3)


@pytest.mark.slow  # minutes: `make soak`; `make test` kills mid-epoch in test_recipe.py (the in-memory pipeline)
def test_a_disk_cached_run_killed_mid_epoch_resumes_exactly(tmp_path):
    data = make_folder(tmp_path / "photos", per_class=30)  # 65 training images: 4 steps of 16 per epoch
    common = ["train", "--dataset", "folder", "--data-dir", str(data), "--image-size", "16", "--filters", "4",
              "--epochs", "2", "--batch-size", "16", "--cache", "disk", "--cache-dir", str(tmp_path / "cache")]
    whole = subprocess.run(CLI + common + ["-o", str(tmp_path / "whole")], capture_output=True, text=True,
                           timeout=600)
    assert whole.returncode == 0, whole.stderr
    killed = subprocess.run(CLI + common + ["-o", str(tmp_path / "killed")], capture_output=True, text=True,
                            env={**os.environ, "UPANETS_FAULT_AT": "mid_epoch"}, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = subprocess.run(CLI + common + ["-o", str(tmp_path / "killed")], capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "Resuming" in resumed.stdout and "using the decoded-image cache" in resumed.stderr
    a = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    b = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    assert b["epochs_completed"] == 2
    assert b["test_loss"] == pytest.approx(a["test_loss"], rel=1e-5)
    assert b["best_val_accuracy"] == pytest.approx(a["best_val_accuracy"], abs=1e-9)


@pytest.mark.heavy
def test_benchmark_reads_its_input_pipeline_from_a_disk_cache(tmp_path):
    from upanets_keras.benchmark import format_report, run_benchmark

    figures = run_benchmark(filters=4, image_size=16, batch_size=8, steps=2, warmup=1, cache="disk",
                            cache_dir=str(tmp_path))
    assert figures["input_cache"] == "disk" and figures["images_per_second"]["input_pipeline"] > 0
    assert "disk cache" in format_report(figures)
    assert list(tmp_path.iterdir()) == []  # the temporary cache is gone
