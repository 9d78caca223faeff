"""Dataset sources, one module each; importing this package registers them (in this order)."""

from upanets_keras.data.sources import cifar, tiny_imagenet, folder, digits, imagenet_resized  # noqa: F401
