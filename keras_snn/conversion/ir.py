"""The converter's intermediate form: the ANN as a list of simple operations.

Each ANN layer becomes zero or more of these (a Dense with inline ReLU becomes
`Linear` + `Relu`; a Dropout becomes nothing). Folding and fusion rewrite this
list; the spiking network is built from the result. Weights live here as NumPy
arrays, so nothing touches the user's model.
"""

import dataclasses

import numpy as np


@dataclasses.dataclass
class Op:
    key: str
    inputs: list
    source: str  # name of the ANN layer this came from, for error messages


@dataclasses.dataclass
class Linear(Op):
    """A weighted layer: `spiking_class(**config)` with `kernel` and `bias`."""

    spiking_class: type = None
    config: dict = None
    kernel: np.ndarray = None
    bias: np.ndarray = None
    # Filled in by fusion: the ReLU's clip value (None: unbounded) when a ReLU
    # follows, and whether a neuron fires at all (False: passes its current).
    spiking: bool = False
    max_value: float = None
    quantized: bool = False  # the activation was a QReLU
    shift: float = 0.0  # that QReLU's phi: the neuron starts at phi * threshold
    levels: int = None  # that QReLU's levels (bias calibration's quantised target)
    signed: bool = False  # no ReLU: signed spikes carry the linear value

    @property
    def channel_axes(self):
        """`(input_axes, output_axes)` of the kernel, as the spiking class lays it out."""
        return self.spiking_class.kernel_channel_axes(self.kernel.ndim)

    @property
    def output_channels(self):
        """The number of output channels (the bias length)."""
        return int(np.prod([self.kernel.shape[axis] for axis in self.channel_axes[1]]))


def along_axes(vector, kernel_shape, axes):
    """`vector` (one value, or one per channel over `axes`) shaped to multiply a kernel."""
    vector = np.asarray(vector)
    if vector.size == 1:
        return vector.reshape((1,) * len(kernel_shape))
    return vector.reshape([d if axis in axes else 1 for axis, d in enumerate(kernel_shape)])


@dataclasses.dataclass
class Relu(Op):
    max_value: float = None
    quantized: bool = False  # a QReLU: max_value is its learned bound
    shift: float = 0.0  # the QReLU's phi (0: eq. 1, 0.5: QCFS)
    levels: int = None  # the QReLU's levels
    shape: tuple = None  # per-sample output shape of a ReLU layer (None: inline)


@dataclasses.dataclass
class Affine(Op):
    """Per-channel `scale * x + shift` (BatchNormalization, Rescaling, Normalization)."""

    scale: np.ndarray = None
    shift: np.ndarray = None
    # Where the channels are: "last", "first" (axis 1 of a channels_first
    # feature map) or None (one scale for every value, any layout).
    channel_axis: str = "last"
    rank: int = None  # of the input, batch included (None: unknown)


@dataclasses.dataclass
class Pool(Op):
    """Average pooling: `spiking_class(**config)`, linear and per channel."""

    spiking_class: type = None
    config: dict = None


@dataclasses.dataclass
class MaxPool(Pool):
    """Max pooling: per channel but not linear (cumulative spike counts)."""


@dataclasses.dataclass
class Merge(Op):
    """Residual Add of its inputs (a weighted add after conversion)."""

    spiking: bool = False
    max_value: float = None
    quantized: bool = False
    shift: float = 0.0
    levels: int = None
    signed: bool = False


@dataclasses.dataclass
class Shape(Op):
    """A value-moving Keras layer (Flatten, Reshape, padding, Concatenate...)."""

    layer: object = None


@dataclasses.dataclass
class Softmax(Op):
    """A final softmax: dropped, since argmax is unchanged."""

    activation = "softmax"


@dataclasses.dataclass
class Sigmoid(Softmax):
    """A final sigmoid: dropped; the readout is the logit (decide at 0, i.e. p = 0.5)."""

    activation = "sigmoid"


def consumers(ops, key):
    return [op for op in ops if key in op.inputs]


def replace_input(ops, old, new):
    for op in ops:
        op.inputs = [new if key == old else key for key in op.inputs]
