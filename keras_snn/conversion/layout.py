"""channels_first models become channels-last spiking networks, once, at conversion.

A model trained channels_first (the fast layout on GPUs) holds its feature
maps as `(batch, channels, rows, cols)`. TensorFlow has no NCHW convolution or
pooling on many CPUs (x86 without oneDNN's kernels), and a spiking layer runs
at every timestep, so the converter does not keep that layout: it rewrites the
model's ops to run channels-last and moves the layout change to the edges.

- Convolution kernels are the same in both layouts (Keras stores them as
  `(k..., in, out)`); convolutions and pooling only change `data_format`.
- Biases, BatchNormalization folding and ceilings are per channel: after the
  rewrite the channel is the last axis, where the rest of the converter looks.
- A Flatten of a transposed map lists its values in another order than the
  ANN's Flatten did; the Dense after it takes the permutation into its kernel
  rows (once), so the spiking network has no per-step reordering.
- Concatenate's axis, ZeroPadding/Cropping/UpSampling and Reshape are mapped
  to the channels-last tensor.
- The input: the user keeps feeding channels_first frames. The network's
  input stays channels_first and one `Permute` after the encoder moves the
  channels last. For the default analog input that value does not change over
  time, so the simulator computes it once per call, outside the time loop.
  A feature-map output is permuted back before the readout.

Each ANN tensor is held in the spiking network in one of three ways: as it is
(`None`), transposed (`TRANSPOSED`: axis 1 moved to the end), or, for a flat
vector, permuted (a NumPy index array `p`: spiking value `i` is ANN value
`p[i]`). Layers whose meaning would change with the layout and that have no
channels-last form here are refused with a `ConversionError` naming them.
"""

import dataclasses
import math

import keras
import numpy as np

from keras_snn.conversion import ir
from keras_snn.conversion.errors import ConversionError

TRANSPOSED = "transposed"
_CHANNELS_FIRST = "channels_first"


@dataclasses.dataclass
class ChannelsLastPlan:
    """Where the converted network changes layout (Keras `Permute` dims or None)."""

    input_dims: tuple = None  # after the encoder: channels_first -> channels-last
    output_dims: tuple = None  # before the readout: back to channels_first


def rewrite_to_channels_last(ops, input_key, input_shape, output_key):
    """Rewrite `ops` (in place) of a channels_first model to run channels-last.

    Args:
        ops: the converter's fused ops (`keras_snn.conversion.ir`), in order.
        input_key: key of the model input.
        input_shape: the model's input shape without the batch axis.
        output_key: key of the op whose value the readout receives.

    Returns:
        A `ChannelsLastPlan`, or None for a model without channels_first
        layers (its ops are left as they are).

    Raises:
        ConversionError: for a layer that mixes layouts or has no
            channels-last form, naming it.
    """
    if not any(_data_format(op) == _CHANNELS_FIRST for op in ops):
        return None
    shapes = {input_key: (None,) + tuple(input_shape)}
    held = {input_key: TRANSPOSED if len(shapes[input_key]) > 2 else None}
    for op in ops:
        in_shapes = [shapes[key] for key in op.inputs]
        in_held = [held[key] for key in op.inputs]
        shapes[op.key] = _output_shape(op, in_shapes)  # before the rewrite: ANN layout
        held[op.key] = _rewrite(op, in_shapes, in_held, shapes[op.key])
    plan = ChannelsLastPlan()
    if held[input_key] is TRANSPOSED:
        plan.input_dims = _to_last_dims(len(input_shape))
    if isinstance(held[output_key], np.ndarray):
        source = next(op.source for op in ops if op.key == output_key)
        raise ConversionError(
            f"The model's output comes from '{source}', a Flatten of a channels_first feature "
            "map in channels_first order; end the model with a Dense (or use "
            "Flatten(data_format='channels_first'))."
        )
    if held[output_key] is TRANSPOSED:
        plan.output_dims = _to_first_dims(len(shapes[output_key]) - 1)
    return plan


def _to_last_dims(rank):
    """Keras Permute dims (1-based, no batch) moving axis 1 of a frame to the end."""
    return tuple(range(2, rank + 1)) + (1,)


def _to_first_dims(rank):
    return (rank,) + tuple(range(1, rank))


def _data_format(op):
    """The data_format an op declares (convolution, pooling, spatial shape layer), or None."""
    if isinstance(op, ir.Shape):
        return op.layer.data_format if _is_spatial(op.layer) else None
    return (getattr(op, "config", None) or {}).get("data_format")


def _is_spatial(layer):
    """A shape layer whose `data_format` says where its spatial axes are."""
    return hasattr(layer, "data_format") and not isinstance(
        layer, (keras.layers.Flatten, keras.layers.Reshape, keras.layers.Concatenate)
    )


# ------------------------------------------------------------------ shapes
def _output_shape(op, in_shapes):
    """The ANN's output shape of an op (batch axis None)."""
    single = in_shapes[0] if len(in_shapes) == 1 else in_shapes
    if isinstance(op, ir.Merge):
        return tuple(in_shapes[0])
    if isinstance(op, ir.Shape):
        return tuple(op.layer.compute_output_shape(single))
    if getattr(op, "spiking_class", None) is not None:
        return tuple(op.spiking_class(**op.config).compute_output_shape(single))
    raise ConversionError(
        f"Layer '{op.source}' ({type(op).__name__} op) has no channels-last rule; "
        "keras_snn cannot convert it inside a channels_first model."
    )


