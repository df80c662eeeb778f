"""The table of Keras weighted layers: one place for conversion, sparsity penalties and pruning.

Each entry names a Keras layer class with a trained kernel, the spiking layer
`convert_model` builds from it, and the kernel that the sparsity penalties
(`keras_snn.penalties.add_sparsity_penalties`) and magnitude pruning
(`keras_snn.callbacks.WeightPruning`) act on. Lookups walk the class's MRO,
so subclasses of a listed class count as weighted too, and
`register_weighted_layer` extends the table at any time (the converter, the
penalties and the pruning callback read it when they run).
"""

import dataclasses

import keras

from keras_snn.layers import synaptic


@dataclasses.dataclass(frozen=True)
class WeightedLayer:
    """One table entry.

    Attributes:
        keras_class: the Keras layer class (subclasses match too).
        spiking_class: the `keras_snn.layers` class convert_model builds
            from it; its `kernel_channel_axes` says how the kernel is laid out.
        kernel: the attribute holding the kernel that penalties and pruning
            act on, or None when the layer has no single kernel (a separable
            convolution's two factors: convert_model multiplies them out, and
            penalising or pruning each factor is not the same as the product).
        regularizer: the constructor argument that regularises that kernel.
    """

    keras_class: type
    spiking_class: type
    kernel: str = "kernel"
    regularizer: str = "kernel_regularizer"


_TABLE = {}


def register_weighted_layer(
    keras_class, spiking_class, kernel="kernel", regularizer="kernel_regularizer"
):
    """Add a Keras weighted layer class to the table (or replace its entry).

    `convert_model` converts the class with its trained kernel and bias into
    `spiking_class` (configured from the Keras layer's config, without its
    activation) unless a rule of its own is registered with
    `keras_snn.register_conversion_rule`; sparsity penalties and weight
    pruning act on its `kernel` attribute.

    Args:
        keras_class: a `keras.layers.Layer` subclass whose config
            `spiking_class` accepts.
        spiking_class: a `keras_snn.layers.SynapticLayer` subclass with a
            `kernel_channel_axes` classmethod.
        kernel: the kernel attribute penalised and pruned (None: neither).
        regularizer: the constructor argument regularising that kernel.

    Returns:
        the `WeightedLayer` entry.

    Example:

    >>> import keras
    >>> class MyDense(keras.layers.Dense):
    ...     pass
    >>> entry = register_weighted_layer(MyDense, synaptic.SpikingDense)
    >>> find_weighted_layer(MyDense(2)).spiking_class.__name__
    'SpikingDense'
    """
    if not (isinstance(keras_class, type) and issubclass(keras_class, keras.layers.Layer)):
        raise TypeError(f"Expected a keras.layers.Layer subclass; received {keras_class!r}.")
    if not hasattr(spiking_class, "kernel_channel_axes"):
        raise TypeError(
            f"`spiking_class` must be a weighted keras_snn layer with a kernel_channel_axes "
            f"classmethod (e.g. keras_snn.layers.SpikingDense); received {spiking_class!r}."
        )
    entry = WeightedLayer(keras_class, spiking_class, kernel, regularizer)
    _TABLE[keras_class] = entry
    return entry


def find_weighted_layer(layer):
    """The table entry for a layer or layer class (most specific class first), or None."""
    cls = layer if isinstance(layer, type) else type(layer)
    for base in cls.__mro__:
        if base in _TABLE:
            return _TABLE[base]
    return None


def has_weighted_kernel(layer):
    """True when `layer` is a weighted layer whose kernel penalties and pruning act on."""
    entry = find_weighted_layer(layer)
    return entry is not None and entry.kernel is not None


def weighted_kernel(layer):
    """The kernel variable of `layer` that penalties and pruning act on."""
    return getattr(layer, find_weighted_layer(layer).kernel)


def weighted_regularizer_names():
    """The constructor arguments that regularise a table entry's kernel (no duplicates)."""
    names = (entry.regularizer for entry in _TABLE.values() if entry.regularizer)
    return tuple(dict.fromkeys(names))


def weighted_layer_classes():
    """The Keras classes in the table, as it is now."""
    return tuple(_TABLE)


register_weighted_layer(keras.layers.Dense, synaptic.SpikingDense)
register_weighted_layer(keras.layers.Conv1D, synaptic.SpikingConv1D)
register_weighted_layer(keras.layers.Conv2D, synaptic.SpikingConv2D)
register_weighted_layer(
    keras.layers.DepthwiseConv2D, synaptic.SpikingDepthwiseConv2D,
    regularizer="depthwise_regularizer",
)
# Converted as the one Conv2D it equals (conversion/rules.py); its two factors
# are neither penalised nor pruned.
register_weighted_layer(
    keras.layers.SeparableConv2D, synaptic.SpikingConv2D, kernel=None, regularizer=None
)
