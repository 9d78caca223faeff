"""`ClassLabels`: where version 0.1.0 kept a model's class names (kept so its files load; see `legacy.py`)."""

import keras

from upanets_keras.layers.serializable import PACKAGE


@keras.saving.register_keras_serializable(package=PACKAGE)
class ClassLabels(keras.layers.Layer):
    """Identity on the logits that stored the class names in version 0.1.0 models (now `UPANets.class_names`).

    Args:
        class_names: one name per logit.
        **kwargs: base `keras.layers.Layer` arguments.

    Example:
    >>> tuple(ClassLabels(["cat", "dog"])(keras.ops.zeros((1, 2))).shape)
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
