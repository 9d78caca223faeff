"""BatchNorm statistics over every replica's slice of the batch (TensorFlow's tf.distribute)."""

import keras


def replicas_in_sync():
    """Replicas the current replica context spans (1 outside tf.distribute and on other backends)."""
    if keras.backend.backend() != "tensorflow":
        return 1
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    return context.num_replicas_in_sync if context is not None else 1


def _cross_replica_sum(context, x):
    """`context.all_reduce(SUM, x)` with a first-order gradient only (see `compat.all_reduce_in_replica`)."""
    import tensorflow as tf

    from upanets_keras import compat

    def reduce(value):
        return compat.all_reduce_in_replica(context, tf.distribute.ReduceOp.SUM, [value])[0]

    # The sum enters the custom gradient as an input: `tf.custom_gradient` walks the graph back
    # from its outputs to its inputs, and a sum computed inside would lead that walk through every
    # other replica's graph (minutes of tracing under MirroredStrategy).
    total = reduce(tf.stop_gradient(x))

    @tf.custom_gradient
    def summed(value, total):
        return tf.identity(total), lambda dy: (reduce(dy), None)  # the gradient of an all-sum is an all-sum

    return summed(x, total)


def synchronized_moments(x, axes, shift):
    """Mean and biased variance over every replica's batch, with one all-reduce.

    Keras' `synchronized=True` makes three all-reduces per layer, which under
    MirroredStrategy makes the first (traced) step many times slower. The
    sums are taken around `shift` (the moving mean, equal on all replicas)
    to keep E[x^2] - E[x]^2 accurate in float32.
    """
    import tensorflow as tf

    x = x - tf.stop_gradient(tf.cast(shift, x.dtype))
    channels = x.shape[-1]
    count = tf.cast(tf.reduce_prod(tf.gather(tf.shape(x), list(axes))), x.dtype)
    packed = tf.concat([tf.reduce_sum(x, axes), tf.reduce_sum(tf.square(x), axes), [count]], 0)
    context = tf.distribute.get_replica_context()
    if context is not None and context.num_replicas_in_sync > 1:
        packed = _cross_replica_sum(context, packed)
    mean = packed[:channels] / packed[-1]
    variance = tf.maximum(packed[channels:-1] / packed[-1] - tf.square(mean), 0.0)
    return mean + tf.cast(shift, x.dtype), variance
