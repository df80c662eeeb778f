"""Fold per-channel affine maps (BatchNormalization, Rescaling, Normalization)
into the adjacent weighted layer, so the spiking network has none.

Two exact folds (DESIGN.md section 4):
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

from keras_snn import layers as snn_layers
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


def _is_depthwise(linear):
    return linear.spiking_class is snn_layers.SpikingDepthwiseConv2D


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
    channels = kernel.shape[-2] * kernel.shape[-1] if _is_depthwise(linear) else kernel.shape[-1]
    scale = np.broadcast_to(affine.scale, (channels,)).astype("float32")
    shift = np.broadcast_to(affine.shift, (channels,)).astype("float32")
    if _is_depthwise(linear):
        linear.kernel = kernel * scale.reshape(kernel.shape[-2], kernel.shape[-1])
    else:
        linear.kernel = kernel * scale
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
    in_axis = -2 if kernel.ndim > 2 else 0  # Dense (in, out); conv (..., in, out)
    in_channels = kernel.shape[in_axis]
    scale = np.broadcast_to(affine.scale, (in_channels,)).astype("float32")
    shift = np.broadcast_to(affine.shift, (in_channels,)).astype("float32")
    shape = [1] * kernel.ndim
    shape[in_axis] = in_channels
    scaled = kernel * scale.reshape(shape)
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
        # W . shift: summed over every tap and input channel.
        if _is_depthwise(linear):  # kernel (.., C, M): output c*M + m sees shift[c] only
            taps = kernel.reshape(-1, kernel.shape[-2], kernel.shape[-1]).sum(axis=0)
            contribution = (taps * shift[:, None]).reshape(-1)
        else:
            contribution = np.tensordot(shift, kernel, axes=([0], [in_axis % kernel.ndim]))
            contribution = contribution.reshape(-1, contribution.shape[-1]).sum(axis=0)
        bias = (np.zeros_like(contribution) if bias is None else bias) + contribution
    linear.kernel, linear.bias = scaled.astype("float32"), bias
