"""The weighted spiking add that joins residual branches.

Section C of "A High Performance and Low Latency Deep Spiking Neural Networks
Conversion Framework".
"""

import keras
from keras import ops

from keras_snn.layers.base import SynapticLayer
from keras_snn.layers.base import nonzero_mask


@keras.saving.register_keras_serializable(package="keras_snn")
class SpikingAdd(SynapticLayer, keras.layers.Layer):
    """Weighted add of spike tensors into spiking neurons: `WAdd(x, y) = w (x + y)`.

    Per step: `z(t) = sum_i w_i * s_i(t)`, with one weight vector per input
    branch (one factor per channel), then the neuron fires. After conversion
    the factors put every branch on the output's scale
    (`w_i = lambda_branch / lambda_out`); with all factors 1 it is a plain add.

    Args:
        neuron: "if" (default), "buffered", "lif", a `Neuron`, or None.
        threshold: initial firing threshold (> 0).

    Input shape: a list of at least two tensors of the same shape.
    Output shape: that shape.

    Example:

    >>> import numpy as np
    >>> x = np.ones((1, 4), "float32")
    >>> tuple(SpikingAdd()([x, x]).shape)
    (1, 4)
    """

    def __init__(self, neuron="if", threshold=1.0, **kwargs):
        super().__init__(**kwargs)
        self._init_neuron(neuron, threshold)

    def build(self, input_shape):
        if not isinstance(input_shape, (list, tuple)) or not isinstance(
            input_shape[0], (list, tuple)
        ) or len(input_shape) < 2:
            raise ValueError(
                f"Layer '{self.name}' needs a list of at least two inputs; "
                f"received input shape {input_shape}."
            )
        shapes = {tuple(shape[1:]) for shape in input_shape}
        if len(shapes) != 1:
            raise ValueError(
                f"Layer '{self.name}' adds inputs of one shape; received {input_shape}."
            )
        self.branch_weights = self.add_weight(
            shape=(len(input_shape), input_shape[0][-1]),
            initializer="ones",
            name="branch_weights",
        )
        self._build_neuron(input_shape)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])

    def compute_current(self, inputs):
        return _weighted_sum(inputs, self.branch_weights)

    def connectivity(self, inputs):
        return _weighted_sum(inputs, nonzero_mask(self.branch_weights))

    def get_config(self):
        return {**super().get_config(), **self._neuron_config()}


def _weighted_sum(inputs, weights):
    total = None
    for index, branch in enumerate(inputs):
        term = branch * weights[index]
        total = term if total is None else ops.add(total, term)
    return total
