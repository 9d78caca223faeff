"""Peak anonymous resident memory of `upanets-keras train` on generated image folders of two sizes.

Writes N random 64x64 JPEGs in 10 class folders for each size, then trains one
epoch on each with `--cache disk` (and, with --memory-too, `--cache memory`),
sampling the process's RssAnon (anonymous pages only: the memory-mapped cache's
clean pages do not count, the kernel can drop them) every 50 ms. Prints one row
per run and the ratio of the peaks.

    python tools/cache_memory.py --sizes 5000 50000 --work /tmp/cache-memory
"""

import argparse
import os
import subprocess
import sys
import time

import numpy as np
from PIL import Image


def make_folder(root, n, size=64, classes=10, seed=0):
    if (root / "done").exists():
        return root
    rng = np.random.default_rng(seed)
    for i in range(n):
        folder = root / f"class{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((size, size), Image.BILINEAR)
        img.save(folder / f"{i:06d}.jpg", quality=90)
    (root / "done").write_text(str(n))
    return root


def rss_anon_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_of(command):
    start = time.time()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = 0
    while proc.poll() is None:
        value = rss_anon_kb(proc.pid)
        if value:
            peak = max(peak, value)
        time.sleep(0.05)
    output = proc.stdout.read()
    if proc.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{output}")
    return peak / 1024, time.time() - start, output


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 50000])
    parser.add_argument("--work", default="/tmp/cache-memory")
    parser.add_argument("--memory-too", action="store_true", help="also run --cache memory for contrast")
    args = parser.parse_args()
    import pathlib

    work = pathlib.Path(args.work)
    rows = []
    for n in args.sizes:
        data = make_folder(work / f"images-{n}", n)
        for cache in ["disk"] + (["memory"] if args.memory_too else []):
            command = [sys.executable, "-m", "upanets_keras_cli.main", "train", "--dataset", "folder",
                       "--data-dir", str(data), "--image-size", "64", "--filters", "4", "--epochs", "1",
                       "--batch-size", "100", "--cache", cache, "--cache-dir", str(work / "cache"),
                       "-o", str(work / f"run-{n}-{cache}"), "--overwrite"]
            peak, seconds, output = peak_of(command)
            rows.append((n, cache, peak, seconds))
            print(f"{n:>7} images  --cache {cache:<6}  peak RssAnon {peak:8.1f} MiB  {seconds:6.1f} s", flush=True)
    disk = [r for r in rows if r[1] == "disk"]
    if len(disk) >= 2:
        print(f"disk cache: peak RssAnon at {disk[-1][0]} images / at {disk[0][0]} images = "
              f"{disk[-1][2] / disk[0][2]:.3f}")


if __name__ == "__main__":
    main()
