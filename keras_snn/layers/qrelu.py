"""QReLU: the quantised clipped ReLU with a learnable bound (seed 004, eq. 1).

An ANN trained with QReLU converts to an SNN that matches it in about
`levels` timesteps: the learned bound is the layer's activation ceiling, and
each quantisation level is one spike.
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_snn")
class QReLU(keras.layers.Layer):
    """Quantised clipped ReLU with a learnable upper bound lambda_b.

    `QReLU(x) = 0` for `x <= 0`, `lambda_b` for `x >= lambda_b`, and
    `floor(x * P / lambda_b) * lambda_b / P` in between, with `P = levels`
    (seed 004, eq. 1). Gradients use a straight-through estimator: the
    gradient of the clipped ReLU, 1 for `0 < x < lambda_b`; the bound gets the
    gradient of the clip, 1 where `x >= lambda_b` (as in PACT).

    Args:
        levels: number of quantisation steps P (>= 1); the SNN needs about
            `levels / spike_max` timesteps to match the ANN.
        initial_bound: initial lambda_b (> 0).
        bound_learning_rate_scale: the bound is stored as
            `lambda_b / scale` and multiplied back, so an optimiser's step on
            it moves lambda_b `scale` times as far for Adam-like optimisers
            (and `scale**2` for plain SGD). The paper trains the bound with a
            smaller rate (0.1x); note that a bound that barely moves stays
            near its initial value (DESIGN.md section 4).
        trainable_bound: learn the bound (default) or keep it fixed.

    Input shape: any. Output shape: the same.

    Example:

    >>> import numpy as np
    >>> layer = QReLU(levels=4, initial_bound=2.0)
    >>> np.asarray(layer(np.array([-1.0, 0.3, 0.5, 1.2, 3.0], "float32"))).tolist()
    [0.0, 0.0, 0.5, 1.0, 2.0]
    """

    def __init__(
        self,
        levels=8,
        initial_bound=1.0,
        bound_learning_rate_scale=1.0,
        trainable_bound=True,
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
        self.levels = levels
        self.initial_bound = float(initial_bound)
        self.bound_learning_rate_scale = float(bound_learning_rate_scale)
        self.trainable_bound = bool(trainable_bound)

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
        quantised = ops.floor(clipped / step) * step
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
        }
