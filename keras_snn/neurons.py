"""Spiking neuron models: the per-step update rules as pure TensorFlow functions.

Every rule works per element and per timestep on the weighted input current
`z(t) = W . s_in(t) + b` and returns `(spikes, new_state)`. The maths knows
nothing about Keras: the spiking layers own the threshold (and leak) variables
and pass them in, so the same rule serves inference, conversion and training.
Keras is used only to serialize neurons and surrogates: both are registered
with `keras.saving.register_keras_serializable` and saved with
`keras.saving.serialize_keras_object`, so a custom subclass registered the same
way saves and loads with the model.

The equations follow "A High Performance and Low Latency Deep Spiking Neural
Networks Conversion Framework" (the low-latency conversion paper):

- IF, reset by subtraction: `V' = V + z`; `s = A(floor(V'/theta))`; `V = V' - theta*s`.
- Buffered IF (eqs. 12-13): also keeps the net number of spikes emitted `B`. A
  negative spike undoes an earlier over-fire when `V' < 0` and `B >= 1`.
- Multi-bit spikes (eqs. 2-3): `A(n) = 2**floor(log2(min(n, spike_max)))` for
  `n >= 1`, else 0. `spike_max=1` is the ordinary binary neuron.
- LIF: `V' = leak*V + z`, then as IF.
- Bursts (burst spikes, Li & Zeng, IJCAI 2022; `BufferedIF(burst=...)`,
  `SignedIF(burst=...)`): a step may carry up to `burst * spike_max` spikes,
  any whole number the membrane pays for, so input that arrives late is not
  left in the membrane at the end of a short run. A buffered neuron's net
  count after t steps stays at most `t * spike_max`, its ceiling.

The small neuron classes (`IF`, `BufferedIF`, `LIF`) bundle a rule with its
options (spike_max, initial membrane, reset) behind one interface that the
layers use: `initial_state(shape, threshold)` and
`step(current, state, threshold, **parameters) -> (spikes, state)`.
"""

import keras
import tensorflow as tf


def multibit_spike_count(n, spike_max):
    """The adjust function A of the low-latency conversion paper's eq. 3, applied elementwise.

    `A(n) = 2**floor(log2(min(n, spike_max)))` for `n >= 1` and 0 otherwise, so
    a step carries a power-of-two number of spikes no larger than `spike_max`.
    Built from comparisons against the exact powers of two rather than from
    `log2`, whose float rounding would misplace exact powers (log2(4) = 1.99...).

    Args:
        n: float tensor of whole numbers (spikes the membrane could pay for).
        spike_max: positive Python int, the largest spike a step may carry.

    Returns:
        A tensor like `n` holding 0 or a power of two `<= spike_max`.
    """
    count = tf.zeros_like(n)
    power = 1
    while power <= spike_max:
        count = tf.where(n >= power, tf.cast(power, n.dtype), count)
        power *= 2
    return count


class Surrogate:
    """A surrogate derivative of the spike function for training (BPTT).

    The spike count `A(floor(u))` of the normalised potential `u = V'/theta`
    has zero derivative almost everywhere; training replaces it by
    `derivative(u)`. Gradients reach the membrane (so the weights and the
    leak) and the threshold through `u`.

    A custom surrogate implements `derivative` and, if it takes arguments,
    `get_config`; decorated with `keras.saving.register_keras_serializable()`
    it saves and loads with the model.

    Example:

    >>> import keras
    >>> import tensorflow as tf
    >>> @keras.saving.register_keras_serializable(package="docs")
    ... class Box(Surrogate):
    ...     def __init__(self, width=0.5):
    ...         self.width = width
    ...     def derivative(self, u):
    ...         return tf.cast(tf.abs(u - 1.0) < self.width, u.dtype)
    ...     def get_config(self):
    ...         return {"width": self.width}
    >>> neuron = IF(surrogate=Box(0.25))
    >>> deserialize(serialize(neuron)).surrogate.width
    0.25
    """

    def derivative(self, u):
        raise NotImplementedError

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return _repr(self)

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self):
        return hash((type(self).__name__, repr(sorted(self.get_config().items()))))


