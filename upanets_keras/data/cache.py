"""Where decoded images live: in memory, or in a memory-mapped file per split on disk.

``--cache memory`` decodes every split into a numpy array. ``--cache disk``
decodes once into ``CACHE_DIR/<dataset>-<size>px-<source>/`` (a raw uint8
file per split, its labels and a ``meta.json``), keyed by the source's
identity (paths, sizes, modification times, image size); later runs and tune
trials map the files instead of decoding, and read pages only as batches
need them. A cache is built in a temporary folder and renamed into place
when complete, so a killed build never looks finished; ``meta.json`` records
each file's size and a CRC-32 (of the whole file, or of evenly spaced blocks
of a large one), checked on every load, so a truncated or damaged file is
decoded again rather than read as images. ``auto`` is memory
while the decoded dataset fits ``budget`` bytes (default a quarter of the
machine's RAM), else disk.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import sys
import time
import zlib

import numpy as np

from upanets_keras import faults
from upanets_keras.data.errors import DataError
from upanets_keras.defaults import CACHE_MODES

logger = logging.getLogger(__name__)

CACHE_DIR_ENV = "UPANETS_CACHE_DIR"
FORMAT_VERSION = 2  # 2: meta.json checks its files
RAM_FRACTION = 0.25  # of physical memory: the default budget of `auto`
CHECK_BLOCK = 1 << 20
CHECK_BLOCKS = 64  # a file up to 64 MiB is checked whole; a larger one by 64 spaced blocks of 1 MiB


def default_cache_dir():
    """`UPANETS_CACHE_DIR`, else `$XDG_CACHE_HOME/upanets-keras`, else `~/.cache/upanets-keras`."""
    if os.environ.get(CACHE_DIR_ENV):
        return os.path.expanduser(os.environ[CACHE_DIR_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "upanets-keras")


def default_budget():
    """A quarter of the machine's physical memory, in bytes."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") * RAM_FRACTION)
    except (ValueError, OSError, AttributeError):
        return 4 << 30


class CachedImages:
    """uint8 NHWC images in a memory-mapped cache file, indexed like an array without loading it.

    ``x[i]``, ``x[a:b]`` and ``x[index_array]`` return numpy arrays read from
    the file; ``select(idx)`` returns another view of the same file.

    Args:
        path: the raw uint8 file.
        count: images in the file.
        image_size: their side.
        index: which of them this view holds, in order (default all).
    """

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, path, count, image_size, index=None):
        self.path, self.count, self.image_size = os.fspath(path), int(count), int(image_size)
        self.index = np.arange(self.count, dtype=np.int64) if index is None else np.asarray(index, np.int64)
        self._base = None

    @property
    def base(self):
        """The whole file as a read-only memory map (opened on first use, so views pickle cheaply)."""
        if self._base is None:
            shape = (self.count, self.image_size, self.image_size, 3)
            self._base = np.memmap(self.path, np.uint8, "r", shape=shape) if self.count else np.zeros(shape, np.uint8)
        return self._base

    @property
    def shape(self):
        return (len(self.index), self.image_size, self.image_size, 3)

    def __len__(self):
        return len(self.index)

    def __getitem__(self, key):
        rows = self.index[key]
        if np.ndim(rows) == 0:
            return np.array(self.base[rows])
        return self.gather(rows)

    def gather(self, rows):
        """Images at file rows `rows`, read in file order (sequential pages), returned in the given order."""
        rows = np.asarray(rows, np.int64)
        order = np.argsort(rows, kind="stable")
        out = np.empty((len(rows),) + self.shape[1:], np.uint8)
        out[order] = self.base[rows[order]]
        return out

    def select(self, idx):
        """A view of rows `idx` of this view."""
        return CachedImages(self.path, self.count, self.image_size, self.index[np.asarray(idx, np.int64)])

    def __array__(self, dtype=None, copy=None):
        out = self.gather(self.index)
        return out if dtype is None else out.astype(dtype)

    def __getstate__(self):
        return {**self.__dict__, "_base": None}

    def __repr__(self):
        return f"CachedImages({self.path}, {len(self)} of {self.count} images, {self.image_size}px)"


def concatenate(parts):
    """Images of several splits as one: a view of the same cache file when they share one."""
    paths = {getattr(p, "path", None) for p in parts}
    if len(paths) == 1 and None not in paths:
        first = parts[0]
        return CachedImages(first.path, first.count, first.image_size, np.concatenate([p.index for p in parts]))
    return np.concatenate([np.asarray(p) for p in parts])