# ----------------------------------------------------------------- rewrite
def _rewrite(op, in_shapes, in_held, out_shape):
    """Make one op channels-last; returns how its output is held."""
    if isinstance(op, ir.Linear) and "data_format" not in op.config:
        return _dense(op, in_shapes[0], in_held[0])
    if isinstance(op, ir.Merge):
        if any(not _same_holding(h, in_held[0]) for h in in_held[1:]):
            _refuse_mixed(op, "adds tensors held in different layouts")
        return in_held[0]
    if isinstance(op, ir.Shape):
        for cls in type(op.layer).__mro__:
            if cls in _SHAPE_RULES:
                return _SHAPE_RULES[cls](op, in_shapes, in_held, out_shape)
        if _is_spatial(op.layer):
            return _spatial(op, in_held, out_shape)
    if _data_format(op) is not None:  # convolutions and pooling
        return _spatial(op, in_held, out_shape)
    _expect(op, in_held, None)  # no layout of its own: works on the tensor as it is
    return None


def _same_holding(a, b):
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and np.array_equal(a, b)
    return a == b


def _spatial(op, in_held, out_shape):
    """Convolution, pooling, padding...: channels_first ones read transposed maps."""
    channels_first = _data_format(op) == _CHANNELS_FIRST
    _expect(op, in_held, TRANSPOSED if channels_first else None)
    if not channels_first:
        return None
    if isinstance(op, ir.Shape):
        op.layer = _clone(op.layer, data_format="channels_last")
    else:
        op.config["data_format"] = "channels_last"
    return TRANSPOSED if len(out_shape) > 2 else None  # global pooling: flat


def _dense(op, in_shape, held):
    """Dense acts on the last axis: a permuted flat input is taken into its rows."""
    if isinstance(held, np.ndarray):
        op.kernel = op.kernel[held]  # spiking input i is ANN input held[i]
        return None
    _expect(op, [held], None)
    return None


def _flatten(op, in_shapes, in_held, out_shape):
    (shape,), (held,) = in_shapes, in_held
    if held is not TRANSPOSED:
        return held  # a flat input (possibly permuted) passes unchanged
    channels_last_order = op.layer.data_format == _CHANNELS_FIRST  # Keras moves C last first
    op.layer = _clone(op.layer, data_format="channels_last")
    return None if channels_last_order else _flatten_permutation(shape)


def _reshape(op, in_shapes, in_held, out_shape):
    (shape,), (held,) = in_shapes, in_held
    if held is None:
        return None
    if len(out_shape) != 2:
        _refuse_layout(op, "reshapes a channels_first feature map into another map; use Flatten")
    if held is TRANSPOSED:
        return _flatten_permutation(shape)
    return held  # a flat vector reshaped to itself


def _concatenate(op, in_shapes, in_held, out_shape):
    rank = len(in_shapes[0])
    axis = op.layer.axis % rank
    if all(held is None for held in in_held):
        return None
    if rank > 2:
        _expect(op, in_held, TRANSPOSED)
        new_axis = rank - 1 if axis == 1 else axis - 1
        op.layer = _clone(op.layer, axis=new_axis)
        return TRANSPOSED
    parts, offset = [], 0
    for shape, held in zip(in_shapes, in_held):
        size = shape[-1]
        parts.append(offset + (held if isinstance(held, np.ndarray) else np.arange(size)))
        offset += size
    return np.concatenate(parts)


_SHAPE_RULES = {
    keras.layers.Flatten: _flatten,
    keras.layers.Reshape: _reshape,
    keras.layers.Concatenate: _concatenate,
}


def _flatten_permutation(shape):
    """`p` with `flatten(moveaxis(x, 0, -1))[i] == flatten(x)[p[i]]` for x of `shape[1:]`."""
    channels, spatial = shape[1], math.prod(shape[2:])
    return np.arange(channels * spatial).reshape(channels, spatial).T.reshape(-1)


def _clone(layer, **changes):
    return type(layer).from_config({**layer.get_config(), **changes})


# ------------------------------------------------------------------ errors
def _expect(op, in_held, wanted):
    for held in in_held:
        if _same_holding(held, wanted):
            continue
        if isinstance(held, np.ndarray):
            _refuse_layout(
                op, "receives a Flatten of a channels_first feature map in channels_first "
                "order, which only a Dense (or Concatenate) can take; use "
                "Flatten(data_format='channels_first') or put a Dense right after the Flatten",
            )
        if held is TRANSPOSED:
            _refuse_mixed(op, "works on a channels_first feature map as if it were channels_last")
        _refuse_mixed(op, "uses data_format='channels_first' on a tensor that is not a "
                      "channels_first feature map of this model")


def _refuse_mixed(op, what):
    raise ConversionError(
        f"Layer '{op.source}' {what}. keras_snn converts channels_first models to run "
        "channels-last, which needs every convolution, pooling, padding, cropping and "
        "upsampling layer to use data_format='channels_first' (and a Dense to see only flat "
        "inputs, e.g. after Flatten or global pooling)."
    )


def _refuse_layout(op, what):
    raise ConversionError(
        f"Layer '{op.source}' {what}; keras_snn runs channels_first models channels-last "
        "and has no channels-last form for this."
    )
