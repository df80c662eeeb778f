"""Conversion rules: what each Keras layer class becomes, keyed by class.

A rule takes `(layer, key, inputs)` and returns the list of intermediate ops
(`keras_snn.conversion.ir`) the layer stands for; an empty list means the
layer does nothing at inference (Dropout, noise). Users extend the converter
with `register_conversion_rule(layer_class, rule)`; classes not registered are
refused with a `ConversionError` that names them. Layer classes registered
with `keras_snn.layers.register_passthrough_layer` (at any time, before or
after this module is imported) convert as shape ops, and the weighted layers
of `keras_snn.layers.register_weighted_layer`'s table (Dense, Conv1D/2D,
DepthwiseConv2D, ...) into their spiking class, unless a rule of their own is
registered.
"""

import keras
import numpy as np

from keras_snn import layers as snn_layers
from keras_snn.conversion import ir
from keras_snn.conversion.errors import ConversionError
from keras_snn.layers.passthrough import passthrough_layer_classes
from keras_snn.layers.weighted import find_weighted_layer
from keras_snn.layers.weighted import weighted_layer_classes

_RULES = {}
_REFUSALS = {}


def register_conversion_rule(layer_class, rule):
    """Teach convert_model a layer class.

    Args:
        layer_class: a `keras.layers.Layer` subclass (subclasses match too).
        rule: callable `(layer, key, inputs) -> list of keras_snn.conversion.ir ops`;
            an empty list drops the layer (an inference no-op).

    Example (treat a custom inference-only layer as a no-op):

    >>> import keras
    >>> class Tap(keras.layers.Layer):
    ...     def call(self, x):
    ...         return x
    >>> _ = register_conversion_rule(Tap, lambda layer, key, inputs: [])
    """
    if not (isinstance(layer_class, type) and issubclass(layer_class, keras.layers.Layer)):
        raise TypeError(f"Expected a keras.layers.Layer subclass; received {layer_class!r}.")
    _RULES[layer_class] = rule
    return rule


def find_rule(layer):
    """The rule for a layer (most specific class first), or raise ConversionError.

    Per class: a refusal, then a registered rule, then the weighted-layer
    table, then the pass-through registry (both read now, so layers
    registered after import are found).
    """
    passthrough = passthrough_layer_classes()
    for cls in type(layer).__mro__:
        if cls in _REFUSALS:
            raise ConversionError(_describe(layer) + _REFUSALS[cls])
        if cls in _RULES:
            return _RULES[cls]
        weighted = find_weighted_layer(cls)
        if weighted is not None and weighted.keras_class is cls:
            return _weighted_rule(weighted.spiking_class)
        if cls in passthrough:
            return _shape_rule
    known = (*_RULES, *weighted_layer_classes(), *passthrough)
    supported = ", ".join(sorted({cls.__name__ for cls in known}))
    raise ConversionError(
        f"{_describe(layer)} has no spiking form. Supported layers: {supported}. "
        "Register a rule with keras_snn.register_conversion_rule for custom layers."
    )


def _describe(layer):
    return f"Layer '{layer.name}' ({type(layer).__name__})"


# ------------------------------------------------------------- activations
def _activation_ops(layer, name, key, inputs):
    """Ops for an activation given by name (inline or an Activation layer)."""
    shape = _output_shape(layer) if isinstance(layer, keras.layers.Activation) else None
    if name == "relu":
        return [ir.Relu(key, inputs, layer.name, shape=shape)]
    if name == "relu6":  # the same function as ReLU(max_value=6)
        return [ir.Relu(key, inputs, layer.name, 6.0, shape=shape)]
    if name == "linear":
        return []
    if name in ("silu", "swish"):
        raise ConversionError(
            f"{_describe(layer)} uses activation '{name}' (swish), which has no spiking "
            "form (it is not monotone); retrain with relu or relu6."
        )
    if name == "softmax":
        return [ir.Softmax(key, inputs, layer.name)]
    if name == "sigmoid":
        return _sigmoid_ops(layer, key, inputs)
    raise ConversionError(
        f"{_describe(layer)} uses activation '{name}', which has no spiking form; "
        "use relu or relu6 (optionally ReLU with max_value) or keras_snn.layers.QReLU."
    )