def _repr(obj):
    # Config keys are attribute names: show the objects (a surrogate), not their configs.
    args = ", ".join(f"{k}={getattr(obj, k, v)!r}" for k, v in obj.get_config().items())
    return f"{type(obj).__name__}({args})"


@keras.saving.register_keras_serializable(package="keras_snn")
class PiecewiseLinear(Surrogate):
    """DIET-SNN's surrogate: `slope * max(0, 1 - |u - 1| / width)`, peaked at threshold.

    `slope=0` stops every gradient through the spikes.

    Example:

    >>> import tensorflow as tf
    >>> [float(v) for v in PiecewiseLinear(slope=0.5).derivative(tf.constant([0.5, 1.0, 3.0]))]
    [0.25, 0.5, 0.0]
    """

    def __init__(self, slope=1.0, width=1.0):
        if float(slope) < 0 or float(width) <= 0:
            raise ValueError(
                f"PiecewiseLinear needs slope >= 0 and width > 0; received {slope!r}, {width!r}."
            )
        self.slope, self.width = float(slope), float(width)

    def derivative(self, u):
        return self.slope * tf.maximum(0.0, 1.0 - tf.abs(u - 1.0) / self.width)

    def get_config(self):
        return {"slope": self.slope, "width": self.width}


@keras.saving.register_keras_serializable(package="keras_snn")
class FastSigmoid(Surrogate):
    """SuperSpike's surrogate: `1 / (1 + slope * |u - 1|)**2`."""

    def __init__(self, slope=10.0):
        if float(slope) <= 0:
            raise ValueError(f"FastSigmoid needs slope > 0; received {slope!r}.")
        self.slope = float(slope)

    def derivative(self, u):
        return 1.0 / tf.square(1.0 + self.slope * tf.abs(u - 1.0))

    def get_config(self):
        return {"slope": self.slope}


_SURROGATE_ALIASES = {"piecewise_linear": PiecewiseLinear, "fast_sigmoid": FastSigmoid}
# Files saved before surrogates went through Keras serialization hold
# {"class_name": ..., "config": ...} with the bare class name of a built-in.
_LEGACY_SURROGATES = {"PiecewiseLinear": PiecewiseLinear, "FastSigmoid": FastSigmoid}


def _is_keras_serialized(config):
    return "registered_name" in config or "module" in config


def _check_registered(config, base, kind):
    """Check that a Keras-serialized config names a registered subclass of `base`.

    Looks in the classes registered with `keras.saving.register_keras_serializable`
    and in any `custom_objects` scope (`keras.saving.load_model(custom_objects=...)`),
    where `keras.saving.deserialize_keras_object` will look; raises ValueError
    naming the class and the fix rather than Keras's generic TypeError.
    """
    name = config.get("registered_name") or config.get("class_name")
    cls = keras.saving.get_registered_object(name)
    if cls is not None and not (isinstance(cls, type) and issubclass(cls, base)):
        raise ValueError(
            f"{name!r} names {cls!r}, which is not a keras_snn.neurons.{base.__name__}; "
            f"a {kind} must subclass it."
        )
    if cls is None:
        raise ValueError(
            f"Unknown {kind} class {name!r}. Decorate a custom {kind} class with "
            "@keras.saving.register_keras_serializable() (or pass it in custom_objects "
            "when loading)."
        )


def get_surrogate(identifier):
    """Resolve a surrogate from an instance, an alias, a serialized dict or None.

    Dicts come from `keras.saving.serialize_keras_object` (custom classes must
    be registered with `keras.saving.register_keras_serializable`) or, for the
    built-in surrogates, from files saved by earlier keras_snn versions
    (`{"class_name": "PiecewiseLinear", "config": {...}}`).
    """
    if identifier is None or isinstance(identifier, Surrogate):
        return identifier
    if isinstance(identifier, dict):
        if _is_keras_serialized(identifier):
            _check_registered(identifier, Surrogate, "surrogate")
            return keras.saving.deserialize_keras_object(identifier)
        legacy = _LEGACY_SURROGATES.get(identifier.get("class_name"))
        if legacy is not None:
            return legacy.from_config(identifier.get("config", {}))
    if isinstance(identifier, str) and identifier in _SURROGATE_ALIASES:
        return _SURROGATE_ALIASES[identifier]()
    if isinstance(identifier, str) and identifier in _LEGACY_SURROGATES:
        return _LEGACY_SURROGATES[identifier]()
    raise ValueError(
        f"Unknown surrogate {identifier!r}: use one of {sorted(_SURROGATE_ALIASES)}, a "
        "keras_snn.neurons.Surrogate, or None (no gradient through spikes)."
    )


