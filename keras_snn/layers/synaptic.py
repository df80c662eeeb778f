"""Weighted spiking layers: Dense and convolutions followed by a neuron.

Each layer is the Keras layer of the same name (same arguments, weights and
config, so trained weights load unchanged) whose activation is replaced by a
spiking neuron: per step `z(t) = W . s_in(t) + b` feeds the neuron, which emits
spikes (see `keras_snn.neurons`). With `neuron=None` the layer is non-spiking
and passes `z(t)` on, which is how the final layer feeds a membrane readout.

Common arguments of every layer here:

    neuron: the spiking neuron: "if" (default), "buffered", "lif", a
        `keras_snn.neurons.Neuron`, or None for a non-spiking layer that
        outputs its input current (used before a membrane `Readout`).
    threshold: initial firing threshold theta (> 0), stored as a
        non-trainable variable named "threshold".

Convolutions with `data_format="channels_first"` take and return NCHW (NCW)
tensors but convolve channels-last: TensorFlow has no NCHW convolution on
many CPUs (without oneDNN's kernels, e.g. AVX2-only x86), so such a layer
transposes its input and output at every call. `convert_model` never builds
them: it converts channels_first models to channels-last layers once.
"""

import keras
from keras import ops

from keras_snn.layers.base import SpikingLayer
from keras_snn.layers.base import SynapticLayer
from keras_snn.layers.base import nonzero_mask


class _KerasSynapticLayer(SynapticLayer):
    """A Keras weighted layer whose activation is a spiking neuron."""

    def _refuse_activation(self, kwargs):
        activation = kwargs.pop("activation", None)
        if activation not in (None, "linear"):
            raise ValueError(
                f"{type(self).__name__} '{kwargs.get('name', '')}': spiking layers take "
                "no `activation` (the neuron is the nonlinearity); received "
                f"activation={activation!r}."
            )

    def build(self, input_shape):
        super().build(input_shape)
        self._build_neuron(input_shape)

    def compute_current(self, inputs):
        # The wrapped Keras layer's own forward pass: W.x + b (activation None).
        return super(SpikingLayer, self).call(inputs)

    @classmethod
    def kernel_channel_axes(cls, kernel_rank):
        """Which axes of the kernel index the input and the output channels.

        Dense kernels are `(in, out)` and convolution kernels `(*taps, in,
        out)`: one input axis and one output axis. Code that scales or reads
        a kernel per channel (folding a BatchNormalization, normalisation,
        export) asks the layer class instead of knowing each layout.

        Args:
            kernel_rank: the number of kernel dimensions.

        Returns:
            `(input_axes, output_axes)`, tuples of non-negative axes. An
            output channel is one index into the output axes, flattened in
            row-major order; the input axes may overlap the output axes
            (depthwise kernels, where each output reads one input channel).

        Example:

        >>> SpikingConv2D.kernel_channel_axes(4)
        ((2,), (3,))
        """
        return (kernel_rank - 2,), (kernel_rank - 1,)

    def _linear(self, inputs, kernel):
        """The layer's linear map on `kernel`, without bias."""
        raise NotImplementedError

    def connectivity(self, inputs):
        return self._linear(inputs, nonzero_mask(self.kernel))

    def reduced_precision_current(self, inputs, dtype):
        # Spikes are small integers, exact in bfloat16; the kernel is rounded
        # to the narrower type, and the products accumulate inside the kernel
        # library (oneDNN and cuDNN accumulate bfloat16 in float32). The sum
        # returns to the compute dtype before the bias, so membranes never
        # hold a narrow type.
        products = self._linear(ops.cast(inputs, dtype), ops.cast(self.kernel, dtype))
        return self._add_bias(ops.cast(products, self.compute_dtype))

    def _add_bias(self, current):
        """`current + b`, the bias on the channel axis of either layout."""
        if not self.use_bias:
            return current
        bias = self.bias
        if getattr(self, "data_format", "channels_last") == "channels_first":
            bias = ops.reshape(bias, (1, -1) + (1,) * (len(current.shape) - 2))
        return current + bias

    # Keras's weighted layers save only their own (possibly quantized) kernel
    # and bias; the generic Layer scheme saves every variable, threshold and
    # neuron parameters included.
    def save_own_variables(self, store):
        keras.layers.Layer.save_own_variables(self, store)

    def load_own_variables(self, store):
        keras.layers.Layer.load_own_variables(self, store)

    def get_config(self):
        config = super().get_config()
        config.pop("activation", None)
        return {**config, **self._neuron_config()}


