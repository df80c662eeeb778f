"""The step interface shared by every layer that runs inside a SpikingModel.

A spiking network is an ordinary Keras functional graph that describes one
timestep. `SpikingModel` runs that graph T times inside one compiled
`tf.while_loop`, threading each layer's state through the loop. For that every
layer in the graph implements this small protocol (keras-spiking's cell idea,
kept per layer so a graph can branch and merge):

- `initial_state(batch_size)` -> tuple of tensors (empty when stateless);
- `step(inputs, states, timestep)` -> `(outputs, new_states)`;
- `emits_spikes`: whether the layer makes spike events itself (so the next
  synaptic layer counts synaptic operations) or not (analog values, counted
  as MACs, or a current); an average pooling without neuron
  (`SynapticLayer.averages_inputs`) passes on what it receives, so the spikes
  it averages go on as graded events (`keras_snn.plan.Carries`);
- `emits_binary_spikes`: whether every output is 0 or 1, so a spike is its own
  event mask (derived from the neuron; an encoder without one says it).

Synaptic layers (weighted layers, pooling, add) split a step into
`compute_current(inputs)` (the linear map, `z = W.x + b`) and `fire(current,
states)` (the neuron), which lets the model compute a time-invariant current
once before the loop, and they expose `fanout_maps()` for operation counting.
"""

import keras
import tensorflow as tf

from keras_snn import neurons as neurons_lib


class SpikingLayer:
    """Mixin: the per-step protocol. Combine with a `keras.layers.Layer`."""

    emits_spikes = True
    # True for layers whose output is a pure function of their inputs and does
    # not change over time when the inputs do not (no state, no randomness).
    time_invariant = False
    # True for input encoders that consume one frame of a (batch, T, ...) input
    # per step instead of the same static input at every step.
    consumes_sequence = False
    # True for the input encoders, the only layers that may read the model input.
    is_encoder = False

    @property
    def emits_binary_spikes(self):
        """True when every output is a 0/1 spike: a binary, non-negative neuron fires it."""
        neuron = getattr(self, "neuron", None)
        return bool(
            self.emits_spikes and neuron is not None and neuron.largest_spike == 1
            and not neuron.emits_negative_spikes
        )

    def initial_state(self, batch_size):
        """Tuple of state tensors at rest for a batch (empty if stateless)."""
        del batch_size
        return ()

    def step(self, inputs, states, timestep):
        """Advance one timestep. `timestep` is the 0-based int32 step index."""
        raise NotImplementedError

    def call(self, inputs):
        # Calling the layer directly runs one step from rest: that is what the
        # functional API traces to infer shapes, and a handy way to inspect it.
        batch_size = tf.shape(_first(inputs))[0]
        outputs, _ = self.step(inputs, self.initial_state(batch_size), tf.constant(0))
        return outputs


