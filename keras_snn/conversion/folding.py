"""Fold per-channel affine maps (BatchNormalization, Rescaling, Normalization)
into the adjacent weighted layer, so the spiking network has none.

Two exact folds:
- output side, `affine(W x + b)`: scale each output channel's weights, and
  `b <- scale * b + shift`. This is Conv -> BN -> ReLU, the usual placement.
- input side, `W (scale * x + shift) + b`: scale each input channel's weights,
  and `b <- b + W . shift`. This is BN -> Dense, and Rescaling/Normalization at
  the model input. For a zero-padded convolution the shift is not exact at the
  borders (padding adds zeros, not `shift`): with analog input the converter
  moves such an input map into the encoder first (converter.py), and refuses
  it otherwise.
"""

import numpy as np

from keras_snn.conversion import ir
from keras_snn.conversion.errors import ConversionError


def fold_affines(ops, output_keys):
    """Remove every `ir.Affine` by folding it into a neighbouring `ir.Linear`."""
    by_key = {op.key: op for op in ops}
    for affine in [op for op in ops if isinstance(op, ir.Affine)]:
        producer = by_key.get(affine.inputs[0])
        users = ir.consumers(ops, affine.key)
        if affine.key in output_keys:
            _refuse(affine, "it is the model output")
        if isinstance(producer, ir.Linear) and ir.consumers(ops, producer.key) == [affine]:
            _fold_into_output(producer, affine)
            ir.replace_input(ops, affine.key, producer.key)
        elif users and all(isinstance(op, ir.Linear) for op in users):
            for user in users:
                _fold_into_input(user, affine)
            ir.replace_input(ops, affine.key, affine.inputs[0])
        else:
            _refuse(affine, "it neither directly follows a Dense/Conv layer (before the "
                    "activation) nor directly feeds Dense/Conv layers")
        ops.remove(affine)
    return ops


def _refuse(affine, reason):
    raise ConversionError(
        f"Layer '{affine.source}' (a per-channel affine map such as BatchNormalization) "
        f"cannot be folded: {reason}. Place it right after a Dense/Conv layer, before "
        "its ReLU."
    )


def _check_channel_axis(linear, affine):
    """The affine map's channels must be the weighted layer's channels."""
    if affine.channel_axis is None:  # one scale for every value
        return
    channels_first = linear.config.get("data_format") == "channels_first"
    if affine.channel_axis != ("first" if channels_first else "last"):
        raise ConversionError(
            f"Layer '{affine.source}' scales the {affine.channel_axis} axis next to "
            f"'{linear.source}', whose channels are on the "
            f"{'first' if channels_first else 'last'} axis; only a per-channel map over the "
            "layer's own channel axis can be folded into it."
        )


def _fold_into_output(linear, affine):
    _check_channel_axis(linear, affine)
    kernel = linear.kernel
    channels = linear.output_channels
    scale = np.broadcast_to(affine.scale, (channels,)).astype("float32")
    shift = np.broadcast_to(affine.shift, (channels,)).astype("float32")
    linear.kernel = kernel * ir.along_axes(scale, kernel.shape, linear.channel_axes[1])
    bias = np.zeros(channels, "float32") if linear.bias is None else linear.bias
    linear.bias = bias * scale + shift


def _fold_into_input(linear, affine):
    _check_channel_axis(linear, affine)
    kernel = linear.kernel
    if linear.config.get("groups", 1) != 1:
        raise ConversionError(
            f"Layer '{affine.source}' feeds grouped convolution '{linear.source}'; "
            "folding it into the input side of a grouped convolution is unsupported."
        )
    in_axes, out_axes = linear.channel_axes
    in_channels = int(np.prod([kernel.shape[axis] for axis in in_axes]))
    scale = np.broadcast_to(affine.scale, (in_channels,)).astype("float32")
    shift = np.broadcast_to(affine.shift, (in_channels,)).astype("float32")
    scaled = kernel * ir.along_axes(scale, kernel.shape, in_axes)
    bias = linear.bias
    if np.any(shift != 0):
        if kernel.ndim > 2 and linear.config.get("padding", "valid") != "valid":
            raise ConversionError(
                f"Layer '{affine.source}' shifts the input of '{linear.source}', whose "
                f"padding='{linear.config.get('padding')}' pads zeros rather than the "
                "shifted value, so folding would be wrong at the borders. Normalise the "
                "data before the model, use padding='valid', or, for the model's input, "
                "input_encoding='analog' (its encoder applies the shift exactly)."
            )
        # W . shift: summed over every axis that is not an output channel (the
        # taps, and the input channels unless each output reads one, as in a
        # depthwise kernel).
        summed = tuple(axis for axis in range(kernel.ndim) if axis not in out_axes)
        shifted = kernel * ir.along_axes(shift, kernel.shape, in_axes)
        contribution = shifted.sum(axis=summed).reshape(-1)
        bias = (np.zeros_like(contribution) if bias is None else bias) + contribution
    linear.kernel, linear.bias = scaled.astype("float32"), bias
