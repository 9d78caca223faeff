"""Image files to uint8 RGB arrays: listing, decoding any mode, parallel decoding with progress."""

from __future__ import annotations

import collections
import concurrent.futures
import io
import logging
import os
import pathlib
import sys
import time

import numpy as np
from PIL import Image, ImageOps

from upanets_keras.data.errors import DataError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (
    ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff",
    ".ppm", ".pgm", ".pbm",
)

# Show decode progress only for jobs at least this large.
PROGRESS_MIN_ITEMS = 2000
# Images one decoding task handles; tasks run in a thread pool (PIL releases the GIL).
DECODE_CHUNK = 64


def check_image_size(image_size):
    """`image_size` as an int, or a DataError: it must be a positive multiple of 8."""
    try:
        size = int(image_size)
    except (TypeError, ValueError):
        size = -1
    if size != image_size or size <= 0 or size % 8:
        suggestion = 8 * max(1, round(size / 8)) if size > 0 else 32
        raise DataError(
            f"image size must be a positive multiple of 8, got {image_size!r}: "
            f"pass e.g. --image-size {suggestion}")
    return size


def is_image_name(name):
    """Whether a file name has an image extension (hidden files excluded)."""
    base = os.path.basename(name)
    return not base.startswith(".") and base.lower().endswith(IMAGE_EXTENSIONS)


def image_files(folder):
    """Every image file under `folder` (recursively, sorted; hidden files and symlink loops skipped)."""
    files, seen = [], set()
    top = os.path.realpath(folder)
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        # A link to a folder already read, or to one that contains this one (a loop).
        if real in seen or (top + os.sep).startswith(real + os.sep) and dirpath != os.fspath(folder):
            logger.warning("skipping %s: it links back to a folder already read", dirpath)
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "__")))
        files += [os.path.join(dirpath, f) for f in sorted(filenames) if is_image_name(f)]
    return files


class ZipMember:
    """An image stored in a zip archive, readable from several threads."""

    def __init__(self, archive, member, lock, label):
        self.archive, self.member, self.lock, self.label = archive, member, lock, label

    def read(self):
        with self.lock:
            return io.BytesIO(self.archive.read(self.member))

    def __str__(self):
        return self.label


