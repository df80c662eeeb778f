"""The non-spiking readout that turns a spiking network's output into logits."""

import keras
import tensorflow as tf

from keras_snn.layers.base import SpikingLayer


@keras.saving.register_keras_serializable(package="keras_snn")
class Readout(SpikingLayer, keras.layers.Layer):
    """Non-spiking accumulator: the running mean of its input over time.

    After t steps the readout is `(1/t) * sum_{k=1..t} x(k)` ("Spike-Based
    Anytime Perception", Dutson, Li, Gupta, section B). Two modes follow from what feeds it:

    - membrane readout (default in conversion): the input is the current
      `z(k)` of a non-spiking final layer (`neuron=None`); the readout is the
      final layer's membrane divided by t, an estimate of the ANN logits that
      converges to them as t grows, and logits may be negative;
    - spike-rate readout ("A High Performance and Low Latency Deep Spiking
      Neural Networks Conversion Framework"): the input is the spikes of a
      spiking final layer; the readout is its spike rate (spike count / t).

    `SpikingModel` places the readout after every step into its output
    `(batch, timesteps, classes)`.

    Input shape: `(batch, ..., classes)`.
    Output shape: the same.

    Example:

    >>> import numpy as np
    >>> tuple(Readout()(np.ones((2, 10), "float32")).shape)
    (2, 10)
    """

    emits_spikes = False

    def build(self, input_shape):
        self.readout_shape = tuple(input_shape)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def initial_state(self, batch_size):
        return (tf.zeros([batch_size] + list(self.readout_shape[1:]), self.compute_dtype),)

    def step(self, inputs, states, timestep):
        total = states[0] + inputs
        steps_taken = tf.cast(timestep + 1, total.dtype)
        return total / steps_taken, (total,)
