"""QReLU: the quantised clipped ReLU with a learnable bound (eq. 1; QCFS).

Eq. 1 is that of "A High Performance and Low Latency Deep Spiking Neural
Networks Conversion Framework" (the low-latency conversion paper).

An ANN trained with QReLU converts to an SNN that matches it in about
`levels` timesteps: the learned bound is the layer's activation ceiling, and
each quantisation level is one spike. With `shift=0.5` it is the QCFS
activation (Bu et al., ICLR 2022), whose SNN starts its membrane at half the
threshold and agrees with the ANN in expectation at every timestep.
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_snn")
class QReLU(keras.layers.Layer):
    """Quantised clipped ReLU with a learnable upper bound lambda_b and a shift phi.

    `QReLU(x) = clip(floor(x * P / lambda_b + phi), 0, P) * lambda_b / P`,
    with `P = levels` and `phi = shift`:

    - `shift=0` is the low-latency conversion paper's eq. 1: 0 for
      `x <= 0`, `lambda_b` for `x >= lambda_b`,
      `floor(x * P / lambda_b) * lambda_b / P` in between (the quantised
      value is never above the clipped ReLU).
    - `shift=0.5` is QCFS (quantization clip-floor-shift, Bu et al., ICLR
      2022): it rounds to the nearest level, so the quantisation error has
      mean zero.

    The shift fixes how the model converts. An IF neuron with reset by
    subtraction, threshold theta (one level) and initial membrane
    `V(0) = phi * theta`, driven by a constant current `z`, has emitted
    `clip(floor(T z / theta + phi), 0, T)` spikes after T steps: at
    `T = levels` exactly the QReLU's level, and at every other T the same
    rounding rule at resolution 1/T. `convert_model` therefore starts a
    shifted QReLU layer's membrane at `shift` times its threshold (the
    default `initial_membrane="auto"`; "shift" does it for `shift=0` too).
    With `phi = 0.5` the rounding error of both the ANN and the SNN has mean
    zero, so they agree in expectation at every T (QCFS Theorem 2); with
    `phi = 0` the SNN's rate is on average `theta / (2T)` under its input,
    the ANN's `lambda_b / (2P)`, and they agree only at `T = P`. ("auto"
    starts eq. 1 layers near theta/2 instead, 0.5, 0.45 or 0.4 of it as its
    calibration chooses: on deep networks that was measured far better,
    benchmarks/RESULTS.md.)

    Gradients use a straight-through estimator: the gradient of the clipped
    ReLU, 1 for `0 < x < lambda_b`; the bound gets the gradient of the clip,
    1 where `x >= lambda_b` (as in PACT). The shift is a constant.

    Args:
        levels: number of quantisation steps P (>= 1); the SNN needs about
            `levels / spike_max` timesteps to match the ANN.
        initial_bound: initial lambda_b (> 0).
        bound_learning_rate_scale: the bound is stored as
            `lambda_b / scale` and multiplied back, so an optimiser's step on
            it moves lambda_b `scale` times as far for Adam-like optimisers
            (and `scale**2` for plain SGD). The paper trains the bound with a
            smaller rate (0.1x); note that a bound that barely moves stays
            near its initial value.
        trainable_bound: learn the bound (default) or keep it fixed.
        shift: phi in [0, 1): 0 (default) is eq. 1 (floor), 0.5 is QCFS
            (round to the nearest level). Configs saved without it load as 0.

    Input shape: any. Output shape: the same.

    Example:

    >>> import numpy as np
    >>> x = np.array([-1.0, 0.3, 0.5, 1.2, 3.0], "float32")
    >>> np.asarray(QReLU(levels=4, initial_bound=2.0)(x)).tolist()
    [0.0, 0.0, 0.5, 1.0, 2.0]
    >>> np.asarray(QReLU(levels=4, initial_bound=2.0, shift=0.5)(x)).tolist()
    [0.0, 0.5, 0.5, 1.0, 2.0]
    """

    def __init__(
        self,
        levels=8,
        initial_bound=1.0,
        bound_learning_rate_scale=1.0,
        trainable_bound=True,
        shift=0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
            raise ValueError(f"`levels` must be an int >= 1; received {levels!r}.")
        if not float(initial_bound) > 0:
            raise ValueError(f"`initial_bound` must be > 0; received {initial_bound!r}.")
        if not float(bound_learning_rate_scale) > 0:
            raise ValueError(
                f"`bound_learning_rate_scale` must be > 0; received {bound_learning_rate_scale!r}."
            )
        if isinstance(shift, bool) or not 0.0 <= float(shift) < 1.0:
            raise ValueError(
                f"`shift` (phi) must be in [0, 1): 0 is eq. 1, 0.5 is QCFS; received {shift!r}."
            )
        self.levels = levels
        self.initial_bound = float(initial_bound)
        self.bound_learning_rate_scale = float(bound_learning_rate_scale)
        self.trainable_bound = bool(trainable_bound)
        self.shift = float(shift)

    def build(self, input_shape):
        self.bound_parameter = self.add_weight(
            shape=(),
            initializer=keras.initializers.Constant(
                self.initial_bound / self.bound_learning_rate_scale
            ),
            trainable=self.trainable_bound,
            name="bound",
        )

    @property
    def bound(self):
        """The current upper bound lambda_b (a tensor)."""
        return self.bound_parameter * self.bound_learning_rate_scale

    def call(self, inputs):
        bound = ops.cast(self.bound, inputs.dtype)
        clipped = ops.minimum(ops.relu(inputs), bound)
        step = bound / self.levels
        # clipped >= 0 and shift >= 0, so only the upper clip can act.
        level = ops.minimum(ops.floor(clipped / step + self.shift), self.levels)
        quantised = level * step
        # Straight-through: the forward value is quantised, the gradient is the clip's.
        return clipped + ops.stop_gradient(quantised - clipped)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {
            **super().get_config(),
            "levels": self.levels,
            "initial_bound": self.initial_bound,
            "bound_learning_rate_scale": self.bound_learning_rate_scale,
            "trainable_bound": self.trainable_bound,
            "shift": self.shift,
        }