def to_rgb(img):
    """Converts a PIL image of any mode to RGB (alpha dropped, like torchvision)."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(img).astype(np.float64)
        # 16-bit data is scaled down; 32-bit "I" images with 8-bit values
        # (as some decoders produce) are kept.
        if img.mode.startswith("I;16") or arr.max(initial=0) > 255:
            arr = arr / 257.0
        img = Image.fromarray(np.rint(arr).clip(0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        arr = np.asarray(img).astype(np.float64)
        if arr.max(initial=0) <= 1.0:
            arr = arr * 255.0
        img = Image.fromarray(np.rint(arr).clip(0, 255).astype(np.uint8), "L")
    elif img.mode in ("P", "PA") and (img.mode == "PA" or "transparency" in img.info):
        img = img.convert("RGBA")
    if img.mode != "RGB":
        img = img.convert("RGB")
    return img


def decode_image(source, size):
    """Decodes one image file (path or `ZipMember`) to uint8 (size, size, 3), upright per its EXIF."""
    fp = source.read() if isinstance(source, ZipMember) else source
    with Image.open(fp) as img:
        # JPEG only: decode at a reduced DCT scale that is still >= size.
        img.draft(None, (size, size))
        img.load()
        try:
            img = ImageOps.exif_transpose(img)
        except Exception:  # malformed EXIF must not make a good image unusable
            pass
        img = to_rgb(img)
        if img.size != (size, size):
            img = img.resize((size, size), Image.BILINEAR)
        return np.asarray(img, np.uint8)


def resize_batch(x, size):
    """Bilinearly resizes uint8 NHWC (or NHW) images to size x size."""
    if x.shape[1] == size and x.shape[2] == size:
        return x
    out = np.empty((len(x), size, size) + x.shape[3:], np.uint8)
    for i, img in enumerate(x):
        out[i] = np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))
    return out


# Not keras.utils.Progbar: it writes to stdout (where `--json` output goes) and, off a terminal, only at the end.
class Progress:
    """A one-line progress display on stderr for long jobs (a line per 10% when not a terminal)."""

    def __init__(self, desc, total, enabled):
        self.desc, self.total, self.done = desc, total, 0
        self.enabled = enabled and total >= PROGRESS_MIN_ITEMS
        self.tty = bool(getattr(sys.stderr, "isatty", lambda: False)())
        self.start = time.monotonic()
        self.last_decile = -1

    def update(self, n):
        if not self.enabled:
            return
        self.done += n
        decile = self.done * 10 // max(1, self.total)
        if self.tty:
            sys.stderr.write(f"\r{self.desc}: {self.done}/{self.total}")
            if self.done >= self.total:
                sys.stderr.write(f" ({time.monotonic() - self.start:.0f}s)\n")
            sys.stderr.flush()
        elif decile > self.last_decile:
            self.last_decile = decile
            sys.stderr.write(f"{self.desc}: {self.done}/{self.total} "
                             f"({time.monotonic() - self.start:.0f}s)\n")
            sys.stderr.flush()


def ordered_map(fn, items, workers, ahead=4):
    """`map(fn, items)` on a thread pool, in order, with at most `workers * ahead` results pending.

    `Executor.map` would start every task at once and keep their results until
    read: all of a dataset's decoded images when the reader is slower.
    """
    items = iter(items)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        pending = collections.deque(pool.submit(fn, item) for _, item in zip(range(workers * ahead), items))
        while pending:
            result = pending.popleft().result()
            for item in items:
                pending.append(pool.submit(fn, item))
                break
            yield result


def decode_chunks(sources, labels, size, desc, verbose, strict=False):
    """Decodes image files in parallel, yielding ``(uint8 images, int32 labels)`` chunks in order.

    Unreadable files are logged and left out (with their labels); with
    ``strict`` the first one raises a DataError naming it.

    Args:
        sources: paths or `ZipMember` objects.
        labels: one int label per source.
        size: output side in pixels.
        desc: label for progress and warnings.
        verbose: show progress for long jobs.
        strict: fail on the first unreadable file.
    """
    n = len(sources)
    labels = np.asarray(labels, np.int32)

    def work(start):
        stop = min(n, start + DECODE_CHUNK)
        out = np.empty((stop - start, size, size, 3), np.uint8)
        ok = np.ones(stop - start, bool)
        errors = {}
        for i in range(start, stop):
            try:
                out[i - start] = decode_image(sources[i], size)
            except Exception as err:  # PIL raises many error types for bad files
                errors[i] = err
                ok[i - start] = False
                if strict:
                    break
        return start, out[ok], ok, errors

    progress = Progress(f"decoding {desc}", n, verbose)
    workers = min(32, (os.cpu_count() or 1) + 4, max(1, -(-n // DECODE_CHUNK)))
    skipped = 0
    for start, images, ok, errors in ordered_map(work, range(0, n, DECODE_CHUNK), workers):
        for i, err in sorted(errors.items()):
            reason = " ".join(str(err).split()) or type(err).__name__
            if strict:
                raise DataError(f"cannot read image {sources[i]} ({reason}): check the file is a valid image")
            logger.warning("skipping unreadable image %s: %s", sources[i], reason)
        skipped += len(errors)
        progress.update(len(ok))
        yield images, labels[start:start + len(ok)][ok]
    if skipped:
        logger.warning("skipped %d unreadable image(s) of %d in %s", skipped, n, desc)


def decode_all(sources, size, strict, desc, verbose):
    """Decodes image files into one array: ``(uint8 (n_ok, size, size, 3), bool mask of those decoded)``."""
    ok = np.zeros(len(sources), bool)
    parts = []
    positions = np.arange(len(sources), dtype=np.int32)
    for images, kept in decode_chunks(sources, positions, size, desc, verbose, strict):
        parts.append(images)
        ok[kept] = True
    out = np.concatenate(parts) if parts else np.empty((0, size, size, 3), np.uint8)
    return out, ok


def load_image_files(paths, image_size) -> np.ndarray:
    """Decodes image files to uint8 RGB NHWC arrays, as the folder route does.

    Any mode (L, RGBA, P, CMYK, 16-bit, ...) is converted to RGB and the
    image is resized (bilinear, ignoring aspect ratio) to image_size.

    Args:
        paths: a path or a sequence of paths.
        image_size: output side in pixels (positive multiple of 8).

    Returns:
        uint8 array (len(paths), image_size, image_size, 3).

    Raises:
        DataError: naming the first missing or unreadable file.
    """
    size = check_image_size(image_size)
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [pathlib.Path(os.fspath(p)).expanduser() for p in paths]
    if not paths:
        raise DataError("no image files given: pass at least one image path")
    for p in paths:
        if not p.is_file():
            raise DataError(f"image file {p} does not exist: check the path")
    images, _ = decode_all([str(p) for p in paths], size, strict=True, desc="images", verbose=False)
    return images


def list_image_files(folder):
    """Every image file under `folder` (recursively, sorted; hidden files and symlink loops skipped)."""
    return image_files(folder)


def decode_image_files(paths, image_size, desc="images"):
    """Decode image files, skipping unreadable ones with a warning.

    Args:
        paths: image paths.
        image_size: output side in pixels.
        desc: where they come from, for the progress and the summary of those skipped (a folder's name).

    Returns:
        `(images, ok)`: uint8 (n_ok, image_size, image_size, 3) and a bool mask over `paths`.
    """
    return decode_all([os.fspath(p) for p in paths], check_image_size(image_size), strict=False,
                      desc=desc, verbose=len(paths) >= PROGRESS_MIN_ITEMS)
