"""Activation ceilings from calibration data (data-based normalisation).

The converter runs the spiking network in "ANN mode" (each neuron replaced by
the ReLU it stands for, which reproduces the original ANN exactly after BN
folding) over the calibration data and takes, per layer or per channel, the
p-th percentile of the positive activations (Rueckauer et al.; p = 100 is max
normalisation). Percentiles are taken over a uniform random subsample once a
layer has produced more than `max_values` positive values, so memory stays
bounded for large calibration sets; the maximum is always exact.
"""

import numpy as np
import tensorflow as tf

from keras_snn.layers.base import SpikingLayer
from keras_snn.layers.base import SynapticLayer


def calibration_batches(data, batch_size=256):
    """Yield float32 input batches from an array, a tf.data.Dataset or an iterable.

    Elements may be `x` or tuples `(x, y[, sample_weight])`; only x is used.
    """
    if isinstance(data, (np.ndarray, tf.Tensor)) or hasattr(data, "__array__"):
        array = np.asarray(data, "float32")
        if array.shape[0] == 0:
            raise ValueError("calibration_data is empty.")
        for start in range(0, len(array), batch_size):
            yield array[start : start + batch_size]
        return
    for element in data:
        if isinstance(element, (tuple, list)):
            element = element[0]
        yield np.asarray(element, "float32")


def analog_forward(graph, inputs, max_values):
    """Run a spiking graph as the ANN it was converted from.

    Args:
        graph: `keras_snn.graph.LayerGraph` of the spiking network.
        inputs: a batch of model inputs.
        max_values: dict node key -> ReLU clip value (None for unbounded).

    Returns:
        dict node key -> output tensor (activations of spiking nodes, currents
        of non-spiking ones, the readout's input as the logits).
    """
    values = {graph.input_keys[0]: tf.convert_to_tensor(inputs)}
    for node in graph.nodes:
        gathered = [values[key] for key in node.input_keys]
        x = gathered if len(gathered) > 1 else gathered[0]
        layer = node.layer
        if hasattr(layer, "ann_call"):  # a nonlinear map with no neuron (max pooling)
            out = layer.ann_call(x)
        elif isinstance(layer, SynapticLayer):
            out = layer.compute_current(x)
            # A signed neuron carries the linear value itself; the others a ReLU.
            if layer.neuron is not None and not getattr(layer.neuron, "signed", False):
                out = tf.nn.relu(out)
                if max_values.get(node.key) is not None:
                    out = tf.minimum(out, max_values[node.key])
        elif isinstance(layer, SpikingLayer):
            out = x  # encoders and the readout pass the ANN value through
        else:
            out = layer(x)
        values[node.key] = out
    return values


class CeilingEstimator:
    """Streams activations and returns their p-th percentile per layer/channel."""

    def __init__(self, percentile, per_channel, max_values=2**24, seed=0):
        self.percentile = float(percentile)
        self.per_channel = per_channel
        self.max_values = max_values
        self._rng = np.random.default_rng(seed)
        self._pools = {}  # key -> list of per-channel (or one) sample lists
        self._rates = {}
        self._maxima = {}

    def add(self, key, activations):
        values = np.asarray(activations, "float32")
        columns = values.reshape(-1, values.shape[-1]) if self.per_channel else values.reshape(-1, 1)
        pools = self._pools.setdefault(key, [[] for _ in range(columns.shape[1])])
        rates = self._rates.setdefault(key, [1.0] * columns.shape[1])
        maxima = self._maxima.setdefault(key, np.zeros(columns.shape[1], "float32"))
        np.maximum(maxima, columns.max(axis=0, initial=0.0), out=maxima)
        limit = self.max_values // columns.shape[1]
        for channel in range(columns.shape[1]):
            column = columns[:, channel]
            positive = column[column > 0]
            if rates[channel] < 1.0:
                positive = positive[self._rng.random(positive.size) < rates[channel]]
            pools[channel].append(positive)
            if sum(part.size for part in pools[channel]) > limit:
                merged = np.concatenate(pools[channel])
                pools[channel] = [merged[self._rng.random(merged.size) < 0.5]]
                rates[channel] /= 2.0

    def ceiling(self, key):
        """Per-channel vector (or a 1-vector) of ceilings; 1 where a unit never fired."""
        maxima = self._maxima[key]
        if self.percentile >= 100.0:
            result = maxima.copy()
        else:
            result = np.array([
                np.percentile(np.concatenate(parts), self.percentile)
                if sum(p.size for p in parts) else 0.0
                for parts in self._pools[key]
            ], "float32")
        # A silent unit has no scale to learn; any positive ceiling is exact for it.
        return np.where(result > 0, result, 1.0).astype("float32")
