"""Sparsity penalties for fine-tuning a ReLU network before conversion.

Spike-Based Anytime Perception (Dutson, Li, Gupta; supplementary section D)
fine-tunes the ANN with a mean-L1 penalty on the hidden activations
(lambda_a) and on the weights (lambda_w), which raises the activation and
weight sparsity that `keras_snn.measure_sparsity` reports and so lowers the
converted network's synaptic operations. `add_sparsity_penalties` returns a
copy of a model with both penalties, `strip_sparsity_penalties` the copy
without them; the penalised kernels are those of the weighted-layer table
(`keras_snn.layers.register_weighted_layer`).
"""

import keras

from keras_snn.layers.qrelu import QReLU
from keras_snn.layers.weighted import find_weighted_layer
from keras_snn.layers.weighted import has_weighted_kernel
from keras_snn.layers.weighted import weighted_regularizer_names


@keras.saving.register_keras_serializable(package="keras_snn")
class ActivationL1(keras.regularizers.Regularizer):
    """Activity penalty `strength * mean |a|` over a layer's activations (lambda_a).

    Keras divides activity penalties by the batch size, so this returns the
    per-sample sum over elements divided by the elements per sample: the mean.
    A mean keeps one strength meaningful for layers of any size.
    """

    def __init__(self, strength):
        if not float(strength) >= 0:
            raise ValueError(f"`strength` must be >= 0; received {strength!r}.")
        self.strength = float(strength)

    def __call__(self, x):
        per_sample = 1
        for dim in x.shape[1:]:
            per_sample *= dim
        return self.strength * keras.ops.sum(keras.ops.abs(x)) / per_sample

    def get_config(self):
        return {"strength": self.strength}


@keras.saving.register_keras_serializable(package="keras_snn")
class WeightL1(keras.regularizers.Regularizer):
    """Weight penalty `strength * mean |w|` over a kernel (lambda_w)."""

    def __init__(self, strength):
        if not float(strength) >= 0:
            raise ValueError(f"`strength` must be >= 0; received {strength!r}.")
        self.strength = float(strength)

    def __call__(self, w):
        return self.strength * keras.ops.mean(keras.ops.abs(w))

    def get_config(self):
        return {"strength": self.strength}


def _relu_output(layer):
    if isinstance(layer, (keras.layers.ReLU, QReLU)):
        return True
    activation = getattr(layer, "activation", None)
    return activation is not None and keras.activations.serialize(activation) == "relu"


def add_sparsity_penalties(model, activation=0.0, weight=0.0):
    """A copy of `model` whose training adds the sparsity penalties (lambda_a, lambda_w).

    Every ReLU/QReLU output gets `ActivationL1(activation)` and every Dense/Conv
    kernel (depthwise included) `WeightL1(weight)`, added to any regulariser
    it had. The copy has the same weights; the model passed in is unchanged.
    `strip_sparsity_penalties` undoes it.

    Args:
        model: a built Keras 3 Sequential or functional model.
        activation: lambda_a, strength of the mean-L1 activation penalty.
        weight: lambda_w, strength of the mean-L1 weight penalty.

    Example:

    >>> import keras
    >>> ann = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
    ...                         keras.layers.Dense(2)])
    >>> sparse = add_sparsity_penalties(ann, activation=0.5, weight=1.0)
    >>> type(sparse.layers[0].activity_regularizer).__name__
    'ActivationL1'
    """

    def clone(layer):
        config = layer.get_config()
        if activation and _relu_output(layer):
            config["activity_regularizer"] = keras.saving.serialize_keras_object(
                _combine(layer.activity_regularizer, ActivationL1(activation))
            )
        if weight and has_weighted_kernel(layer):
            key = find_weighted_layer(layer).regularizer
            current = getattr(layer, key, None)
            config[key] = keras.saving.serialize_keras_object(_combine(current, WeightL1(weight)))
        return layer.__class__.from_config(config)

    return _clone_with_weights(model, clone)


def strip_sparsity_penalties(model):
    """A copy of `model` without keras_snn's sparsity penalties (a plain Keras model).

    A regulariser the model had before `add_sparsity_penalties` is kept.

    Example:

    >>> import keras
    >>> ann = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu")])
    >>> plain = strip_sparsity_penalties(add_sparsity_penalties(ann, activation=0.5))
    >>> plain.layers[0].activity_regularizer is None
    True
    """

    def clone(layer):
        config = layer.get_config()
        for key in ("activity_regularizer",) + weighted_regularizer_names():
            current = getattr(layer, key, None)
            if isinstance(current, _PENALTIES):
                config[key] = None
            elif isinstance(current, _Sum):
                config[key] = keras.saving.serialize_keras_object(current.original)
        return layer.__class__.from_config(config)

    return _clone_with_weights(model, clone)


@keras.saving.register_keras_serializable(package="keras_snn")
class _Sum(keras.regularizers.Regularizer):
    """A user's regulariser plus a keras_snn penalty."""

    def __init__(self, original, penalty):
        self.original = keras.regularizers.get(original)
        self.penalty = keras.regularizers.get(penalty)

    def __call__(self, x):
        return self.original(x) + self.penalty(x)

    def get_config(self):
        return {
            "original": keras.saving.serialize_keras_object(self.original),
            "penalty": keras.saving.serialize_keras_object(self.penalty),
        }


_PENALTIES = (ActivationL1, WeightL1)


def _combine(current, penalty):
    if current is None or isinstance(current, _PENALTIES):
        return penalty
    if isinstance(current, _Sum):
        current = current.original
    return _Sum(current, penalty)


def _clone_with_weights(model, clone_function):
    if not isinstance(model, keras.Model) or not model.built:
        raise ValueError("Expected a built Keras 3 model (Sequential or functional).")
    copy = keras.models.clone_model(model, clone_function=clone_function)
    copy.set_weights(model.get_weights())
    return copy
