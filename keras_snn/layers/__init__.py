"""Keras layers for spiking networks (public API of `keras_snn.layers`)."""

from keras_snn.layers.base import SpikingLayer
from keras_snn.layers.base import SynapticLayer
from keras_snn.layers.encoders import AnalogInput
from keras_snn.layers.encoders import EventInput
from keras_snn.layers.encoders import PoissonInput
from keras_snn.layers.encoders import SpikingInput
from keras_snn.layers.max_pooling import SpikingGlobalMaxPooling1D
from keras_snn.layers.max_pooling import SpikingGlobalMaxPooling2D
from keras_snn.layers.max_pooling import SpikingMaxPooling1D
from keras_snn.layers.max_pooling import SpikingMaxPooling2D
from keras_snn.layers.merging import SpikingAdd
from keras_snn.layers.passthrough import register_passthrough_layer
from keras_snn.layers.pooling import SpikingAveragePooling1D
from keras_snn.layers.pooling import SpikingAveragePooling2D
from keras_snn.layers.pooling import SpikingGlobalAveragePooling1D
from keras_snn.layers.pooling import SpikingGlobalAveragePooling2D
from keras_snn.layers.qrelu import QReLU
from keras_snn.layers.readout import Readout
from keras_snn.layers.synaptic import SpikingConv1D
from keras_snn.layers.synaptic import SpikingConv2D
from keras_snn.layers.synaptic import SpikingDense
from keras_snn.layers.synaptic import SpikingDepthwiseConv2D
from keras_snn.layers.weighted import register_weighted_layer

__all__ = [
    "AnalogInput",
    "EventInput",
    "PoissonInput",
    "QReLU",
    "Readout",
    "SpikingAdd",
    "SpikingAveragePooling1D",
    "SpikingAveragePooling2D",
    "SpikingConv1D",
    "SpikingConv2D",
    "SpikingDense",
    "SpikingDepthwiseConv2D",
    "SpikingGlobalAveragePooling1D",
    "SpikingGlobalAveragePooling2D",
    "SpikingGlobalMaxPooling1D",
    "SpikingGlobalMaxPooling2D",
    "SpikingInput",
    "SpikingMaxPooling1D",
    "SpikingMaxPooling2D",
    "SpikingLayer",
    "SynapticLayer",
    "register_passthrough_layer",
    "register_weighted_layer",
]
