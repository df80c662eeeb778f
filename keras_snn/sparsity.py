"""Sparsity of a ReLU network, measured on the network itself.

Spike-Based Anytime Perception (Dutson, Li, Gupta; supplementary Tables F
and G) reports three numbers for the ANN before conversion:

- S_a: the fraction of zero hidden activations on data;
- S_w: the fraction of zero weights over the Dense/Conv kernels;
- S_c = 1 - (1 - S_a)(1 - S_w): the fraction of synaptic operations a
  sparse network skips compared with a dense one.

The penalties that raise them are in `keras_snn.penalties`.
"""

import keras
import numpy as np
import tensorflow as tf

from keras_snn.conversion.calibration import calibration_batches
from keras_snn.conversion.converter import as_keras3_model
from keras_snn.conversion.rules import INFERENCE_NO_OPS
from keras_snn.graph import layer_graph
from keras_snn.layers.passthrough import is_passthrough
from keras_snn.layers.qrelu import QReLU
from keras_snn.layers.weighted import has_weighted_kernel
from keras_snn.layers.weighted import weighted_kernel
from keras_snn.metrics import combined_sparsity

# Average pooling of hidden activations is a hidden activation too: in the
# converted network its neurons fire like any layer's (a global pooling's means
# go on as graded events), and where it is zero the next layer skips its synapses.
_AVERAGE_POOLING = (
    keras.layers.AveragePooling1D,
    keras.layers.AveragePooling2D,
    keras.layers.GlobalAveragePooling1D,
    keras.layers.GlobalAveragePooling2D,
)
# Layers that pass values on unchanged at inference (or only move them):
# what they output is as hidden as what they read.
_VALUE_PRESERVING = INFERENCE_NO_OPS + (
    keras.layers.MaxPooling1D,
    keras.layers.MaxPooling2D,
    keras.layers.GlobalMaxPooling1D,
    keras.layers.GlobalMaxPooling2D,
)


def measure_sparsity(model, x, batch_size=256):
    """Measure S_a, S_w and S_c of a ReLU Keras model on data.

    S_a counts the hidden activations that become spike trains when the
    model is converted: every ReLU output (inline `relu`/`relu6` activations,
    `ReLU`, `Activation` and `QReLU` layers, after any BatchNormalization
    before them) that is not a model output, and the average pooling of
    such activations. A ReLU of values that are already hidden activations
    (pooled ReLU outputs) adds nothing new and is not counted twice. S_w
    counts the kernels of the weighted layers (`keras_snn.layers.weighted`:
    Dense, Conv1D/2D, DepthwiseConv2D and registered classes).

    Args:
        model: a built Keras 3 or tf_keras functional or Sequential model
            (nested models are read through).
        x: inputs (array, tf.data.Dataset or iterable of batches).
        batch_size: batch size for array input.

    Returns:
        dict with "activation" (S_a), "weight" (S_w) and "combined" (S_c).

    Raises:
        ValueError: when `x` holds no samples, or the model has no hidden
            ReLU or no weighted layer.

    Example:

    >>> import keras, numpy as np
    >>> ann = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
    ...                         keras.layers.Dense(2)])
    >>> sorted(measure_sparsity(ann, np.random.rand(16, 4)))
    ['activation', 'combined', 'weight']
    """
    graph = layer_graph(as_keras3_model(model), flatten=True)
    counted = _hidden_activation_keys(graph)
    zeros = total = 0
    for batch in calibration_batches(x, batch_size):
        values = _forward(graph, batch)
        for key in counted:
            activation = values[key]
            zeros += int(tf.math.count_nonzero(tf.equal(activation, 0)))
            total += int(tf.size(activation))
    if total == 0:
        raise ValueError("measure_sparsity received no samples or the model has no hidden ReLU.")
    # A layer called several times has one kernel: count it once.
    layers = {id(node.layer): node.layer for node in graph.nodes}.values()
    kernels = [
        np.asarray(keras.ops.convert_to_numpy(weighted_kernel(layer)))
        for layer in layers if has_weighted_kernel(layer)
    ]
    weight_total = sum(kernel.size for kernel in kernels)
    if weight_total == 0:
        raise ValueError("measure_sparsity found no Dense/Conv kernel in the model.")
    weight_zeros = sum(int(np.sum(kernel == 0)) for kernel in kernels)
    activation_sparsity = zeros / total
    weight_sparsity = weight_zeros / weight_total
    return {
        "activation": activation_sparsity,
        "weight": weight_sparsity,
        "combined": combined_sparsity(activation_sparsity, weight_sparsity),
    }


def _hidden_activation_keys(graph):
    """Graph keys of the hidden activations, in graph order.

    `hidden` holds every value that is a hidden activation or one moved,
    dropped out or max-pooled from hidden activations only; a key is counted
    where such a value is made (a ReLU, an average pooling), not where it is
    only moved.
    """
    hidden, counted = set(), []
    outputs = set(graph.output_keys)
    for node in graph.nodes:
        layer, key = node.layer, node.key
        reads_hidden = bool(node.input_keys) and all(k in hidden for k in node.input_keys)
        if _relu_output(layer):
            if not (reads_hidden and _is_standalone_relu(layer) and _unclipped(layer)):
                if key not in outputs:
                    counted.append(key)
            hidden.add(key)
        elif isinstance(layer, _AVERAGE_POOLING) and reads_hidden:
            if key not in outputs:
                counted.append(key)
            hidden.add(key)
        elif reads_hidden and (isinstance(layer, _VALUE_PRESERVING) or is_passthrough(layer)):
            hidden.add(key)
    return counted


def _relu_output(layer):
    """True when the layer's output is a ReLU (clipped or not) of its linear value."""
    if isinstance(layer, QReLU):
        return True
    if isinstance(layer, keras.layers.ReLU):
        return float(layer.negative_slope) == 0.0 and float(layer.threshold) == 0.0
    activation = getattr(layer, "activation", None)
    if activation is None:
        return False
    return keras.activations.serialize(activation) in ("relu", "relu6")


def _is_standalone_relu(layer):
    return isinstance(layer, (keras.layers.ReLU, keras.layers.Activation, QReLU))


def _unclipped(layer):
    """A ReLU without a ceiling: applied to non-negative values, it changes nothing."""
    if isinstance(layer, QReLU):
        return False  # quantises its input
    if isinstance(layer, keras.layers.ReLU):
        return layer.max_value is None
    return keras.activations.serialize(layer.activation) == "relu"


def _forward(graph, inputs):
    """Every node's output for a batch, the model run layer by layer at inference."""
    values = {graph.input_keys[0]: tf.convert_to_tensor(inputs)}
    for node in graph.nodes:
        gathered = [values[key] for key in node.input_keys]
        values[node.key] = node.layer(gathered if len(gathered) > 1 else gathered[0],
                                      training=False)
    return values