@keras.saving.register_keras_serializable(package="keras_snn")
class SpikingDense(_KerasSynapticLayer, keras.layers.Dense):
    """Fully connected layer of spiking neurons.

    Per step: `z(t) = s_in(t) @ W + b`, then the neuron fires on `z(t)`.

    Args:
        units: number of neurons.
        neuron: "if" (default), "buffered", "lif", a `Neuron`, or None
            (non-spiking: outputs `z(t)`).
        threshold: initial firing threshold (> 0).
        **kwargs: any other `keras.layers.Dense` argument (`use_bias`,
            initializers, regularizers, ...); `activation` must stay None.

    Input shape: `(batch, ..., input_dim)` spikes (or analog current).
    Output shape: `(batch, ..., units)` spikes for one step.

    Example:

    >>> import numpy as np
    >>> layer = SpikingDense(4, threshold=1.0)
    >>> tuple(layer(np.ones((2, 3), "float32")).shape)
    (2, 4)
    """

    def __init__(self, units, neuron="if", threshold=1.0, **kwargs):
        self._refuse_activation(kwargs)
        super().__init__(units, activation=None, **kwargs)
        self._init_neuron(neuron, threshold)

    def _linear(self, inputs, kernel):
        return ops.matmul(inputs, kernel)


class _ChannelsLastConvolution(_KerasSynapticLayer):
    """A convolution that runs channels-last whatever its `data_format`.

    A channels_first layer transposes its input to channels-last, convolves
    and transposes the result back: the same numbers on every device, where
    an NCHW convolution exists only on some (GPUs, CPUs with oneDNN).
    """

    def _convolve(self, inputs, kernel):
        """The convolution of channels-last `inputs` (subclasses implement it)."""
        raise NotImplementedError

    def _linear(self, inputs, kernel):
        if self.data_format != "channels_first":
            return self._convolve(inputs, kernel)
        outputs = self._convolve(transpose_to_channels_last(inputs), kernel)
        return transpose_to_channels_first(outputs)

    def compute_current(self, inputs):
        if self.data_format != "channels_first":
            return super().compute_current(inputs)  # Keras's own forward pass
        return self._add_bias(self._linear(inputs, self.kernel))


class _SpikingConv(_ChannelsLastConvolution):
    def _convolve(self, inputs, kernel):
        return ops.conv(
            inputs,
            kernel,
            strides=list(self.strides),
            padding=self.padding,
            dilation_rate=self.dilation_rate,
            data_format="channels_last",
        )


@keras.saving.register_keras_serializable(package="keras_snn")
class SpikingConv2D(_SpikingConv, keras.layers.Conv2D):
    """2D convolution of spiking neurons (strides, padding, dilation).

    Per step: `z(t) = conv2d(s_in(t), W) + b`, then the neuron fires.

    Args:
        filters, kernel_size: as `keras.layers.Conv2D`.
        neuron: "if" (default), "buffered", "lif", a `Neuron`, or None.
        threshold: initial firing threshold (> 0).
        **kwargs: any other `keras.layers.Conv2D` argument (`strides`,
            `padding`, `dilation_rate`, ...); `activation` must stay None.

    Input shape: `(batch, rows, cols, channels)` (channels_first:
        `(batch, channels, rows, cols)`).
    Output shape: `(batch, new_rows, new_cols, filters)` (in the input's layout).

    Example:

    >>> import numpy as np
    >>> layer = SpikingConv2D(8, 3, strides=2, padding="same")
    >>> tuple(layer(np.ones((1, 8, 8, 3), "float32")).shape)
    (1, 4, 4, 8)
    """

    def __init__(self, filters, kernel_size, neuron="if", threshold=1.0, **kwargs):
        self._refuse_activation(kwargs)
        super().__init__(filters, kernel_size, activation=None, **kwargs)
        self._init_neuron(neuron, threshold)


