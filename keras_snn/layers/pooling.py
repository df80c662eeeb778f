"""Spiking average pooling: a fixed linear map (mean over a window), then a neuron or none.

Average pooling is linear, so it has an exact spiking form: each output neuron
receives the mean of its window's input spikes and fires like any IF neuron.
Its synapses are the window connections (weight 1/size), so a spike costs one
operation per window it belongs to. With `neuron=None` the window mean itself
goes on, a graded spike event (a multiple of 1/size where any member spiked)
that the next synaptic layer counts as one event, like a multi-bit spike: no
second rounding to 1/T, at the cost of more (graded) events than a neuron
would fire. `convert_model` pools to one position per channel (global
pooling) that way. Max pooling has a rate form of its own on cumulative spike
counts (`keras_snn.layers.max_pooling`), which shares the window geometry
defined here.

Like the convolutions, a pooling layer with `data_format="channels_first"`
pools channels-last between two transposes (CPUs without oneDNN have no NCHW
pooling); convert_model builds channels-last layers only.
"""

import keras
from keras import ops

from keras_snn.layers.base import SynapticLayer
from keras_snn.layers.synaptic import transpose_to_channels_first
from keras_snn.layers.synaptic import transpose_to_channels_last


class Layout:
    """`data_format` handling shared by the pooling layers: maps run channels-last."""

    def _init_data_format(self, data_format):
        data_format = keras.config.image_data_format() if data_format is None else data_format
        if data_format not in ("channels_last", "channels_first"):
            raise ValueError(
                f"Layer '{self.name}': `data_format` must be 'channels_last' or "
                f"'channels_first'; received {data_format!r}."
            )
        self.data_format = data_format

    def _channels_last_shape(self, shape):
        shape = tuple(shape)
        if self.data_format == "channels_first":
            return (shape[0],) + shape[2:] + (shape[1],)
        return shape

    def _layout_shape(self, shape):
        """A channels-last shape in this layer's layout."""
        shape = tuple(shape)
        if self.data_format == "channels_first" and len(shape) > 2:
            return (shape[0], shape[-1]) + shape[1:-1]
        return shape

    def _channels_last_map(self, function, inputs):
        """`function` (a channels-last map) applied in this layer's layout."""
        if self.data_format != "channels_first":
            return function(inputs)
        outputs = function(transpose_to_channels_last(inputs))
        return transpose_to_channels_first(outputs) if len(outputs.shape) > 2 else outputs


class PoolingWindow(Layout):
    """A pooling window (size, strides, padding) in a data_format.

    Shared by average and max pooling: the output shape, the connections (one
    per window and member) and the config of the window.
    """

    def _init_window(self, pool_size, strides, padding, data_format):
        self._init_data_format(data_format)
        self.pool_size = pool_tuple(pool_size, self.rank, "pool_size", self.name)
        self.strides = pool_tuple(
            self.pool_size if strides is None else strides, self.rank, "strides", self.name
        )
        padding = str(padding).lower()
        if padding not in ("valid", "same"):
            raise ValueError(
                f"Layer '{self.name}': `padding` must be 'valid' or 'same'; "
                f"received {padding!r}."
            )
        self.padding = padding

    def compute_output_shape(self, input_shape):
        shape = pooled_shape(
            self._channels_last_shape(input_shape), self.pool_size, self.strides, self.padding
        )
        return self._layout_shape(shape)

    def connectivity(self, inputs):
        return self._channels_last_map(self._window_counts, inputs)

    def _window_counts(self, inputs):
        return window_counts(inputs, self.pool_size, self.strides, self.padding)

    def _window_config(self):
        return {
            "pool_size": self.pool_size,
            "strides": self.strides,
            "padding": self.padding,
            "data_format": self.data_format,
        }


