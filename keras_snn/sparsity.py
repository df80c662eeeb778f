"""Sparsity of a ReLU network (anytime paper, Tables F-G) and the penalties
that increase it (anytime paper, section D).

- S_a: fraction of zero hidden activations on data (every ReLU output that
  becomes a spiking layer; the input and the logits are not counted);
- S_w: fraction of zero weights over all Dense/Conv kernels;
- S_c = 1 - (1 - S_a)(1 - S_w): the fraction of synaptic operations a
  sparse network skips compared with a dense one.
"""

import keras
import numpy as np
import tensorflow as tf

from keras_snn.conversion.calibration import analog_forward
from keras_snn.conversion.calibration import calibration_batches
from keras_snn.conversion.converter import convert_model
from keras_snn.graph import layer_graph
from keras_snn.layers.base import SynapticLayer
from keras_snn.layers.qrelu import QReLU
from keras_snn.layers.weighted import find_weighted_layer
from keras_snn.layers.weighted import has_weighted_kernel
from keras_snn.layers.weighted import weighted_regularizer_names
from keras_snn.metrics import combined_sparsity


def measure_sparsity(model, x, batch_size=256):
    """Measure S_a, S_w and S_c of a convertible ReLU Keras model.

    Args:
        model: a Keras 3 or tf_keras ReLU model that `convert_model` accepts.
        x: inputs (array, tf.data.Dataset or iterable of batches).
        batch_size: batch size for array input.

    Returns:
        dict with "activation" (S_a), "weight" (S_w) and "combined" (S_c).

    Example:

    >>> import keras, numpy as np
    >>> ann = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
    ...                         keras.layers.Dense(2)])
    >>> sorted(measure_sparsity(ann, np.random.rand(16, 4)))
    ['activation', 'combined', 'weight']
    """
    # The converter's network without normalisation is the ANN with BN folded
    # in; in ANN mode its spiking layers output exactly the hidden ReLU values.
    network = convert_model(model, normalization="none").network
    graph = layer_graph(network)
    hidden = [
        node.key for node in graph.nodes
        if isinstance(node.layer, SynapticLayer) and node.layer.neuron is not None
    ]
    zeros = total = 0
    for batch in calibration_batches(x, batch_size):
        values = analog_forward(graph, batch, {})
        for key in hidden:
            activation = values[key]
            zeros += int(tf.math.count_nonzero(tf.equal(activation, 0)))
            total += int(tf.size(activation))
    if total == 0:
        raise ValueError("measure_sparsity received no samples or the model has no hidden ReLU.")
    kernels = [
        np.asarray(layer.kernel) for layer in network.layers
        if isinstance(layer, SynapticLayer) and hasattr(layer, "kernel")
    ]
    weight_zeros = sum(int(np.sum(k == 0)) for k in kernels)
    weight_total = sum(k.size for k in kernels)
    activation_sparsity = zeros / total
    weight_sparsity = weight_zeros / weight_total
    return {
        "activation": activation_sparsity,
        "weight": weight_sparsity,
        "combined": combined_sparsity(activation_sparsity, weight_sparsity),
    }


# ------------------------------------------------------ sparsity penalties
@keras.saving.register_keras_serializable(package="keras_snn")
class ActivationL1(keras.regularizers.Regularizer):
    """Activity penalty `strength * mean |a|` over a layer's activations (lambda_a).

    Keras divides activity penalties by the batch size, so this returns the
    per-sample sum over elements divided by the elements per sample: the mean.
    A mean keeps one strength meaningful for layers of any size.
    """

    def __init__(self, strength):
        if not float(strength) >= 0:
            raise ValueError(f"`strength` must be >= 0; received {strength!r}.")
        self.strength = float(strength)

    def __call__(self, x):
        per_sample = 1
        for dim in x.shape[1:]:
            per_sample *= dim
        return self.strength * keras.ops.sum(keras.ops.abs(x)) / per_sample

    def get_config(self):
        return {"strength": self.strength}


