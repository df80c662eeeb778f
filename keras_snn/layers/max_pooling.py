"""Spiking max pooling: the window maximum of cumulative spike counts.

A spike train's rate estimate after t steps is its cumulative count C(t) / t,
so the rate form of `max` over a window is `max_i C_i(t) / t`. The layer keeps
every input's cumulative count C_i(t) as state; the pooled output's cumulative
count is the window maximum `M(t) = max_i C_i(t)`, and each step emits the
increase `M(t) - M(t-1)`. Consequences, exact at every
step and with no gating heuristic:

- the output's cumulative count is `M(t)` itself, so its rate converges to the
  maximum of the input rates, the ANN's max pooling of the activations;
- `M(t) - M(t-1) <= max_i (C_i(t) - C_i(t-1))`: binary inputs give binary
  outputs, multi-bit inputs outputs of at most their largest spike (a whole
  number, not always a power of two); and `>= min_i` of the increments, so an
  output is negative only when an input carried a negative spike.

On an analog input (right after `AnalogInput`) the layer is built with
`cumulative=False` and outputs the window maximum of the input values
themselves: for a static input that is the same at every step and exact.

Operations ("Spike-Based Anytime Perception", Dutson, Li, Gupta, eq. A,
counts events times fan-out): an event-driven max-pool unit adds an arriving
event to its input's counter (one accumulate) and compares the new count with
the running maximum of every window that holds the input (one comparison
each). So each input event costs
`1 + windows containing it` operations, reported under this layer in
`SpikingModel.run()["layer_ops"]`; the layer after it counts its own fan-out
on the pooled events. On analog input the work is the window comparisons,
counted with the other analog-input MACs.

Like average pooling, `data_format="channels_first"` pools channels-last
between two transposes (CPUs without oneDNN have no NCHW pooling).
"""

import keras
import tensorflow as tf
from keras import ops

from keras_snn.layers.base import SynapticLayer
from keras_snn.layers.pooling import GlobalPoolingAxes
from keras_snn.layers.pooling import PoolingWindow

# Counters stay in float32 whatever the compute dtype: whole numbers are exact
# there up to 2**24 spikes (bfloat16 would lose them after 256).
_COUNT_DTYPE = "float32"


class _MaxPoolingBase(SynapticLayer, keras.layers.Layer):
    """The counter state and step shared by windowed and global max pooling.

    The `SynapticLayer` protocol holds with no neuron: the "current" is the
    counters' increment (the input events themselves, each into its own
    counter) and `fire` advances the counters and emits the increase of the
    window maxima, so `step(x) == fire(compute_current(x))` as for every layer.
    """

    rank = None

    def _init_mode(self, cumulative):
        if not isinstance(cumulative, bool):
            raise ValueError(
                f"Layer '{self.name}': `cumulative` must be True or False; "
                f"received {cumulative!r}."
            )
        self.cumulative = cumulative
        self.neuron = None  # the window maximum itself is the output

    @property
    def emits_spikes(self):
        return self.cumulative

    def build(self, input_shape):
        if len(input_shape) != self.rank + 2:
            raise ValueError(
                f"Layer '{self.name}' expects inputs of rank {self.rank + 2} "
                f"(batch, spatial..., channels); received shape {input_shape}."
            )
        # The name SynapticLayer.fanout_maps and the state shape read.
        self.synaptic_input_shape = tuple(input_shape)

    def pool(self, inputs):
        """The ANN's max pooling of `inputs` (what the output rate converges to)."""
        raise NotImplementedError

    def ann_call(self, inputs):
        """The layer as the ANN it stands for (used by the converter's calibration)."""
        return self.pool(inputs)

    def initial_state(self, batch_size):
        if not self.cumulative:
            return ()
        counts = tf.zeros([batch_size] + list(self.synaptic_input_shape[1:]), _COUNT_DTYPE)
        maxima = tf.zeros(self._output_shape_for_state(batch_size), _COUNT_DTYPE)
        return (counts, maxima)

    def compute_current(self, inputs):
        if not self.cumulative:
            return self.pool(inputs)
        return inputs  # every input event goes into its own counter

    def fire(self, current, states):
        if not self.cumulative:
            return current, ()
        counts, maxima = states
        counts = counts + ops.cast(current, _COUNT_DTYPE)
        new_maxima = self.pool(counts)
        increase = ops.cast(new_maxima - maxima, self.compute_dtype)
        return increase, (counts, new_maxima)

    def fanout_maps(self):
        maps = super().fanout_maps()  # comparisons: windows holding each input
        if not self.cumulative:
            return maps
        # Plus the counter's accumulate, for inputs that some window reads.
        return [m + tf.cast(m > 0, m.dtype) for m in maps]


