"""Keras shape layers that may sit between spiking layers unchanged.

A layer qualifies when it only moves, copies or pads values (Flatten, Reshape,
zero padding, cropping, nearest upsampling, concatenation): spikes stay spikes,
and counting operations on the moved events at the next synaptic layer gives
the same count as following each original spike through the copy. Such layers
have no state and run as they are at every step.
"""

import keras

_PASSTHROUGH = [
    keras.layers.Flatten,
    keras.layers.Reshape,
    keras.layers.Permute,
    keras.layers.ZeroPadding1D,
    keras.layers.ZeroPadding2D,
    keras.layers.Cropping1D,
    keras.layers.Cropping2D,
    keras.layers.UpSampling1D,
    keras.layers.UpSampling2D,
    keras.layers.Concatenate,
    keras.layers.Identity,
]


def register_passthrough_layer(layer_class):
    """Allow a stateless, value-moving Keras layer class inside spiking graphs.

    Only register layers that move or copy values without arithmetic: the
    simulator treats their outputs as spikes when their inputs are spikes.
    The registry is read when a model is converted or simulated, so a class
    registered at any time is kept by `keras_snn.convert_model` (as a shape
    op) and run by `SpikingModel`. The class must implement
    `compute_output_shape` (the converter and the simulator size the
    spiking layers after it without running it) and `get_config`.

    Args:
        layer_class: a `keras.layers.Layer` subclass (subclasses match too).

    Returns:
        `layer_class`, so it also works as a class decorator.

    Raises:
        TypeError: if `layer_class` is not a Keras layer class or has no
            `compute_output_shape`.

    Example:

    >>> import keras
    >>> @register_passthrough_layer
    ... class SwapHalves(keras.layers.Layer):
    ...     def call(self, x):
    ...         return keras.ops.roll(x, x.shape[-1] // 2, axis=-1)
    ...     def compute_output_shape(self, input_shape):
    ...         return input_shape
    >>> SwapHalves in passthrough_layer_classes()
    True
    """
    if not (isinstance(layer_class, type) and issubclass(layer_class, keras.layers.Layer)):
        raise TypeError(f"Expected a keras.layers.Layer subclass; received {layer_class!r}.")
    if layer_class.compute_output_shape is keras.layers.Layer.compute_output_shape:
        raise TypeError(
            f"{layer_class.__name__} does not implement `compute_output_shape`, which "
            "keras_snn needs to size the layers after a pass-through layer; add it."
        )
    if layer_class not in _PASSTHROUGH:
        _PASSTHROUGH.append(layer_class)
    return layer_class


def is_passthrough(layer):
    """True for a registered pass-through layer (nearest upsampling only)."""
    if isinstance(layer, keras.layers.UpSampling2D) and layer.interpolation != "nearest":
        return False
    return isinstance(layer, tuple(_PASSTHROUGH))


def passthrough_layer_classes():
    """The registered pass-through layer classes (the converter maps them too)."""
    return tuple(_PASSTHROUGH)


def passthrough_layer_names():
    """Names of the registered pass-through layer classes (for error messages)."""
    return sorted(cls.__name__ for cls in _PASSTHROUGH)