def _output_shape(layer):
    return tuple(layer.output.shape[1:])


def _sigmoid_ops(layer, key, inputs):
    """A single-unit sigmoid (a binary head, final): dropped, decide at readout 0.

    `sigmoid(z) > 0.5` exactly when `z > 0`, so the readout (the logit) keeps
    the decision, as dropping a softmax keeps the argmax. Several sigmoid units
    are multi-label or regression outputs whose values matter: refused.
    """
    units = layer.output.shape[-1]
    if units != 1:
        raise ConversionError(
            f"{_describe(layer)} uses activation 'sigmoid' on {units} outputs; only a "
            "single-unit sigmoid (a binary head, decided at readout 0) is dropped. Convert "
            f"with head='{layer.name}' to compute the probabilities as an ANN."
        )
    return [ir.Sigmoid(key, inputs, layer.name)]


def _activation_name(activation):
    name = keras.activations.serialize(activation)
    return name if isinstance(name, str) else str(name)


# ---------------------------------------------------------------- weighted
def _weighted_rule(spiking_class, drop=()):
    def rule(layer, key, inputs):
        # A channels_first layer keeps its data_format here; layout.py makes
        # the whole model channels-last once the ops are fused.
        config = layer.get_config()
        for name in ("activation", "bias_initializer", "use_bias") + tuple(drop):
            config.pop(name, None)
        kernel = np.asarray(keras.ops.convert_to_numpy(layer.kernel), "float32")
        bias = (
            np.asarray(keras.ops.convert_to_numpy(layer.bias), "float32")
            if getattr(layer, "bias", None) is not None
            else None
        )
        return _linear_ops(layer, key, inputs, spiking_class, config, kernel, bias)

    return rule


def _separable_conv_rule(layer, key, inputs):
    """SeparableConv2D as the one Conv2D it equals: `K[h,w,c,o] = sum_m D[h,w,c,m] P[c*m,o]`.

    The depthwise output has no activation, so folding the pointwise 1x1
    convolution into it is exact (no spiking layer for the linear middle),
    at the full convolution's synapse count.
    """
    numpy = keras.ops.convert_to_numpy
    depthwise = np.asarray(numpy(layer.depthwise_kernel), "float32")
    pointwise = np.asarray(numpy(layer.pointwise_kernel), "float32")
    channels, multiplier = depthwise.shape[-2:]
    kernel = np.einsum(
        "hwcm,cmo->hwco", depthwise, pointwise.reshape(channels, multiplier, -1)
    )
    bias = np.asarray(numpy(layer.bias), "float32") if layer.use_bias else None
    config = {
        "filters": layer.filters, "kernel_size": layer.kernel_size, "strides": layer.strides,
        "padding": layer.padding, "dilation_rate": layer.dilation_rate, "name": layer.name,
        "data_format": layer.data_format,  # layout.py makes channels_first ones channels-last
    }
    return _linear_ops(layer, key, inputs, snn_layers.SpikingConv2D, config, kernel, bias)


def _linear_ops(layer, key, inputs, spiking_class, config, kernel, bias):
    linear_key = key + "/linear"
    ops = [ir.Linear(linear_key, inputs, layer.name, spiking_class, config, kernel, bias)]
    activation = _activation_ops(layer, _activation_name(layer.activation), key, [linear_key])
    if not activation:  # linear: the layer's output is the linear op itself
        ops[0].key = key
    return ops + activation


# Dense, Conv1D/2D, DepthwiseConv2D and the classes users add convert through
# `_weighted_rule` from the weighted-layer table (`find_rule`); a separable
# convolution, also in the table, needs its factors multiplied out first.
register_conversion_rule(keras.layers.SeparableConv2D, _separable_conv_rule)