class _SpikingMaxPooling(PoolingWindow, _MaxPoolingBase):
    def __init__(
        self,
        pool_size=2,
        strides=None,
        padding="valid",
        cumulative=True,
        data_format=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._init_window(pool_size, strides, padding, data_format)
        self._init_mode(cumulative)

    def pool(self, inputs):
        return self._channels_last_map(self._window_max, inputs)

    def _window_max(self, inputs):
        # 'same' borders take the maximum over real members only (as Keras).
        return ops.max_pool(
            inputs, self.pool_size, strides=self.strides, padding=self.padding,
            data_format="channels_last",
        )

    def get_config(self):
        return {**super().get_config(), **self._window_config(), "cumulative": self.cumulative}


@keras.saving.register_keras_serializable(package="keras_snn")
class SpikingMaxPooling2D(_SpikingMaxPooling):
    """2D max pooling of spike trains by their cumulative counts.

    Per step: every input's counter adds its spikes, `C(t) = C(t-1) + s_in(t)`;
    the output emits `max_window C(t) - max_window C(t-1)`. The output's spike
    count after t steps is the window maximum of the input counts, so its rate
    converges to the max-pooled input rates (see the module docstring).

    Args:
        pool_size: int or 2-tuple window size (default 2).
        strides: int or 2-tuple; defaults to `pool_size`.
        padding: "valid" or "same" (borders take the max of real members).
        cumulative: True (default) for spike inputs, as above; False for an
            analog input (after `AnalogInput`): the window max of the input
            values, every step, with no state.
        data_format: "channels_last", "channels_first", or None (Keras's
            `image_data_format()`, as for Keras's own pooling).

    Input shape: `(batch, rows, cols, channels)` (channels_first:
        `(batch, channels, rows, cols)`).
    Output shape: `(batch, pooled_rows, pooled_cols, channels)` (in the input's layout).

    Example:

    >>> import numpy as np
    >>> layer = SpikingMaxPooling2D(2)
    >>> layer.build((None, 2, 2, 1))
    >>> states = layer.initial_state(1)  # (input counts, window maxima)
    >>> for spikes in ([1, 0, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0]):
    ...     step = np.array(spikes, "float32").reshape(1, 2, 2, 1)
    ...     out, states = layer.step(step, states, 0)
    ...     print(float(out[0, 0, 0, 0]), float(states[1][0, 0, 0, 0]))
    1.0 1.0
    0.0 1.0
    1.0 2.0
    """

    rank = 2


@keras.saving.register_keras_serializable(package="keras_snn")
class SpikingMaxPooling1D(_SpikingMaxPooling):
    """1D max pooling of spike trains by their cumulative counts.

    Args:
        pool_size, strides, padding, data_format: as `keras.layers.MaxPooling1D`.
        cumulative: True (default) for spike inputs; False for analog input.

    Input shape: `(batch, steps, channels)`.
    Output shape: `(batch, pooled_steps, channels)`.

    Example:

    >>> import numpy as np
    >>> tuple(SpikingMaxPooling1D(2)(np.ones((1, 6, 3), "float32")).shape)
    (1, 3, 3)
    """

    rank = 1


class _SpikingGlobalMaxPooling(GlobalPoolingAxes, _MaxPoolingBase):
    def __init__(self, keepdims=False, cumulative=True, data_format=None, **kwargs):
        super().__init__(**kwargs)
        self._init_global(keepdims, data_format)
        self._init_mode(cumulative)

    def pool(self, inputs):
        return ops.max(inputs, axis=self._spatial_axes(), keepdims=self.keepdims)

    def get_config(self):
        return {**super().get_config(), **self._global_config(), "cumulative": self.cumulative}


@keras.saving.register_keras_serializable(package="keras_snn")
class SpikingGlobalMaxPooling2D(_SpikingGlobalMaxPooling):
    """Global max pooling of spike trains by their cumulative counts.

    Per step: `C(t) = C(t-1) + s_in(t)` per input; per channel the output
    emits `max over rows and cols of C(t)` minus the same at `t - 1`.

    Args:
        keepdims: keep the spatial axes with size 1.
        cumulative: True (default) for spike inputs; False for analog input.
        data_format: "channels_last", "channels_first", or None (Keras's
            `image_data_format()`).

    Input shape: `(batch, rows, cols, channels)` (channels_first:
        `(batch, channels, rows, cols)`).
    Output shape: `(batch, channels)` (keepdims: `(batch, 1, 1, channels)`, or
        `(batch, channels, 1, 1)` for channels_first).

    Example:

    >>> import numpy as np
    >>> tuple(SpikingGlobalMaxPooling2D()(np.ones((2, 4, 4, 3), "float32")).shape)
    (2, 3)
    """

    rank = 2


@keras.saving.register_keras_serializable(package="keras_snn")
class SpikingGlobalMaxPooling1D(_SpikingGlobalMaxPooling):
    """Global max pooling over steps of spike trains by their cumulative counts.

    Args:
        keepdims, cumulative, data_format: as `SpikingGlobalMaxPooling2D`.

    Example:

    >>> import numpy as np
    >>> tuple(SpikingGlobalMaxPooling1D()(np.ones((2, 5, 3), "float32")).shape)
    (2, 3)
    """

    rank = 1
