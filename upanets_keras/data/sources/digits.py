"""scikit-learn's bundled 8x8 handwritten digits, upscaled to RGB: a real dataset that needs no files."""

import numpy as np

from upanets_keras.data.images import resize_batch
from upanets_keras.data.registry import register_dataset
from upanets_keras.data.source import SourceData, array_reader


@register_dataset("digits", default_size=32)
def load_digits(request):
    """All 1,797 digits as the training pool (the test and validation splits are held out of it)."""
    import sklearn
    from sklearn.datasets import load_digits as sklearn_digits

    size = request.image_size
    bunch = sklearn_digits()
    # 0..16 grey levels -> 0..255
    x = np.rint(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    x = np.repeat(resize_batch(x, size)[..., None], 3, axis=-1)
    return SourceData(
        name="digits", class_names=[str(i) for i in range(10)], image_size=size,
        splits={"train": array_reader(x, bunch.target)},
        identity={"location": "sklearn.datasets.load_digits", "sklearn": sklearn.__version__},
        flip=False, location="scikit-learn's digits",
    )