# ------------------------------------------------------------- activations
def _relu_rule(layer, key, inputs):
    if float(layer.negative_slope) != 0.0 or float(layer.threshold) != 0.0:
        raise ConversionError(
            f"{_describe(layer)} has negative_slope={layer.negative_slope} and "
            f"threshold={layer.threshold}; spiking neurons need a plain ReLU "
            "(negative_slope=0, threshold=0; max_value is fine)."
        )
    max_value = None if layer.max_value is None else float(layer.max_value)
    return [ir.Relu(key, inputs, layer.name, max_value, shape=_output_shape(layer))]


register_conversion_rule(keras.layers.ReLU, _relu_rule)


def _qrelu_rule(layer, key, inputs):
    # The learned bound is the activation ceiling (Alg. 1 of "A High
    # Performance and Low Latency Deep Spiking Neural Networks Conversion
    # Framework").
    bound = float(keras.ops.convert_to_numpy(layer.bound))
    return [ir.Relu(
        key, inputs, layer.name, bound, quantized=True, shift=float(layer.shift), levels=int(layer.levels),
        shape=_output_shape(layer),
    )]


register_conversion_rule(snn_layers.QReLU, _qrelu_rule)
register_conversion_rule(
    keras.layers.Activation,
    lambda layer, key, inputs: _activation_ops(
        layer, _activation_name(layer.activation), key, inputs
    ),
)
register_conversion_rule(
    keras.layers.Softmax, lambda layer, key, inputs: [ir.Softmax(key, inputs, layer.name)]
)


# ------------------------------------------------------------ affine maps
def _channel_axis(layer, axes, rank):
    """"last" or "first" (axis 1 of a feature map): where a per-channel layer's channels are."""
    axes = [int(axis) % rank for axis in np.atleast_1d(axes)]
    if axes == [rank - 1]:
        return "last"
    if axes == [1] and rank > 2:
        return "first"
    raise ConversionError(
        f"{_describe(layer)} works on axis {axes}; keras_snn folds per-channel maps over "
        "the channel axis only (the last axis, or axis 1 of a channels_first feature map)."
    )


def _batch_norm_rule(layer, key, inputs):
    channel_axis = _channel_axis(layer, layer.axis, len(layer.input.shape))
    numpy = keras.ops.convert_to_numpy
    variance = numpy(layer.moving_variance)
    scale = 1.0 / np.sqrt(variance + layer.epsilon)
    if layer.scale:
        scale = scale * numpy(layer.gamma)
    shift = -numpy(layer.moving_mean) * scale
    if layer.center:
        shift = shift + numpy(layer.beta)
    return [ir.Affine(
        key, inputs, layer.name, scale.astype("float32"), shift.astype("float32"),
        channel_axis=channel_axis, rank=len(layer.input.shape),
    )]


def _rescaling_rule(layer, key, inputs):
    scale = np.asarray(layer.scale, "float32")
    offset = np.asarray(layer.offset, "float32")
    if scale.size == 1 and offset.size == 1:  # one factor for every value: any layout
        return [ir.Affine(key, inputs, layer.name, scale.reshape(-1), offset.reshape(-1), None)]
    if max(scale.ndim, offset.ndim) > 1:
        raise ConversionError(
            f"{_describe(layer)} has scale/offset of shape {scale.shape}/{offset.shape}; "
            "keras_snn folds a scalar or a per-channel (last axis) Rescaling only."
        )
    return [ir.Affine(key, inputs, layer.name, scale, offset)]


def _normalization_rule(layer, key, inputs):
    if layer.invert:
        raise ConversionError(f"{_describe(layer)} is an inverting Normalization; unsupported.")
    numpy = keras.ops.convert_to_numpy
    std = np.maximum(np.sqrt(numpy(layer.variance)), keras.config.epsilon())
    scale = (1.0 / std).reshape(-1).astype("float32")
    shift = (-numpy(layer.mean).reshape(-1) * scale).astype("float32")
    channel_axis = None  # one mean and variance (axis=None): any layout
    if scale.size > 1:
        channel_axis = _channel_axis(layer, layer.axis, len(layer.input.shape))
    return [ir.Affine(key, inputs, layer.name, scale, shift, channel_axis)]


