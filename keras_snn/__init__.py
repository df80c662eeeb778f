"""keras_snn: convert trained Keras models to spiking neural networks and run them fast.

Public API only; README.md describes the maths, the architecture and the papers.
"""

from keras_snn import applications
from keras_snn import callbacks
from keras_snn import datasets
from keras_snn import layers
from keras_snn import losses
from keras_snn import metrics
from keras_snn import neurons
from keras_snn.conversion import ConversionError
from keras_snn.conversion import convert_model
from keras_snn.conversion import register_conversion_rule
from keras_snn.export import NIRExportError
from keras_snn.export import export_nir
from keras_snn.evaluation import SimulationResult
from keras_snn.evaluation import simulate
from keras_snn.penalties import add_sparsity_penalties
from keras_snn.penalties import strip_sparsity_penalties
from keras_snn.spiking_model import SpikingModel
from keras_snn.sparsity import measure_sparsity
from keras_snn.version import __version__

__all__ = [
    "ConversionError",
    "NIRExportError",
    "SimulationResult",
    "SpikingModel",
    "__version__",
    "add_sparsity_penalties",
    "applications",
    "callbacks",
    "convert_model",
    "datasets",
    "export_nir",
    "layers",
    "losses",
    "measure_sparsity",
    "metrics",
    "neurons",
    "register_conversion_rule",
    "simulate",
    "strip_sparsity_penalties",
]