def _digest(value):
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def fingerprint(path):
    """`{"bytes", "crc32"}` of a file: the CRC of all of it, or of `CHECK_BLOCKS` evenly spaced blocks."""
    size = os.path.getsize(path)
    crc = 0
    with open(path, "rb") as f:
        if size <= CHECK_BLOCK * CHECK_BLOCKS:
            for chunk in iter(lambda: f.read(CHECK_BLOCK), b""):
                crc = zlib.crc32(chunk, crc)
        else:
            for i in range(CHECK_BLOCKS):
                f.seek((size - CHECK_BLOCK) * i // (CHECK_BLOCKS - 1))
                crc = zlib.crc32(f.read(CHECK_BLOCK), crc)
    return {"bytes": size, "crc32": crc}


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class DiskCache:
    """The cache folder of one dataset source at one image size.

    Args:
        root: the cache directory (`--cache-dir`).
        source: the `SourceData` (its ``identity`` keys the cache).
        verbose: say when the cache is built or reused.
    """

    def __init__(self, root, source, verbose=True):
        self.root = os.path.abspath(os.path.expanduser(os.fspath(root)))
        self.source, self.verbose = source, verbose
        identity = {"format": FORMAT_VERSION, "dataset": source.name, "image_size": source.image_size,
                    **source.identity}
        self.key = _digest(identity)
        where = {"dataset": source.name, "image_size": source.image_size,
                 "location": source.identity.get("location")}
        self.folder = os.path.join(self.root, f"{source.name}-{source.image_size}px-{_digest(where)[:12]}")

    def _say(self, message):
        if self.verbose:
            print(message, file=sys.stderr, flush=True)

    def _error(self, what, err):
        reason = os.strerror(err.errno) if getattr(err, "errno", None) else str(err)
        return DataError(
            f"cache dir {self.root} {what} ({reason}): pass --cache-dir DIR on a writable disk with room for "
            f"the decoded images, or --cache memory")

    def _meta(self):
        try:
            with open(os.path.join(self.folder, "meta.json")) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def load(self):
        """``({split: (CachedImages, labels)}, class names)``, decoding the source first unless a complete cache matches."""
        try:
            os.makedirs(self.root, exist_ok=True)
            lock = open(os.path.join(self.root, os.path.basename(self.folder) + ".lock"), "a")
        except OSError as err:
            raise self._error("is not writable", err) from None
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one builder per cache; others wait, then reuse it
            meta = self._meta()
            damage = self._damage(meta) if meta is not None and meta.get("key") == self.key else None
            if meta is not None and meta.get("key") == self.key and damage is None:
                self._say(f"using the decoded-image cache {self.folder}")
            else:
                if damage is not None:
                    self._say(f"the decoded-image cache {self.folder} is damaged ({damage}); decoding it again")
                elif meta is not None:
                    self._say(f"{self.source.location or self.source.name} changed since its cache was built; "
                              f"decoding it again into {self.folder}")
                meta = self._build()
            splits = {name: self._open(name, count) for name, count in meta["splits"].items()}
            return splits, meta["class_names"]

    def _damage(self, meta):
        """What is wrong with the cache's files against `meta`, or None when they match."""
        expected = meta.get("files")
        if not isinstance(expected, dict):
            return "meta.json records no file sizes"
        for name, want in sorted(expected.items()):
            try:
                got = fingerprint(os.path.join(self.folder, name))
            except OSError as e:
                return f"{name}: {e.strerror}"
            if got["bytes"] != want.get("bytes"):
                return f"{name} holds {got['bytes']:,} of {want.get('bytes'):,} bytes"
            if got["crc32"] != want.get("crc32"):
                return f"{name} does not match its checksum"
        return None

    def _open(self, name, count):
        labels = np.load(os.path.join(self.folder, f"{name}.labels.npy"))
        return CachedImages(os.path.join(self.folder, f"{name}.u8"), count, self.source.image_size), labels

    def _remove_stale_partials(self):
        prefix = os.path.basename(self.folder) + ".partial-"
        for entry in os.listdir(self.root):
            if entry.startswith(prefix):
                pid = entry[len(prefix):].split("-")[0]
                if not (pid.isdigit() and _pid_alive(int(pid))):
                    shutil.rmtree(os.path.join(self.root, entry), ignore_errors=True)

    def _check_room(self):
        needed = decoded_bytes(self.source)
        free = shutil.disk_usage(self.root).free
        if needed > free:
            raise DataError(
                f"cache dir {self.root} has {free / 1e9:.1f} GB free but the decoded {self.source.name} images "
                f"need {needed / 1e9:.1f} GB: pass --cache-dir DIR on a disk with room, or --cache memory")

    def _build(self):
        self._remove_stale_partials()
        self._check_room()
        partial = f"{self.folder}.partial-{os.getpid()}-{time.time_ns()}"
        try:
            os.makedirs(partial)
            counts = {name: self._write_split(partial, name, reader)
                      for name, reader in self.source.splits.items()}
            files = {f"{name}{suffix}": fingerprint(os.path.join(partial, f"{name}{suffix}"))
                     for name in counts for suffix in (".u8", ".labels.npy")}
            meta = {"key": self.key, "identity": self.source.identity, "splits": counts, "files": files,
                    "class_names": self.source.resolve_class_names(),
                    "image_size": self.source.image_size, "created": time.time()}
            with open(os.path.join(partial, "meta.json"), "w") as f:
                json.dump(meta, f, indent=1, default=str)
                f.flush()
                os.fsync(f.fileno())
            old = None
            if os.path.exists(self.folder):
                old = f"{self.folder}.old-{os.getpid()}-{time.time_ns()}"
                os.rename(self.folder, old)
            os.rename(partial, self.folder)
            if old:
                shutil.rmtree(old, ignore_errors=True)
        except OSError as err:
            shutil.rmtree(partial, ignore_errors=True)
            full = getattr(err, "errno", None) in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
            raise self._error("ran out of space" if full else "cannot be written", err) from None
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        self._say(f"decoded images cached in {self.folder}")
        return meta

    def _write_split(self, folder, name, reader):
        labels, count = [], 0
        with open(os.path.join(folder, f"{name}.u8"), "wb") as f:
            for images, chunk_labels in reader.chunks():
                f.write(np.ascontiguousarray(images, np.uint8).data)
                labels.append(np.asarray(chunk_labels, np.int32))
                count += len(images)
                faults.reached("cache")  # the crash tests' kill, with the split half-written
            f.flush()
            os.fsync(f.fileno())
        np.save(os.path.join(folder, f"{name}.labels.npy"),
                np.concatenate(labels) if labels else np.zeros(0, np.int32))
        return count

    def stats(self, compute):
        """`compute(images)` of the training images, remembered in the cache's meta.json."""
        def remembered(images):
            digest = hashlib.sha256(images.index.tobytes()).hexdigest()[:16]
            path = os.path.join(self.folder, "meta.json")
            meta = self._meta() or {}
            saved = meta.get("stats", {}).get(digest)
            if saved:
                return tuple(saved[0]), tuple(saved[1])
            value = compute(images)
            meta.setdefault("stats", {})[digest] = [list(value[0]), list(value[1])]
            try:
                tmp = f"{path}.{os.getpid()}.tmp"
                with open(tmp, "w") as f:
                    json.dump(meta, f, indent=1, default=str)
                os.replace(tmp, path)
            except OSError:
                pass  # remembering is an optimisation
            return value

        return remembered


def decoded_bytes(source):
    """The size of a source's decoded images (an upper bound), in bytes."""
    size = source.image_size
    return sum(r.count for r in source.splits.values()) * size * size * 3


def resolve_mode(mode, source, budget=None):
    """`memory` or `disk` for `--cache MODE` (auto: memory while the decoded images fit `budget`)."""
    if mode not in CACHE_MODES:
        raise DataError(f"unknown cache mode {mode!r}: choose one of {', '.join(CACHE_MODES)}")
    if mode != "auto":
        return mode
    return "memory" if decoded_bytes(source) <= (default_budget() if budget is None else budget) else "disk"


def read_into_memory(source):
    """``{split: (uint8 array, labels)}``: every split decoded into RAM."""
    size = source.image_size
    out = {}
    for name, reader in source.splits.items():
        images = np.empty((reader.count, size, size, 3), np.uint8)
        labels, filled = [], 0
        for chunk, chunk_labels in reader.chunks():
            if filled + len(chunk) > len(images):  # the source had more than it said
                images = np.concatenate([images[:filled], np.empty((len(chunk) + filled,) + images.shape[1:],
                                                                   np.uint8)])
            images[filled:filled + len(chunk)] = chunk
            labels.append(np.asarray(chunk_labels, np.int32))
            filled += len(chunk)
        out[name] = (images[:filled] if filled < len(images) else images,
                     np.concatenate(labels) if labels else np.zeros(0, np.int32))
    return out
