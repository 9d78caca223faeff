"""`BN(Dense(x))` over every pixel, the projection inside Channel Pixel Attention; folded into one map at inference."""

import keras
from keras import ops


def inference_projection(dense, bn, dtype):
    """`(kernel, bias)` of `BN(Dense(x))` folded into one affine map (inference)."""
    rstd = ops.rsqrt(ops.cast(bn.moving_variance, dtype) + bn.epsilon)
    scale = ops.cast(bn.gamma, dtype) * rstd
    kernel = ops.cast(dense.kernel, dtype) * scale
    bias = (ops.cast(dense.bias, dtype) - ops.cast(bn.moving_mean, dtype)) * scale
    return kernel, bias + ops.cast(bn.beta, dtype)


def folds(bn, training):
    """Whether `bn` applies its moving statistics, so it can be folded into the projection."""
    return not (training and bn.trainable) and bn.center and bn.scale and not bn.renorm


def project(dense, bn, x, training):
    """`BN(Dense(x))` over every pixel of `x`, as one `(pixels, channels)` matmul.

    The 2-D view lets Grappler fuse the inference bias add into the matmul
    and gives the training BatchNorm a flat `(pixels, 1, 1, C)` view, which
    oneDNN normalises faster than the 4-D one.
    """
    shape = ops.shape(x)
    flat = ops.reshape(x, (-1, x.shape[-1]))
    if folds(bn, training):
        # Inference: the BatchNorm folded into the projection (one fused matmul + bias).
        kernel, bias = inference_projection(dense, bn, keras.backend.result_type(x.dtype, "float32"))
        z = ops.matmul(flat, ops.cast(kernel, x.dtype)) + ops.cast(bias, x.dtype)
    else:
        # The dense bias goes to the BatchNorm as its `shift`, not to every pixel.
        z = bn(ops.matmul(flat, ops.cast(dense.kernel, x.dtype)), training=training, shift=dense.bias)
    return ops.reshape(z, (shape[0], shape[1], shape[2], dense.units))