class GlobalPoolingAxes(Layout):
    """Pooling over all spatial axes in a data_format: shared by global average and max.

    The output shape, the connections (every position of a channel into its
    one output) and the config.
    """

    def _init_global(self, keepdims, data_format):
        self._init_data_format(data_format)
        self.keepdims = bool(keepdims)

    def _spatial_axes(self):
        first = 2 if self.data_format == "channels_first" else 1
        return tuple(range(first, first + self.rank))

    def compute_output_shape(self, input_shape):
        input_shape = self._channels_last_shape(input_shape)
        if self.keepdims:
            return self._layout_shape((input_shape[0],) + (1,) * self.rank + (input_shape[-1],))
        return (input_shape[0], input_shape[-1])

    # A reduction over axes needs no layout-specific kernel: no transposes here.
    def connectivity(self, inputs):
        return ops.sum(inputs, axis=self._spatial_axes(), keepdims=self.keepdims)

    def _global_config(self):
        return {"keepdims": self.keepdims, "data_format": self.data_format}


class _SpikingAveragePooling(PoolingWindow, SynapticLayer, keras.layers.Layer):
    rank = None
    averages_inputs = True

    def __init__(
        self,
        pool_size=2,
        strides=None,
        padding="valid",
        neuron="if",
        threshold=1.0,
        data_format=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._init_window(pool_size, strides, padding, data_format)
        self._init_neuron(neuron, threshold)

    def build(self, input_shape):
        if len(input_shape) != self.rank + 2:
            raise ValueError(
                f"Layer '{self.name}' expects inputs of rank {self.rank + 2} "
                f"(batch, spatial..., channels); received shape {input_shape}."
            )
        self._build_neuron(input_shape)

    def compute_current(self, inputs):
        return self._channels_last_map(self._average, inputs)

    def _average(self, inputs):
        return ops.average_pool(
            inputs, self.pool_size, strides=self.strides, padding=self.padding,
            data_format="channels_last",
        )

    def get_config(self):
        return {
            **super().get_config(),
            **self._window_config(),
            **self._neuron_config(),
        }


@keras.saving.register_keras_serializable(package="keras_snn")
class SpikingAveragePooling2D(_SpikingAveragePooling):
    """2D average pooling of spikes into spiking neurons.

    Per step: `z(t) = mean over each window of s_in(t)`, then the neuron fires.
    With a threshold of 1 and IF neurons, an output neuron's rate tracks the
    mean rate of its window.

    Args:
        pool_size: int or 2-tuple window size (default 2).
        strides: int or 2-tuple; defaults to `pool_size`.
        padding: "valid" or "same" (borders average only real members).
        neuron: "if" (default), "buffered", "lif", a `Neuron`, or None (the
            window mean goes on as a graded spike event).
        threshold: initial firing threshold (> 0).
        data_format: "channels_last", "channels_first", or None (Keras's
            `image_data_format()`, as for Keras's own pooling).

    Input shape: `(batch, rows, cols, channels)` (channels_first:
        `(batch, channels, rows, cols)`).
    Output shape: `(batch, pooled_rows, pooled_cols, channels)` (in the input's layout).

    Example:

    >>> import numpy as np
    >>> tuple(SpikingAveragePooling2D(2)(np.ones((1, 4, 4, 3), "float32")).shape)
    (1, 2, 2, 3)
    """

    rank = 2


@keras.saving.register_keras_serializable(package="keras_snn")
class SpikingAveragePooling1D(_SpikingAveragePooling):
    """1D average pooling of spikes into spiking neurons.

    Args:
        pool_size, strides, padding, data_format: as `keras.layers.AveragePooling1D`.
        neuron: "if" (default), "buffered", "lif", a `Neuron`, or None (the
            window mean goes on as a graded spike event).
        threshold: initial firing threshold (> 0).

    Input shape: `(batch, steps, channels)` (channels_first: `(batch, channels, steps)`).
    Output shape: `(batch, pooled_steps, channels)` (in the input's layout).

    Example:

    >>> import numpy as np
    >>> tuple(SpikingAveragePooling1D(2)(np.ones((1, 6, 3), "float32")).shape)
    (1, 3, 3)
    """

    rank = 1


class _SpikingGlobalAveragePooling(GlobalPoolingAxes, SynapticLayer, keras.layers.Layer):
    rank = None
    averages_inputs = True

    def __init__(self, keepdims=False, neuron="if", threshold=1.0, data_format=None, **kwargs):
        super().__init__(**kwargs)
        self._init_global(keepdims, data_format)
        self._init_neuron(neuron, threshold)

    def build(self, input_shape):
        if len(input_shape) != self.rank + 2:
            raise ValueError(
                f"Layer '{self.name}' expects inputs of rank {self.rank + 2}; "
                f"received shape {input_shape}."
            )
        self._build_neuron(input_shape)

    def compute_current(self, inputs):
        return ops.mean(inputs, axis=self._spatial_axes(), keepdims=self.keepdims)

    def get_config(self):
        return {**super().get_config(), **self._global_config(), **self._neuron_config()}


@keras.saving.register_keras_serializable(package="keras_snn")
class SpikingGlobalAveragePooling2D(_SpikingGlobalAveragePooling):
    """Global average pooling of spikes into one spiking neuron per channel.

    Per step: `z(t) = mean over rows and cols of s_in(t)`, then the neuron fires.

    Args:
        keepdims: keep the spatial axes with size 1.
        neuron: "if" (default), "buffered", "lif", a `Neuron`, or None (the
            channel's mean goes on as a graded spike event).
        threshold: initial firing threshold (> 0).
        data_format: "channels_last", "channels_first", or None (Keras's
            `image_data_format()`).

    Input shape: `(batch, rows, cols, channels)` (channels_first:
        `(batch, channels, rows, cols)`).
    Output shape: `(batch, channels)` (keepdims: `(batch, 1, 1, channels)`, or
        `(batch, channels, 1, 1)` for channels_first).

    Example:

    >>> import numpy as np
    >>> tuple(SpikingGlobalAveragePooling2D()(np.ones((2, 4, 4, 3), "float32")).shape)
    (2, 3)
    """

    rank = 2


@keras.saving.register_keras_serializable(package="keras_snn")
class SpikingGlobalAveragePooling1D(_SpikingGlobalAveragePooling):
    """Global average pooling over steps into one spiking neuron per channel.

    Args:
        keepdims, neuron, threshold, data_format: as `SpikingGlobalAveragePooling2D`.

    Example:

    >>> import numpy as np
    >>> tuple(SpikingGlobalAveragePooling1D()(np.ones((2, 5, 3), "float32")).shape)
    (2, 3)
    """

    rank = 1


def pooled_shape(input_shape, pool_size, strides, padding):
    """Output shape of a channels_last pooling window (Keras's arithmetic)."""
    spatial = []
    for size, pool, stride in zip(input_shape[1:-1], pool_size, strides):
        if size is None:
            spatial.append(None)
        elif padding == "same":
            spatial.append(-(-size // stride))
        else:
            spatial.append((size - pool) // stride + 1)
    return (input_shape[0], *spatial, input_shape[-1])


def window_counts(inputs, pool_size, strides, padding):
    """Sum pooling of channels_last inputs: one connection per (window, member).

    A depthwise convolution with a ones kernel, so 'same' borders count only
    real members; its gradient is the number of windows holding each input.
    """
    channels = inputs.shape[-1]
    kernel = ops.ones(tuple(pool_size) + (channels, 1), dtype=inputs.dtype)
    return ops.depthwise_conv(
        inputs, kernel, strides=strides, padding=padding, data_format="channels_last"
    )


def pool_tuple(value, rank, name, layer_name):
    values = (value,) * rank if isinstance(value, int) else tuple(value)
    if len(values) != rank or not all(isinstance(v, int) and v > 0 for v in values):
        raise ValueError(
            f"Layer '{layer_name}': `{name}` must be a positive int or a tuple of "
            f"{rank} positive ints; received {value!r}."
        )
    return values