def _serialize_surrogate(surrogate):
    if surrogate is None:
        return None
    return keras.saving.serialize_keras_object(surrogate)


def _spike_count(potential, threshold, spike_max):
    if spike_max == 1:
        # V' >= theta exactly when floor(V'/theta) >= 1 (IEEE division is
        # monotonic), without the division and the floor.
        return tf.cast(potential >= threshold, potential.dtype)
    return multibit_spike_count(tf.floor(potential / threshold), spike_max)


def fire(potential, threshold, spike_max, surrogate=None):
    """Spike count `A(floor(V'/theta))`, with a surrogate gradient when given.

    With a surrogate, the gradient is `surrogate.derivative(u)` with respect
    to `u = V'/theta`, passed on to the membrane (`1/theta`) and to the scalar
    threshold (`-u/theta`, summed); `u` is only computed in the backward pass.
    """
    return _with_surrogate(
        lambda potential, threshold: _spike_count(potential, threshold, spike_max),
        potential, threshold, surrogate,
    )


def fire_burst(potential, threshold, largest, surrogate=None, smallest=0.0):
    """Spike count `clip(floor(V'/theta), smallest, largest)`: a burst of any size.

    `largest` and `smallest` may be tensors (per-neuron bounds). The gradient
    is `fire`'s.

    Example:

    >>> import tensorflow as tf
    >>> fire_burst(tf.constant([0.4, 2.5, 7.0, -1.5]), 1.0, 4.0).numpy().tolist()
    [0.0, 2.0, 4.0, 0.0]
    """
    return _with_surrogate(
        lambda potential, threshold: tf.clip_by_value(
            tf.floor(potential / threshold), smallest, largest),
        potential, threshold, surrogate,
    )


def _with_surrogate(count, potential, threshold, surrogate):
    """`count(potential, threshold)`, its gradient `surrogate.derivative(V'/theta)` if given."""
    if surrogate is None:
        return count(potential, threshold)
    threshold = tf.convert_to_tensor(threshold, potential.dtype)

    @tf.custom_gradient
    def spike(potential, threshold):
        def grad(upstream):
            u = potential / threshold
            d_u = upstream * surrogate.derivative(u)
            return d_u / threshold, tf.reduce_sum(-d_u * u / threshold)

        return count(potential, threshold), grad

    return spike(potential, threshold)


def reset_by_subtraction(membrane, spikes, threshold):
    """Soft reset: remove `threshold` per emitted spike (keeps the residue)."""
    return membrane - threshold * spikes


def reset_to_zero(membrane, spikes, threshold):
    """Hard reset: a neuron that fired restarts from 0 (the NIR neuron model)."""
    del threshold  # The reset value does not depend on the threshold.
    return tf.where(tf.not_equal(spikes, 0), tf.zeros_like(membrane), membrane)


_RESETS = {"subtract": reset_by_subtraction, "zero": reset_to_zero}


def integrate_and_fire(
    membrane, current, threshold, spike_max=1, reset=reset_by_subtraction, surrogate=None
):
    """One step of the non-leaky IF neuron (low-latency conversion paper, eqs. 4-5, 2-3).

    Args:
        membrane: membrane potential `V(t-1)`.
        current: input current `z(t)`.
        threshold: firing threshold `theta > 0` (broadcastable).
        spike_max: largest multi-bit spike.
        reset: `reset_by_subtraction` or `reset_to_zero`.
        surrogate: a `Surrogate` for training, or None.

    Returns:
        `(spikes, membrane)`: spikes in {0, 1, 2, 4, ..} and `V(t)`.
    """
    potential = membrane + current
    spikes = fire(potential, threshold, spike_max, surrogate)
    return spikes, reset(potential, spikes, threshold)


def leaky_integrate_and_fire(
    membrane, current, threshold, leak, spike_max=1, reset=reset_by_subtraction, surrogate=None
):
    """One step of the LIF neuron: `V' = leak * V + z`, then as IF (DIET-SNN)."""
    return integrate_and_fire(leak * membrane, current, threshold, spike_max, reset, surrogate)


