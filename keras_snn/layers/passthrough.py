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
    """
    if not (isinstance(layer_class, type) and issubclass(layer_class, keras.layers.Layer)):
        raise TypeError(f"Expected a keras.layers.Layer subclass; received {layer_class!r}.")
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
