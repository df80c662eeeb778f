"""Sparsity of a ReLU network (anytime paper, Tables F-G).

- S_a: fraction of zero hidden activations on data (every ReLU output that
  becomes a spiking layer; the input and the logits are not counted);
- S_w: fraction of zero weights over all Dense/Conv kernels;
- S_c = 1 - (1 - S_a)(1 - S_w): the fraction of synaptic operations a
  sparse network skips compared with a dense one.
"""

import numpy as np
import tensorflow as tf

from keras_snn.conversion.calibration import analog_forward
from keras_snn.conversion.calibration import calibration_batches
from keras_snn.conversion.converter import convert_model
from keras_snn.graph import layer_graph
from keras_snn.layers.base import SynapticLayer
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