class SynapticLayer(SpikingLayer):
    """Mixin for layers with synapses: a linear map followed by a neuron.

    Subclasses implement `compute_current(inputs)` (the layer's linear map with
    bias) and `connectivity(inputs)` (the same map with every nonzero weight
    replaced by 1 and no bias). Everything else is shared: the neuron, its
    threshold variable and parameters, the state, the step, and the fan-out
    maps used to count synaptic operations.
    """

    # True for a map that averages its inputs with fixed positive weights
    # (average pooling). Without a neuron such a layer passes on what it
    # receives: the window mean of spikes is a graded spike event (a multiple
    # of 1/window), counted as one event where it is nonzero, like a
    # multi-bit spike. Any other map without a neuron makes a current of them.
    averages_inputs = False

    def _init_neuron(self, neuron, threshold):
        self.neuron = neurons_lib.get(neuron)
        threshold = float(threshold)
        if threshold <= 0:
            raise ValueError(
                f"Layer '{self.name}': `threshold` must be > 0; received {threshold!r}."
            )
        self.threshold_value = threshold

    @property
    def emits_spikes(self):
        return self.neuron is not None

    def _build_neuron(self, input_shape):
        """Create the threshold and neuron-parameter variables (call from build).

        Both are trainable (DIET-SNN learns a threshold and a leak per layer);
        they only change when the model is trained with surrogate gradients.
        """
        # Kept for the state shape and the fan-out maps, which need it per call.
        if _is_shape_list(input_shape):
            input_shape = [tuple(shape) for shape in input_shape]
        else:
            input_shape = tuple(input_shape)
        self.synaptic_input_shape = input_shape
        self.threshold = self.add_weight(
            shape=(),
            initializer=keras.initializers.Constant(self.threshold_value),
            constraint=Clip(1e-3, None),
            trainable=self.neuron is not None,  # unused by a non-spiking layer
            name="threshold",
        )
        self.neuron_parameters = {}
        for name, value in (self.neuron.parameters if self.neuron else {}).items():
            self.neuron_parameters[name] = self.add_weight(
                shape=(),
                initializer=keras.initializers.Constant(value),
                constraint=Clip(1e-3, 1.0),  # a leak stays in (0, 1]
                name=name,
            )

    def _output_shape_for_state(self, batch_size):
        shape = self.compute_output_shape(self.synaptic_input_shape)
        return [batch_size] + list(shape[1:])

    def initial_state(self, batch_size):
        if self.neuron is None:
            return ()
        shape = self._output_shape_for_state(batch_size)
        return self.neuron.initial_state(shape, tf.convert_to_tensor(self.threshold), self.compute_dtype)

    def fire(self, current, states):
        """Neuron update on a precomputed current. Returns `(outputs, states)`."""
        if self.neuron is None:
            return current, ()
        parameters = {k: tf.convert_to_tensor(v) for k, v in self.neuron_parameters.items()}
        return self.neuron.step(
            current, tuple(states), tf.convert_to_tensor(self.threshold), **parameters
        )

    def step(self, inputs, states, timestep):
        return self.fire(self.compute_current(inputs), states)

    def compute_current(self, inputs):
        raise NotImplementedError

    def reduced_precision_current(self, inputs, dtype):
        """`compute_current` with the weight products computed in `dtype`.

        For spike inputs a narrow type such as bfloat16 is exact on the
        spikes and halves the cost of the products on hardware with bfloat16
        units; the current comes back in the layer's compute dtype. Layers
        whose map has no weight products (pooling, addition) gain nothing
        from it and compute in full precision, which is this default.

        Example:

        >>> import numpy as np
        >>> from keras_snn.layers import SpikingDense
        >>> layer = SpikingDense(2, kernel_initializer="ones")
        >>> layer.build((None, 3))
        >>> spikes = np.array([[1.0, 0.0, 1.0]], "float32")
        >>> np.asarray(layer.reduced_precision_current(spikes, "bfloat16")).tolist()
        [[2.0, 2.0]]
        """
        del dtype
        return self.compute_current(inputs)

    def connectivity(self, inputs):
        raise NotImplementedError

    def fanout_maps(self):
        """Per input: how many nonzero synapses leave each input position.

        The connectivity map is linear, so its gradient with respect to the
        input is exactly the fan-out: it accounts for strides, padding,
        dilation and pruned (zero) weights without a second convolution per
        step. Computed once per simulation call, outside the time loop.

        Returns:
            A list with one tensor per input, each shaped `(1, *input_shape[1:])`.
        """
        shapes = self.synaptic_input_shape
        multi = _is_shape_list(shapes)
        probes = [
            tf.zeros([1] + list(shape[1:]), self.compute_dtype)
            for shape in (shapes if multi else [shapes])
        ]
        with tf.GradientTape() as tape:
            tape.watch(probes)
            total = tf.reduce_sum(self.connectivity(probes if multi else probes[0]))
        return [tf.stop_gradient(g) for g in tape.gradient(total, probes)]

    def _neuron_config(self):
        return {
            "neuron": neurons_lib.serialize(self.neuron),
            "threshold": self.threshold_value,
        }


@keras.saving.register_keras_serializable(package="keras_snn")
class Clip(keras.constraints.Constraint):
    """Keep a variable within [min_value, max_value] (None: unbounded) after each update."""

    def __init__(self, min_value=None, max_value=None):
        self.min_value, self.max_value = min_value, max_value

    def __call__(self, w):
        if self.min_value is not None:
            w = keras.ops.maximum(w, self.min_value)
        if self.max_value is not None:
            w = keras.ops.minimum(w, self.max_value)
        return w

    def get_config(self):
        return {"min_value": self.min_value, "max_value": self.max_value}


def _is_shape_list(shapes):
    return isinstance(shapes, (list, tuple)) and len(shapes) > 0 and isinstance(
        shapes[0], (list, tuple)
    )


def _first(inputs):
    return inputs[0] if isinstance(inputs, (list, tuple)) else inputs


def nonzero_mask(kernel):
    """1 where a weight is nonzero, else 0 (the pruned-synapse mask)."""
    kernel = tf.convert_to_tensor(kernel)
    return tf.cast(tf.not_equal(kernel, 0), kernel.dtype)
