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

from keras_snn.conversion.errors import ConversionError
from keras_snn.layers.base import SpikingLayer
from keras_snn.layers.base import SynapticLayer


def calibration_batches(data, batch_size=256):
    """Yield float32 input batches from an array, a tf.data.Dataset or an iterable.

    Elements may be `x` or tuples `(x, y[, sample_weight])`; only x is used.
    A tuple of 2 or 3 arrays with the same number of rows is read as
    `(x, y[, sample_weight])`, as Keras reads `validation_data`.
    """
    if _is_xy_tuple(data):
        data = data[0]
    if isinstance(data, (np.ndarray, tf.Tensor)) or hasattr(data, "__array__"):
        array = _as_float_array(data, "calibration_data")
        if array.ndim == 0 or array.shape[0] == 0:
            raise ConversionError(f"calibration_data is empty (shape {array.shape}).")
        for start in range(0, len(array), batch_size):
            yield array[start : start + batch_size]
        return
    if isinstance(data, (str, bytes, dict)) or not hasattr(data, "__iter__"):
        raise ConversionError(
            "calibration_data must be an array, a tf.data.Dataset or an iterable of batches; "
            f"received {type(data).__name__}."
        )
    for index, element in enumerate(data):
        if isinstance(element, (tuple, list)):
            element = element[0]
        yield _as_float_array(element, f"calibration batch {index}")


def _is_xy_tuple(data):
    if not isinstance(data, tuple) or len(data) not in (2, 3):
        return False
    lengths = set()
    for part in data:
        shape = getattr(part, "shape", None)
        if shape is None or len(shape) == 0:
            return False
        lengths.add(shape[0])
    return len(lengths) == 1


def _as_float_array(data, what):
    try:
        array = np.asarray(data)
    except (TypeError, ValueError) as error:  # ragged nested lists
        raise ConversionError(f"{what} is not a regular numeric array ({error}).") from None
    if array.dtype.kind not in "biuf":
        raise ConversionError(
            f"{what} must be numeric; received dtype {array.dtype} (shape {array.shape})."
        )
    return array.astype("float32", copy=False)


class CalibrationReader:
    """The calibration batches, checked against the model's input.

    Iterating yields the float32 batches whose values are all finite and
    whose shape is `(batch, *frame_shape)`; a wrong shape raises at once.
    Batches holding NaN or infinity are counted, not used: `finish()` then
    refuses the data, naming how many values were bad (a NaN would silently
    vanish from the percentile and skew every ceiling).
    """

    def __init__(self, data, frame_shape, batch_size=256):
        self._batches = calibration_batches(data, batch_size)
        self.frame_shape = tuple(frame_shape)
        self.samples = 0
        self.values = 0
        self.nonfinite = 0
        self.nonzero = 0

    def __iter__(self):
        for batch in self._batches:
            self._check_shape(batch)
            bad = int(batch.size - np.count_nonzero(np.isfinite(batch)))
            self.samples += len(batch)
            self.values += batch.size
            self.nonfinite += bad
            if bad or self.nonfinite:
                continue  # refused in finish(); no ceiling is worth measuring now
            self.nonzero += int(np.count_nonzero(batch))
            yield batch

    def _check_shape(self, batch):
        expected = (None,) + self.frame_shape
        if batch.ndim != len(expected) or any(
            want is not None and want != got for want, got in zip(expected[1:], batch.shape[1:])
        ):
            raise ConversionError(
                "calibration_data must hold model inputs of shape "
                f"(batch, {', '.join(str(d) for d in self.frame_shape)}); received a batch of "
                f"shape {batch.shape}."
            )

    def finish(self):
        """ConversionError for no data or any non-finite value."""
        if not self.samples:
            raise ConversionError("calibration_data yielded no batches.")
        if self.nonfinite:
            raise ConversionError(
                f"calibration_data holds {self.nonfinite} non-finite values (NaN or infinity) "
                f"out of {self.values}; remove or replace them before converting."
            )

    @property
    def all_zero(self):
        return self.samples > 0 and not self.nonfinite and self.nonzero == 0


def analog_forward(graph, inputs, max_values, quantizers=None):
    """Run a spiking graph as the ANN it was converted from.

    Args:
        graph: `keras_snn.graph.LayerGraph` of the spiking network.
        inputs: a batch of model inputs.
        max_values: dict node key -> ReLU clip value (None for unbounded).
        quantizers: optional dict node key -> `(levels, shift)` of a QReLU
            whose clipped value is quantised like the QReLU's (a layer
            with a clip value only).

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
                    if quantizers and quantizers.get(node.key) is not None:
                        levels, shift = quantizers[node.key]
                        step = max_values[node.key] / levels
                        out = tf.minimum(tf.floor(out / step + shift), levels) * step
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

    def measured(self, key):
        """Whether the layer produced any positive activation (else no ceiling)."""
        return key in self._maxima and bool(np.any(self._maxima[key] > 0))

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
