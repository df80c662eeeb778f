"""ANN-to-SNN conversion: graph walk, folding, normalisation, per-layer rules."""

from keras_snn.conversion.converter import convert_model
from keras_snn.conversion.errors import ConversionError
from keras_snn.conversion.rules import register_conversion_rule
