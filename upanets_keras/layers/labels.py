"""`ClassLabels`: the class names stored in a saved model."""

import keras

from upanets_keras.layers.serializable import PACKAGE


@keras.saving.register_keras_serializable(package=PACKAGE)
class ClassLabels(keras.layers.Layer):
    """Identity on the logits that stores the class names in the model's config.

    Saved `.keras` files thus carry the names that `predict` and `evaluate` print.

    Args:
        class_names: one name per logit.
        **kwargs: base `keras.layers.Layer` arguments.

    Example:
    >>> ClassLabels(["cat", "dog"])(keras.ops.zeros((1, 2))).shape
    (1, 2)
    """

    def __init__(self, class_names, **kwargs):
        super().__init__(**kwargs)
        self.class_names = [str(c) for c in class_names]

    def build(self, input_shape):
        if input_shape[-1] != len(self.class_names):
            raise ValueError(
                f"ClassLabels got {len(self.class_names)} names for {input_shape[-1]} logits. "
                f"Received: class_names={self.class_names[:5]}..."
            )

    def call(self, inputs):
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "class_names": self.class_names}
