"""keras_snn: convert trained Keras models to spiking neural networks and run them fast.

Public API only; see shared/DESIGN.md for the maths and the architecture.
"""

from keras_snn import layers
from keras_snn import neurons
from keras_snn.conversion import ConversionError
from keras_snn.conversion import convert_model
from keras_snn.conversion import register_conversion_rule
from keras_snn.simulation import SpikingModel
from keras_snn.version import __version__

__all__ = [
    "ConversionError",
    "SpikingModel",
    "__version__",
    "convert_model",
    "layers",
    "neurons",
    "register_conversion_rule",
]