def buffered_integrate_and_fire(
    membrane, buffer, current, threshold, spike_max=1, surrogate=None, burst=1, ceiling=None
):
    """One step of the buffered IF neuron with negative spikes (low-latency paper, eqs. 12-13).

    `buffer` holds the net number of spikes emitted so far (the paper's `V^b`
    divided by the threshold, which keeps it an exact whole number).

    Positive spikes follow IF. When `V' < 0` the neuron has emitted
    `ceil(-V'/theta)` spikes more than its input pays for, so it emits that many
    negative spikes (power-of-two sized, at most `spike_max`), never more than
    `buffer`. With `spike_max=1` this is exactly eq. 13's `-1 if V' < 0 and
    B >= theta`; eq. 2's `floor(V'/-theta)` would emit nothing for
    `-theta < V' < 0` and contradict eq. 13, so the ceiling is used.
    Positive spikes fire at `V' >= theta` as in eq. 5 (eq. 13 writes `>`); with
    `>` a neuron driven at exactly its ceiling would lose a spike, and the
    over-fire argument (A.3) only needs `V' < 0`. In training the surrogate
    gradient passes through the positive spikes only.

    With `burst > 1` (burst spikes, Li & Zeng, IJCAI 2022) a step carries up
    to `burst * spike_max` spikes of either sign, as many as the membrane pays
    for (any whole number), so charge that arrived late leaves in one step
    instead of lagging behind. `ceiling` (required then) is the most net
    spikes the steps so far allow, `t * spike_max` after `t` steps, one value
    per sample (any shape that broadcasts against the membrane; float32 keeps
    it exact for 2**24 steps): the neuron never runs ahead of `spike_max` per
    step on average, so a clipped activation (ReLU6, a percentile ceiling)
    stays clipped.

    Returns:
        `(spikes, (membrane, buffer))`, or `(spikes, (membrane, buffer,
        ceiling))` with bursts, with spikes in {.., -2, -1, 0, 1, 2, ..}.
    """
    potential = membrane + current
    if burst == 1:
        positive = fire(potential, threshold, spike_max, surrogate)
        # ceil(-V'/theta) >= 1 exactly when V' < 0, so no separate sign test.
        overfired = tf.minimum(tf.math.ceil(-potential / threshold), buffer)
        negative = tf.stop_gradient(multibit_spike_count(overfired, spike_max))
        spikes = positive - negative
        return spikes, (potential - threshold * spikes, buffer + spikes)
    # One clip of floor(V'/theta): up to the ceiling (positive spikes) or
    # down to -buffer (negative ones: ceil(-V'/theta) = -floor(V'/theta)),
    # both within a burst. Fewer kernels than the two counts above, per step.
    # The ceiling is one number per sample, not per neuron: a state tensor of
    # the neurons' size would cost the update a quarter more memory traffic.
    largest = float(burst * spike_max)
    ceiling = tf.stop_gradient(ceiling) + spike_max  # bounds, not paths for gradients
    held = tf.stop_gradient(buffer)
    room = tf.cast(ceiling - tf.cast(held, ceiling.dtype), held.dtype)
    low = -tf.minimum(held, largest)
    spikes = fire_burst(potential, threshold, tf.minimum(room, largest), surrogate, low)
    return spikes, (potential - threshold * spikes, buffer + spikes, ceiling)


