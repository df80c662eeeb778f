"""Losses on a SpikingModel's per-step readout `(batch, T, classes)`.

Keras's own losses expect `(batch, classes)` predictions, so
`SpikingModel.compile` refuses them (with a ValueError pointing here) rather
than let them fail deep in `fit` or broadcast over the time axis.
"""

import keras
from keras import ops

from keras_snn.metrics import sparse_labels


@keras.saving.register_keras_serializable(package="keras_snn")
class ReadoutCrossentropy(keras.losses.Loss):
    """Cross-entropy of the readout logits at one step, or averaged over steps.

    The readout after t steps estimates the logits (see `SpikingModel`), so
    training or evaluating on it is ordinary softmax cross-entropy: on the
    final step by default (DIET-SNN), or the mean over all steps
    (`step="all"`), which rewards being right early (anytime inference).

    Args:
        step: 1-based step (negative counts from the end; -1 = final), or "all".
        name, reduction: as for `keras.losses.Loss`.

    Labels may be integers `(batch,)`/`(batch, 1)` or one-hot `(batch, classes)`.

    Example:

    >>> import numpy as np
    >>> loss = ReadoutCrossentropy()
    >>> readout = np.zeros((2, 3, 4), "float32")
    >>> round(float(loss(np.array([0, 1]), readout)), 4)  # log(4)
    1.3863
    """

    def __init__(self, step=-1, name="readout_crossentropy", reduction="sum_over_batch_size"):
        if step != "all" and (not isinstance(step, int) or step == 0):
            raise ValueError(f"`step` must be a nonzero int or 'all'; received {step!r}.")
        super().__init__(name=name, reduction=reduction)
        self.step = step

    def call(self, y_true, y_pred):
        classes = y_pred.shape[-1]
        y_true = sparse_labels(y_true, classes)
        if self.step == "all":
            steps = ops.shape(y_pred)[1]
            labels = ops.reshape(ops.repeat(ops.expand_dims(y_true, 1), steps, axis=1), (-1,))
            logits = ops.reshape(y_pred, (-1, classes))
            per_step = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
            return ops.mean(ops.reshape(per_step, (-1, steps)), axis=1)
        index = self.step - 1 if self.step > 0 else self.step
        return keras.losses.sparse_categorical_crossentropy(
            y_true, y_pred[:, index], from_logits=True
        )

    def get_config(self):
        return {**super().get_config(), "step": self.step}