register_conversion_rule(keras.layers.BatchNormalization, _batch_norm_rule)
register_conversion_rule(keras.layers.Rescaling, _rescaling_rule)
register_conversion_rule(keras.layers.Normalization, _normalization_rule)


# --------------------------------------------------- no-ops and shape layers
def _no_op(layer, key, inputs):
    return []


# Layers that do nothing at inference (regularisers active in training only).
INFERENCE_NO_OPS = (
    keras.layers.Dropout,
    keras.layers.SpatialDropout1D,
    keras.layers.SpatialDropout2D,
    keras.layers.GaussianNoise,
    keras.layers.GaussianDropout,
    keras.layers.AlphaDropout,
    keras.layers.ActivityRegularization,
    keras.layers.Identity,
)
for _cls in INFERENCE_NO_OPS:
    register_conversion_rule(_cls, _no_op)


def _shape_rule(layer, key, inputs):
    if isinstance(layer, (keras.layers.UpSampling1D, keras.layers.UpSampling2D)):
        if getattr(layer, "interpolation", "nearest") != "nearest":
            raise ConversionError(
                f"{_describe(layer)} uses interpolation='{layer.interpolation}'; only "
                "'nearest' upsampling copies spikes exactly."
            )
    clone = type(layer).from_config(layer.get_config())
    return [ir.Shape(key, inputs, layer.name, clone)]


# The simulator's pass-through layers are exactly the shape layers the
# converter keeps: `find_rule` maps them to `_shape_rule` (Identity, also a
# pass-through, is dropped above as a no-op).


# ----------------------------------------------------------------- pooling
def _pool_rule(spiking_class, keys, op_class=ir.Pool):
    def rule(layer, key, inputs):
        config = {name: getattr(layer, name) for name in keys}
        config["name"] = layer.name
        config["data_format"] = getattr(layer, "data_format", "channels_last")
        return [op_class(key, inputs, layer.name, spiking_class, config)]

    return rule


register_conversion_rule(
    keras.layers.AveragePooling2D,
    _pool_rule(snn_layers.SpikingAveragePooling2D, ("pool_size", "strides", "padding")),
)
register_conversion_rule(
    keras.layers.AveragePooling1D,
    _pool_rule(snn_layers.SpikingAveragePooling1D, ("pool_size", "strides", "padding")),
)
register_conversion_rule(
    keras.layers.GlobalAveragePooling2D,
    _pool_rule(snn_layers.SpikingGlobalAveragePooling2D, ("keepdims",)),
)
register_conversion_rule(
    keras.layers.GlobalAveragePooling1D,
    _pool_rule(snn_layers.SpikingGlobalAveragePooling1D, ("keepdims",)),
)
# Max pooling commutes with the per-layer or per-channel scales of
# normalisation (each window lies inside one channel), so it keeps the scale.
register_conversion_rule(
    keras.layers.MaxPooling2D,
    _pool_rule(snn_layers.SpikingMaxPooling2D, ("pool_size", "strides", "padding"), ir.MaxPool),
)
register_conversion_rule(
    keras.layers.MaxPooling1D,
    _pool_rule(snn_layers.SpikingMaxPooling1D, ("pool_size", "strides", "padding"), ir.MaxPool),
)
register_conversion_rule(
    keras.layers.GlobalMaxPooling2D,
    _pool_rule(snn_layers.SpikingGlobalMaxPooling2D, ("keepdims",), ir.MaxPool),
)
register_conversion_rule(
    keras.layers.GlobalMaxPooling1D,
    _pool_rule(snn_layers.SpikingGlobalMaxPooling1D, ("keepdims",), ir.MaxPool),
)
register_conversion_rule(
    keras.layers.Add, lambda layer, key, inputs: [ir.Merge(key, inputs, layer.name)]
)


# ----------------------------------------------------------------- refused
_NEGATIVE = (
    " passes negative values, which spiking neurons cannot carry. Use ReLU "
    "(optionally with max_value) or keras_snn.layers.QReLU."
)
for _cls in (keras.layers.LeakyReLU, keras.layers.PReLU, keras.layers.ELU):
    _REFUSALS[_cls] = _NEGATIVE