def _check_spike_count(name, value, one_means):
    """`value` if an int >= 1 (spikes per step), else a ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"`{name}` must be an integer >= 1 (1 = {one_means}); received {value!r}."
        )
    return value


def _check_initial_membrane(initial_membrane):
    value = float(initial_membrane)
    if not 0.0 <= value < 1.0:
        raise ValueError(
            "`initial_membrane` is a fraction of the threshold in [0, 1) "
            f"(0.5 halves the rounding error); received {initial_membrane!r}."
        )
    return value


def _resolve_reset(reset):
    if reset not in _RESETS:
        raise ValueError(f"`reset` must be one of {sorted(_RESETS)}; received {reset!r}.")
    return _RESETS[reset]


class Neuron:
    """Interface of a spiking neuron model used by every spiking layer.

    A neuron turns the per-step input current into spikes and carries state
    between steps. Subclasses set `state_names` (one tensor per name, each
    shaped like the current or broadcasting against it, as `BufferedIF`'s
    per-sample ceiling) and `parameters` (per-layer scalars the layer
    stores as variables, with their initial values, e.g. LIF's leak).

    Args:
        spike_max: largest number of spikes one step may carry (multi-bit
            spikes, low-latency conversion paper, eqs. 2-3); 1 is the ordinary binary neuron.
        initial_membrane: initial membrane potential as a fraction of the
            threshold, in [0, 1). 0.5 centres the rounding error.
        surrogate: surrogate derivative of the spike for training:
            "piecewise_linear" (default), "fast_sigmoid", a `Surrogate`, or
            None (no gradient through spikes). Inference is unaffected.
    """

    state_names = ("membrane",)
    emits_negative_spikes = False

    def __init__(self, spike_max=1, initial_membrane=0.0, surrogate="piecewise_linear"):
        self.spike_max = _check_spike_count("spike_max", spike_max, "binary spikes")
        self.initial_membrane = _check_initial_membrane(initial_membrane)
        self.surrogate = get_surrogate(surrogate)

    @property
    def parameters(self):
        """Dict of per-layer parameter name -> initial value (none by default)."""
        return {}

    @property
    def largest_spike(self):
        """The most spikes one step may carry, of either sign (`spike_max`; more with bursts).

        >>> (IF(spike_max=2).largest_spike, BufferedIF(spike_max=2, burst=4).largest_spike)
        (2, 8)
        """
        return self.spike_max

    def initial_state(self, shape, threshold, dtype="float32"):
        """State at rest: membrane at `initial_membrane * threshold`, the rest 0."""
        membrane = tf.fill(shape, tf.cast(self.initial_membrane, dtype)) * tf.cast(
            threshold, dtype
        )
        zeros = [tf.zeros(shape, dtype) for _ in self.state_names[1:]]
        return (membrane, *zeros)

    def step(self, current, state, threshold, **parameters):
        """Advance one timestep. Returns `(spikes, new_state)`."""
        raise NotImplementedError

    def get_config(self):
        return {
            "spike_max": self.spike_max,
            "initial_membrane": self.initial_membrane,
            "surrogate": _serialize_surrogate(self.surrogate),
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return _repr(self)

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self):
        return hash((type(self).__name__, repr(sorted(self.get_config().items()))))


class IF(Neuron):
    """Non-leaky integrate-and-fire neuron (the conversion neuron).

    `V' = V + z`, `s = A(floor(V'/theta))`, then reset by subtraction
    (`V = V' - theta*s`, default) or to zero.

    Args:
        spike_max: largest multi-bit spike (1 = binary).
        initial_membrane: initial membrane as a fraction of the threshold.
        reset: "subtract" (default, keeps the residue) or "zero".

    Example:

    >>> import tensorflow as tf
    >>> neuron = IF()
    >>> state = neuron.initial_state((1,), threshold=1.0)
    >>> spikes, state = neuron.step(tf.constant([1.5]), state, threshold=1.0)
    >>> float(spikes[0]), float(state[0][0])
    (1.0, 0.5)
    """

    def __init__(
        self, spike_max=1, initial_membrane=0.0, reset="subtract", surrogate="piecewise_linear"
    ):
        super().__init__(spike_max, initial_membrane, surrogate)
        self.reset = reset
        self._reset_fn = _resolve_reset(reset)

    def step(self, current, state, threshold, **parameters):
        spikes, membrane = integrate_and_fire(
            state[0], current, threshold, self.spike_max, self._reset_fn, self.surrogate
        )
        return spikes, (membrane,)

    def get_config(self):
        return {**super().get_config(), "reset": self.reset}


class LIF(IF):
    """Leaky integrate-and-fire neuron with a per-layer leak (DIET-SNN).

    `V' = leak*V + z`, then fire and reset as IF. The leak is a per-layer
    parameter: the layer stores it as a variable initialised to `leak`.
    `leak=1` is exactly IF.

    Args:
        leak: initial leak factor in (0, 1].
        spike_max, initial_membrane, reset, surrogate: as for `IF`.

    Example:

    >>> import tensorflow as tf
    >>> neuron = LIF(leak=0.5)
    >>> state = neuron.initial_state((1,), threshold=1.0)
    >>> _, state = neuron.step(tf.constant([0.8]), state, threshold=1.0, leak=0.5)
    >>> _, state = neuron.step(tf.constant([0.0]), state, threshold=1.0, leak=0.5)
    >>> round(float(state[0][0]), 3)  # 0.8, then 0.5 * 0.8
    0.4
    """

    def __init__(
        self, leak=1.0, spike_max=1, initial_membrane=0.0, reset="subtract",
        surrogate="piecewise_linear",
    ):
        super().__init__(spike_max, initial_membrane, reset, surrogate)
        if not 0.0 < float(leak) <= 1.0:
            raise ValueError(f"`leak` must be in (0, 1]; received {leak!r}.")
        self.leak = float(leak)

    @property
    def parameters(self):
        return {"leak": self.leak}

    def step(self, current, state, threshold, leak=None, **parameters):
        leak = self.leak if leak is None else leak
        spikes, membrane = leaky_integrate_and_fire(
            state[0], current, threshold, leak, self.spike_max, self._reset_fn, self.surrogate
        )
        return spikes, (membrane,)

    def get_config(self):
        return {"leak": self.leak, **super().get_config()}


class BufferedIF(Neuron):
    """IF neuron with a spike buffer and negative spikes (low-latency conversion paper, A.3).

    Keeps the net spike count `B`; when the membrane goes negative after an
    over-fire it emits negative spikes (at most `B`) so that, under the paper's
    constant-input premise, the count never ends above the ideal
    `floor(max(V_a/theta, 0))`.

    With `burst > 1` a step may carry up to `burst * spike_max` spikes of
    either sign, as many as the membrane pays for, while the net count after
    t steps stays at most `t * spike_max` (the ceiling): a neuron whose input
    arrives late catches up instead of ending with unspent charge. It keeps
    one more state, the ceiling, one float32 number per sample.

    Args:
        spike_max: largest multi-bit spike, positive or negative; with
            `burst=1` (default) a power of two, as eq. 3 makes it.
        initial_membrane: initial membrane as a fraction of the threshold.
        surrogate: as for `IF` (through the positive spikes).
        burst: the most spikes one step may carry, in units of `spike_max`
            (burst spikes, Li & Zeng, IJCAI 2022); 1 is the paper's neuron.

    Example:

    >>> import tensorflow as tf
    >>> neuron = BufferedIF()
    >>> state = neuron.initial_state((1,), threshold=1.0)
    >>> spikes = []
    >>> for current in (1.0, -0.5):  # fires, then the input turns out smaller
    ...     s, state = neuron.step(tf.constant([current]), state, threshold=1.0)
    ...     spikes.append(float(s[0]))
    >>> spikes
    [1.0, -1.0]
    """

    state_names = ("membrane", "buffer")
    emits_negative_spikes = True

    def __init__(self, spike_max=1, initial_membrane=0.0, surrogate="piecewise_linear", burst=1):
        super().__init__(spike_max, initial_membrane, surrogate)
        self.burst = _check_spike_count("burst", burst, "at most spike_max per step")
        if burst > 1:  # the ceiling is state only where there are bursts
            self.state_names = type(self).state_names + ("ceiling",)

    @property
    def largest_spike(self):
        return self.burst * self.spike_max

    def initial_state(self, shape, threshold, dtype="float32"):
        """As `Neuron`'s; with bursts the ceiling is `(batch, 1, ..)`, float32, 0."""
        state = super().initial_state(shape, threshold, dtype)
        if self.burst == 1:
            return state
        per_sample = tf.concat([tf.shape(state[0])[:1], tf.ones_like(tf.shape(state[0])[1:])], 0)
        return (*state[:2], tf.zeros(per_sample, tf.float32))

    def step(self, current, state, threshold, **parameters):
        membrane, buffer, *ceiling = state
        return buffered_integrate_and_fire(
            membrane, buffer, current, threshold, self.spike_max, self.surrogate,
            self.burst, ceiling[0] if ceiling else None,
        )

    def get_config(self):
        return {**super().get_config(), "burst": self.burst}


_NEURONS = {}  # class name -> Neuron subclass (also reads files saved before Keras serialization)
_ALIASES = {}  # lower-case short name -> Neuron subclass


def register_neuron(cls=None, *, name=None):
    """Class decorator: make a `Neuron` subclass known by name.

    The class becomes available to `get` (and so to the spiking layers'
    `neuron=` argument and to `convert_model(neuron=...)`) under its class
    name and, if given, the short `name`. A class not yet registered with
    `keras.saving.register_keras_serializable` is registered there too
    (package "Custom", Keras's default), so layers using it save and load.

    Args:
        cls: the `Neuron` subclass (when used as a bare decorator).
        name: optional short alias, matched case-insensitively (e.g. "if").

    Returns:
        The class, unchanged.

    Raises:
        TypeError: if `cls` is not a `Neuron` subclass.

    Example:

    >>> @register_neuron(name="half_if")
    ... class HalfIF(IF):
    ...     def step(self, current, state, threshold, **parameters):
    ...         return super().step(0.5 * current, state, threshold, **parameters)
    >>> type(get("half_if")).__name__
    'HalfIF'
    """

    def decorator(cls):
        if not (isinstance(cls, type) and issubclass(cls, Neuron)):
            raise TypeError(f"register_neuron expects a Neuron subclass; received {cls!r}.")
        if keras.saving.get_registered_name(cls) == cls.__name__:  # not yet known to Keras
            keras.saving.register_keras_serializable()(cls)
        _NEURONS[cls.__name__] = cls
        if name is not None:
            _ALIASES[str(name).lower()] = cls
        return cls

    return decorator if cls is None else decorator(cls)


for _cls, _alias in ((IF, "if"), (LIF, "lif"), (BufferedIF, "buffered")):
    keras.saving.register_keras_serializable(package="keras_snn")(_cls)
    register_neuron(_cls, name=_alias)
_ALIASES["buffered_if"] = BufferedIF


@register_neuron
@keras.saving.register_keras_serializable(package="keras_snn")
class SignedIF(Neuron):
    """IF neuron with symmetric positive and negative spikes, for linear values.

    `V' = V + z`; `s = A(floor(V'/theta))` when `V' >= theta`,
    `s = -A(floor(-V'/theta))` when `V' <= -theta`, else 0; `V = V' - theta*s`.
    Under a constant input the spike count after T steps is `T*z/theta`
    rounded towards zero (within one spike), so the signed rate carries a layer
    with no ReLU (a linear bottleneck, a projection, a residual sum without
    activation); the converter takes its ceiling from `|activation|`.

    With `rounding="nearest"` it fires at half the threshold instead:
    `s = A(floor(V'/theta + 1/2))` when `V' >= theta/2`, the negative of that
    for `-V'` when `V' <= -theta/2`, and the count is `T*z/theta` rounded to
    the nearest whole number, for both signs alike. Started at 0, this is the
    signed form of an IF neuron started at theta/2: towards zero, every value
    loses half a spike on average, which at a few steps shrinks a signed
    layer's output (the MobileNetV2-style net in benchmarks/RESULTS.md), and
    `convert_model` builds its signed neurons this way.

    Args:
        spike_max: largest multi-bit spike, positive or negative.
        initial_membrane: initial membrane as a fraction of the threshold.
        surrogate: as for `IF` (through the spikes of either sign).
        rounding: "toward_zero" (default: fire at +-theta) or "nearest"
            (fire at +-theta/2).
        burst: the most spikes of either sign one step may carry, in units of
            `spike_max` (any whole number up to it, as the membrane pays for);
            1 (default) is `spike_max` as a power of two. A linear value has
            no ceiling to keep, so there is no limit per run. `convert_model`
            keeps 1 (with calibration, bursts here lost 1 point on the
            MobileNetV2-style net of benchmarks/RESULTS.md).

    Example:

    >>> import tensorflow as tf
    >>> neuron = SignedIF()
    >>> state = neuron.initial_state((2,), threshold=1.0)
    >>> counts = tf.zeros((2,))
    >>> for _ in range(4):
    ...     s, state = neuron.step(tf.constant([0.5, -0.75]), state, threshold=1.0)
    ...     counts += s
    >>> counts.numpy().tolist()
    [2.0, -3.0]
    """

    emits_negative_spikes = True
    signed = True  # represents the identity, not a ReLU

    def __init__(self, spike_max=1, initial_membrane=0.0, surrogate="piecewise_linear",
                 rounding="toward_zero", burst=1):
        super().__init__(spike_max, initial_membrane, surrogate)
        if rounding not in _SIGNED_ROUNDINGS:
            raise ValueError(
                f"`rounding` must be one of {_SIGNED_ROUNDINGS}; received {rounding!r}."
            )
        self.rounding = rounding
        self.burst = _check_spike_count("burst", burst, "at most spike_max per step")

    @property
    def largest_spike(self):
        return self.burst * self.spike_max

    def step(self, current, state, threshold, **parameters):
        potential = state[0] + current
        if self.rounding == "nearest":  # both signs fire at half the threshold
            offset = 0.5 * tf.convert_to_tensor(threshold, potential.dtype)
            up, down = potential + offset, offset - potential
        else:
            up, down = potential, -potential
        if self.burst == 1:
            positive = fire(up, threshold, self.spike_max, self.surrogate)
            negative = fire(down, threshold, self.spike_max, self.surrogate)
        else:
            largest = float(self.largest_spike)
            positive = fire_burst(up, threshold, largest, self.surrogate)
            negative = fire_burst(down, threshold, largest, self.surrogate)
        spikes = positive - negative
        return spikes, (potential - threshold * spikes,)

    def get_config(self):
        return {**super().get_config(), "rounding": self.rounding, "burst": self.burst}


_SIGNED_ROUNDINGS = ("toward_zero", "nearest")


def serialize(neuron):
    """Neuron (or None) -> JSON-able dict (or None) for layer configs.

    The dict is `keras.saving.serialize_keras_object`'s, so a custom neuron
    class registered with `keras.saving.register_keras_serializable` (or
    `register_neuron`) loads back with the model.
    """
    if neuron is None:
        return None
    return keras.saving.serialize_keras_object(neuron)


def deserialize(config):
    """Inverse of `serialize`; also reads the `{"class_name", "config"}` dicts of older files.

    Raises:
        ValueError: if the class is not registered (or not a `Neuron`).
    """
    if config is None:
        return None
    if _is_keras_serialized(config):
        _check_registered(config, Neuron, "neuron")
        return keras.saving.deserialize_keras_object(config)
    name = config.get("class_name")
    if name not in _NEURONS:
        raise ValueError(
            f"Unknown neuron class {name!r}; known: {sorted(_NEURONS)}. "
            "Register custom neurons with keras_snn.neurons.register_neuron."
        )
    return _NEURONS[name].from_config(config.get("config", {}))


def get(identifier):
    """Resolve a neuron from an instance, a name or a serialized dict.

    Names: the aliases "if", "lif", "buffered" (any case), the class names
    ("IF", "SignedIF", ...), those of classes added with `register_neuron`,
    and Keras registered names ("keras_snn>IF"). A name gives the class with
    its default arguments. `None` means a non-spiking layer (it passes its
    current on, e.g. into a readout).

    Raises:
        ValueError: for an unknown name or object.

    Example:

    >>> get("LIF")
    LIF(leak=1.0, spike_max=1, initial_membrane=0.0, surrogate=PiecewiseLinear(...), ...)
    """
    if identifier is None or isinstance(identifier, Neuron):
        return identifier
    if isinstance(identifier, dict):
        return deserialize(identifier)
    if isinstance(identifier, str):
        cls = _ALIASES.get(identifier.lower()) or _NEURONS.get(identifier)
        if cls is None:
            registered = keras.saving.get_registered_object(identifier)
            if isinstance(registered, type) and issubclass(registered, Neuron):
                cls = registered
        if cls is not None:
            return cls()
    raise ValueError(
        f"Unknown neuron {identifier!r}: use one of {sorted(_ALIASES)} or a registered "
        f"class name ({', '.join(sorted(_NEURONS))}), a keras_snn.neurons.Neuron instance, "
        "or None for a non-spiking layer. Register a custom neuron class with "
        "keras_snn.neurons.register_neuron."
    )