@keras.saving.register_keras_serializable(package="keras_snn")
class WeightL1(keras.regularizers.Regularizer):
    """Weight penalty `strength * mean |w|` over a kernel (lambda_w)."""

    def __init__(self, strength):
        if not float(strength) >= 0:
            raise ValueError(f"`strength` must be >= 0; received {strength!r}.")
        self.strength = float(strength)

    def __call__(self, w):
        return self.strength * keras.ops.mean(keras.ops.abs(w))

    def get_config(self):
        return {"strength": self.strength}


def _relu_output(layer):
    if isinstance(layer, (keras.layers.ReLU, QReLU)):
        return True
    activation = getattr(layer, "activation", None)
    return activation is not None and keras.activations.serialize(activation) == "relu"


def add_sparsity_penalties(model, activation=0.0, weight=0.0):
    """A copy of `model` whose training adds the anytime paper's sparsity penalties.

    Every ReLU/QReLU output gets `ActivationL1(activation)` and every Dense/Conv
    kernel (depthwise included) `WeightL1(weight)`, added to any regulariser
    it had. The copy has the same weights; the model passed in is unchanged.
    `strip_sparsity_penalties` undoes it.

    Args:
        model: a built Keras 3 Sequential or functional model.
        activation: lambda_a, strength of the mean-L1 activation penalty.
        weight: lambda_w, strength of the mean-L1 weight penalty.

    Example:

    >>> import keras
    >>> ann = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
    ...                         keras.layers.Dense(2)])
    >>> sparse = add_sparsity_penalties(ann, activation=0.5, weight=1.0)
    >>> type(sparse.layers[0].activity_regularizer).__name__
    'ActivationL1'
    """

    def clone(layer):
        config = layer.get_config()
        if activation and _relu_output(layer):
            config["activity_regularizer"] = keras.saving.serialize_keras_object(
                _combine(layer.activity_regularizer, ActivationL1(activation))
            )
        if weight and has_weighted_kernel(layer):
            key = find_weighted_layer(layer).regularizer
            current = getattr(layer, key, None)
            config[key] = keras.saving.serialize_keras_object(_combine(current, WeightL1(weight)))
        return layer.__class__.from_config(config)

    return _clone_with_weights(model, clone)


def strip_sparsity_penalties(model):
    """A copy of `model` without keras_snn's sparsity penalties (a plain Keras model).

    A regulariser the model had before `add_sparsity_penalties` is kept.

    Example:

    >>> import keras
    >>> ann = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu")])
    >>> plain = strip_sparsity_penalties(add_sparsity_penalties(ann, activation=0.5))
    >>> plain.layers[0].activity_regularizer is None
    True
    """

    def clone(layer):
        config = layer.get_config()
        for key in ("activity_regularizer",) + weighted_regularizer_names():
            current = getattr(layer, key, None)
            if isinstance(current, _PENALTIES):
                config[key] = None
            elif isinstance(current, _Sum):
                config[key] = keras.saving.serialize_keras_object(current.original)
        return layer.__class__.from_config(config)

    return _clone_with_weights(model, clone)


@keras.saving.register_keras_serializable(package="keras_snn")
class _Sum(keras.regularizers.Regularizer):
    """A user's regulariser plus a keras_snn penalty."""

    def __init__(self, original, penalty):
        self.original = keras.regularizers.get(original)
        self.penalty = keras.regularizers.get(penalty)

    def __call__(self, x):
        return self.original(x) + self.penalty(x)

    def get_config(self):
        return {
            "original": keras.saving.serialize_keras_object(self.original),
            "penalty": keras.saving.serialize_keras_object(self.penalty),
        }


_PENALTIES = (ActivationL1, WeightL1)


def _combine(current, penalty):
    if current is None or isinstance(current, _PENALTIES):
        return penalty
    if isinstance(current, _Sum):
        current = current.original
    return _Sum(current, penalty)


def _clone_with_weights(model, clone_function):
    if not isinstance(model, keras.Model) or not model.built:
        raise ValueError("Expected a built Keras 3 model (Sequential or functional).")
    copy = keras.models.clone_model(model, clone_function=clone_function)
    copy.set_weights(model.get_weights())
    return copy
