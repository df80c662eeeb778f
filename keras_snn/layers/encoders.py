"""Input encoders: how a static input or an event stream enters the network.

Every spiking network starts with one encoder right after its `keras.Input`:

- `AnalogInput` (direct encoding, DIET-SNN): the input itself is the current
  into the first layer at every step; the first layer's work is MACs, not
  synaptic events.
- `SpikingInput` ("Spike-Based Anytime Perception", Dutson, Li, Gupta, B):
  IF neurons driven by the input, so a pixel of intensity x in [0, 1] fires
  at rate x.
- `PoissonInput`: seeded Bernoulli rate coding, spike with probability x per step.
- `EventInput`: the caller passes (batch, T, ...) frames (spike camera or DVS
  bins, as in "A High Performance and Low Latency Deep Spiking Neural
  Networks Conversion Framework", B) and the network consumes one frame per
  step.
"""

import keras
import numpy as np
import tensorflow as tf

from keras_snn import neurons as neurons_lib
from keras_snn.layers.base import SpikingLayer


class _Encoder(SpikingLayer, keras.layers.Layer):
    """Shared by the encoders: same shape out as in; by default the input itself."""

    is_encoder = True

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def step(self, inputs, states, timestep):
        return inputs, ()


@keras.saving.register_keras_serializable(package="keras_snn")
class AnalogInput(_Encoder):
    """Direct (analog) input: the same real-valued input at every step.

    The following synaptic layer receives the input as a current each step;
    its work is counted as MACs (`input_macs`), not as synaptic events, and
    when the input is static `SpikingModel` computes that current only once.

    Args:
        scale, offset: an optional affine map of the input, `x * scale +
            offset` (scalars, or arrays that broadcast against one input
            sample, e.g. one value per channel). convert_model puts a model's
            input Rescaling/Normalization here when folding it into the first
            layer would be wrong (an offset before a zero-padded convolution:
            the padding must stay 0 after the offset is applied).

    Example:

    >>> import numpy as np
    >>> tuple(AnalogInput()(np.ones((2, 3), "float32")).shape)
    (2, 3)
    >>> np.asarray(AnalogInput(scale=2.0, offset=-1.0)(np.ones((1, 2), "float32"))).tolist()
    [[1.0, 1.0]]
    """

    emits_spikes = False
    time_invariant = True

    def __init__(self, scale=1.0, offset=0.0, **kwargs):
        super().__init__(**kwargs)
        self.scale = np.asarray(scale, "float32")
        self.offset = np.asarray(offset, "float32")

    @property
    def is_identity(self):
        """True when the input passes unchanged (no scale, no offset)."""
        return bool(np.all(self.scale == 1.0) and np.all(self.offset == 0.0))

    def step(self, inputs, states, timestep):
        return self.ann_call(inputs), ()

    def ann_call(self, inputs):
        """The input as the ANN saw it after its input Rescaling/Normalization."""
        if self.is_identity:
            return inputs
        scale = tf.constant(self.scale, dtype=inputs.dtype)
        offset = tf.constant(self.offset, dtype=inputs.dtype)
        return inputs * scale + offset

    def get_config(self):
        return {
            **super().get_config(),
            "scale": self.scale.tolist(),
            "offset": self.offset.tolist(),
        }


@keras.saving.register_keras_serializable(package="keras_snn")
class SpikingInput(_Encoder):
    """Spiking input layer: IF neurons driven by the input (Spike-Based Anytime Perception, B).

    Each neuron adds its input value to its membrane every step and fires like
    an IF neuron, so an input x in [0, threshold] fires at rate x/threshold.

    Args:
        threshold: firing threshold (> 0); 1 for inputs scaled to [0, 1].
        neuron: "if" (default) or another `Neuron` (e.g. `IF(initial_membrane=0.5)`).

    Example:

    >>> import numpy as np
    >>> tuple(SpikingInput()(np.full((1, 3), 0.5, "float32")).shape)
    (1, 3)
    """

    def __init__(self, threshold=1.0, neuron="if", **kwargs):
        super().__init__(**kwargs)
        self.threshold = float(threshold)
        if self.threshold <= 0:
            raise ValueError(
                f"Layer '{self.name}': `threshold` must be > 0; received {threshold!r}."
            )
        self.neuron = neurons_lib.get(neuron)
        if self.neuron is None:
            raise ValueError(
                f"Layer '{self.name}': SpikingInput needs a neuron; use AnalogInput "
                "for a non-spiking input."
            )

    def build(self, input_shape):
        self.encoded_shape = tuple(input_shape)

    def initial_state(self, batch_size):
        shape = [batch_size] + list(self.encoded_shape[1:])
        return self.neuron.initial_state(shape, self.threshold, self.compute_dtype)

    def step(self, inputs, states, timestep):
        return self.neuron.step(inputs, tuple(states), self.threshold)

    def get_config(self):
        return {
            **super().get_config(),
            "threshold": self.threshold,
            "neuron": neurons_lib.serialize(self.neuron),
        }


@keras.saving.register_keras_serializable(package="keras_snn")
class PoissonInput(_Encoder):
    """Seeded Bernoulli ("Poisson") rate coding.

    At step t each input element spikes with probability
    `clip(gain * x, 0, 1)`, drawn with TensorFlow's stateless generator
    keyed by `(seed, t)`: the same input, seed and step give the same spikes on
    every run and device.

    Args:
        gain: spike probability per step per unit of input (> 0); 1 for
            inputs in [0, 1], 1/ceiling for inputs in [0, ceiling].
        seed: int; None draws one at construction (stored in the config, so a
            saved model replays the same spikes).

    Its spikes are binary (`emits_binary_spikes`): each is its own event.

    Example:

    >>> import numpy as np
    >>> tuple(PoissonInput(seed=1)(np.full((1, 3), 0.5, "float32")).shape)
    (1, 3)
    """

    emits_binary_spikes = True

    def __init__(self, gain=1.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.gain = float(gain)
        if not self.gain > 0.0:
            raise ValueError(f"Layer '{self.name}': `gain` must be > 0; received {gain!r}.")
        self.seed = int(np.random.randint(0, 2**31 - 1) if seed is None else seed)

    def step(self, inputs, states, timestep):
        probability = tf.clip_by_value(inputs * self.gain, 0.0, 1.0)
        seed = tf.stack([tf.constant(self.seed, tf.int32), tf.cast(timestep, tf.int32)])
        draw = tf.random.stateless_uniform(tf.shape(inputs), seed=seed, dtype=inputs.dtype)
        return tf.cast(draw < probability, inputs.dtype), ()

    def get_config(self):
        return {**super().get_config(), "gain": self.gain, "seed": self.seed}


@keras.saving.register_keras_serializable(package="keras_snn")
class EventInput(_Encoder):
    """Event-frame input: one frame of a `(batch, T, ...)` stream per step.

    Build the network on the shape of one frame; call the `SpikingModel` with
    `(batch, T, *frame_shape)` (binary frames from a spike camera, or DVS
    events binned in time). The frames are passed on as spikes, and the model
    runs T steps unless `timesteps` says fewer.

    Example:

    >>> import numpy as np
    >>> tuple(EventInput()(np.ones((1, 4), "float32")).shape)
    (1, 4)
    """

    consumes_sequence = True
    emits_binary_spikes = False  # frames may hold event counts
