"""ImageNet downsampled (TFDS `imagenet_resized/32x32` and `/64x64`): 1,281,167 training images of 1,000 classes."""

from __future__ import annotations

from upanets_keras.data.registry import register_dataset
from upanets_keras.data.source import SourceData
from upanets_keras.data.sources import tfds as tfds_source
from upanets_keras.defaults import IMAGENET_MEAN, IMAGENET_STD

HOMEPAGE = "https://patrykchrabaszcz.github.io/Imagenet32/"
DOWNLOAD_HOST = "www.image-net.org"
CONFIG_SIZES = (32, 64)


def config_for(image_size):
    """The tfds config an image size reads: the smallest of 32x32 and 64x64 at least as large (else 64x64)."""
    side = next((s for s in CONFIG_SIZES if s >= image_size), CONFIG_SIZES[-1])
    return f"imagenet_resized/{side}x{side}"


@register_dataset("imagenet_resized", default_size=32, aliases=("imagenet32", "imagenet_32"))
def load_imagenet_resized(request):
    """The prepared tfds files in `--data-dir` (its official validation split is the test split)."""
    tfds_name = config_for(request.image_size)
    where = request.data_dir if request.data_dir is not None else "the tfds data dir (~/tensorflow_datasets)"
    put_hint = (f"prepare {tfds_name} with tensorflow-datasets (see {HOMEPAGE}) and pass its data dir as "
                f"--data-dir (found nothing in {where})")
    builder = tfds_source.open_builder("imagenet_resized", tfds_name, request.data_dir, request.download, put_hint,
                                      DOWNLOAD_HOST)
    names = tfds_source.class_names(builder) or [str(i) for i in range(1000)]
    splits = {ours: tfds_source.split_reader(builder, "imagenet_resized", theirs, request.image_size, len(names),
                                             request.verbose)
              for ours, theirs in (("train", "train"), ("test", "validation"))}
    return SourceData(name="imagenet_resized", class_names=names, image_size=request.image_size, splits=splits,
                      identity=tfds_source.identity(builder, tfds_name, request.data_dir),
                      stats=(IMAGENET_MEAN, IMAGENET_STD), flip=True, location=f"{tfds_name} in {where}")
