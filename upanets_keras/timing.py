"""Timing calls, and the synthetic batch every throughput figure is measured on.

Plain Python and numpy (no Keras, no TensorFlow): `tools/side_by_side.py` and
`tools/gpu_run.py` load this file in processes that must not import either.

Example:
>>> images, labels = synthetic_batch(4, 8, 10)
>>> images.shape, images.dtype.name, labels.dtype.name
((4, 8, 8, 3), 'uint8', 'int32')
>>> len(time_calls(lambda: None, warmup=1, repeats=3))
3
"""

import statistics
import time

import numpy as np

PIPELINE_BATCHES = 10  # batches per input-pipeline timing


def time_calls(fn, warmup, repeats):
    """Call `fn` `warmup` times, then time `repeats` calls; returns the seconds of each."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def images_per_second(images, times):
    """`images` divided by the median of `times` (seconds)."""
    return images / statistics.median(times)


def synthetic_batch(batch_size, image_size, num_classes, seed=0):
    """uint8 NHWC images and int32 labels drawn from `seed`."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (batch_size, image_size, image_size, 3), dtype=np.uint8)
    labels = rng.integers(0, num_classes, batch_size).astype(np.int32)
    return images, labels