@keras.saving.register_keras_serializable(package="keras_snn")
class SpikingConv1D(_SpikingConv, keras.layers.Conv1D):
    """1D convolution of spiking neurons; `SpikingConv2D` for sequences.

    Args:
        filters, kernel_size: as `keras.layers.Conv1D`.
        neuron: "if" (default), "buffered", "lif", a `Neuron`, or None.
        threshold: initial firing threshold (> 0).
        **kwargs: other `keras.layers.Conv1D` arguments; no `activation`.

    Input shape: `(batch, steps, channels)` (channels_first: `(batch, channels, steps)`).
    Output shape: `(batch, new_steps, filters)` (in the input's layout).

    Example:

    >>> import numpy as np
    >>> tuple(SpikingConv1D(4, 3)(np.ones((1, 10, 2), "float32")).shape)
    (1, 8, 4)
    """

    def __init__(self, filters, kernel_size, neuron="if", threshold=1.0, **kwargs):
        self._refuse_activation(kwargs)
        super().__init__(filters, kernel_size, activation=None, **kwargs)
        self._init_neuron(neuron, threshold)

    def _convolve(self, inputs, kernel):
        if self.padding != "causal":
            return super()._convolve(inputs, kernel)
        # Keras pads causal convolutions itself, then runs a valid convolution.
        left = self.dilation_rate[0] * (self.kernel_size[0] - 1)
        return ops.conv(
            ops.pad(inputs, [[0, 0], [left, 0], [0, 0]]),
            kernel,
            strides=list(self.strides),
            padding="valid",
            dilation_rate=self.dilation_rate,
            data_format="channels_last",
        )


@keras.saving.register_keras_serializable(package="keras_snn")
class SpikingDepthwiseConv2D(_ChannelsLastConvolution, keras.layers.DepthwiseConv2D):
    """Depthwise 2D convolution of spiking neurons.

    Per step: `z(t) = depthwise_conv2d(s_in(t), W) + b`, then the neuron fires.

    Args:
        kernel_size: as `keras.layers.DepthwiseConv2D`.
        neuron: "if" (default), "buffered", "lif", a `Neuron`, or None.
        threshold: initial firing threshold (> 0).
        **kwargs: other `keras.layers.DepthwiseConv2D` arguments (`strides`,
            `padding`, `depth_multiplier`, `dilation_rate`, ...).

    Input shape: `(batch, rows, cols, channels)` (channels_first:
        `(batch, channels, rows, cols)`).
    Output shape: `(batch, new_rows, new_cols, channels * depth_multiplier)`
        (in the input's layout).

    Example:

    >>> import numpy as np
    >>> layer = SpikingDepthwiseConv2D(3, padding="same")
    >>> tuple(layer(np.ones((1, 5, 5, 2), "float32")).shape)
    (1, 5, 5, 2)
    """

    def __init__(self, kernel_size, neuron="if", threshold=1.0, **kwargs):
        self._refuse_activation(kwargs)
        super().__init__(kernel_size, activation=None, **kwargs)
        self._init_neuron(neuron, threshold)

    @classmethod
    def kernel_channel_axes(cls, kernel_rank):
        """The kernel is `(rows, cols, channels, depth_multiplier)`: output `c * M + m`
        reads input channel `c` only, so the input axis is also an output axis.

        Example:

        >>> SpikingDepthwiseConv2D.kernel_channel_axes(4)
        ((2,), (2, 3))
        """
        return (kernel_rank - 2,), (kernel_rank - 2, kernel_rank - 1)

    def _convolve(self, inputs, kernel):
        return ops.depthwise_conv(
            inputs,
            kernel,
            strides=self.strides,
            padding=self.padding,
            dilation_rate=self.dilation_rate,
            data_format="channels_last",
        )


def transpose_to_channels_last(x):
    """`(batch, channels, *spatial)` -> `(batch, *spatial, channels)`."""
    rank = len(x.shape)
    return ops.transpose(x, (0, *range(2, rank), 1))


def transpose_to_channels_first(x):
    """`(batch, *spatial, channels)` -> `(batch, channels, *spatial)`."""
    rank = len(x.shape)
    return ops.transpose(x, (0, rank - 1, *range(1, rank - 1)))
