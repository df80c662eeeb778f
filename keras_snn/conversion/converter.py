"""convert_model: a trained ReLU Keras model to a SpikingModel.

The pipeline, each step on a copy, never the user's model:

1. read the model's layer graph (nested models flattened; a tf_keras model is
   first loaded as its Keras 3 twin);
2. turn every layer into simple ops with the class-keyed rules (`rules.py`),
   refusing unsupported layers before anything is built;
3. fold BatchNormalization / Rescaling / Normalization into weights (`folding.py`);
4. fuse each weighted layer (or residual Add) with the ReLU after it into a
   spiking layer; the last weighted layer becomes the non-spiking readout;
   a channels_first model is rewritten to run channels-last (`layout.py`);
5. build the spiking network with the folded weights, measure each layer's
   activation ceiling lambda (a known bound, or a percentile of calibration
   activations), and rescale: `W <- W * lambda_in / lambda_out`,
   `b <- b / lambda_out`, threshold 1 (Algorithm 1 of "A High Performance
   and Low Latency Deep Spiking Neural Networks Conversion Framework", with
   `lambda / S_max`).
"""

import copy
import itertools
import os
import tempfile
import warnings

import keras
import numpy as np

from keras_snn import layers as snn_layers
from keras_snn import neurons as neurons_lib
from keras_snn.conversion import bias_calibration as bias_calibration_lib
from keras_snn.conversion import ir
from keras_snn.conversion.bias_calibration import AUTO_RELU_STARTS
from keras_snn.conversion.bias_calibration import AUTO_STARTS
from keras_snn.conversion.bias_calibration import calibrate_network
from keras_snn.conversion.bias_calibration import check_bias_calibration
from keras_snn.conversion.bias_calibration import first_samples
from keras_snn.conversion.calibration import CalibrationReader
from keras_snn.conversion.calibration import CeilingEstimator
from keras_snn.conversion.calibration import analog_forward
from keras_snn.conversion.calibration import calibration_batches
from keras_snn.conversion.errors import ConversionError
from keras_snn.conversion.folding import fold_affines
from keras_snn.conversion.layout import rewrite_to_channels_last
from keras_snn.conversion.rules import find_rule
from keras_snn.graph import layer_graph
from keras_snn.plan import Carries
from keras_snn.spiking_model import SpikingModel

_NORMALIZATIONS = ("auto", "percentile", "max", "none")
_ENCODINGS = ("analog", "spiking", "poisson")
_MEMBRANE_RULES = ("auto", "shift")
# initial_membrane="auto" for layers that are not QReLU (ReLU, pooling, input),
# before "auto" calibration may choose another start (AUTO_RELU_STARTS).
_RELU_MEMBRANE = 0.5
# per_channel="auto": per-channel ceilings wherever the network can carry them.
_PER_CHANNEL = True
_AUTO_NEURON = "buffered"
# neuron="auto": a neuron may send this many spikes in one step (burst spikes),
# so input that arrives late still leaves by step T. Signed neurons send one:
# with calibration, bursts there cost a MobileNetV2-style net 1 point at T=8.
_AUTO_BURST = 8
# bias_calibration="auto" calibrates at fewer than this many spikes per neuron
# (timesteps x spike_max), and at any T for eq. 1 QReLU layers started at
# theta/2 (_rounds_unlike_its_qrelu). Measured with its MSE check
# (benchmarks/calibration_resolution.py, RESULTS.md issue 16): at 16 spikes the
# small QCFS ResNet gained 6 points, Conv MNIST and the VGG moved within their
# standard errors. It also helped the ResNets at 32-64, but the calibrated
# weights are tuned for that T (the error no longer shrinks like 1/T in longer runs) and
# calibrating took minutes: the default T=32 keeps the plain conversion.
_CALIBRATE_BELOW_RESOLUTION = 32
# ...and only networks with at most this many calibrated layers: calibration
# simulates the network once per layer (ResNet50: minutes), True still does it.
_MOST_AUTO_CALIBRATED_LAYERS = 24


def convert_model(
    model,
    calibration_data=None,
    *,
    timesteps=32,
    neuron="auto",
    spike_max=1,
    normalization="auto",
    percentile=99.99,
    per_channel="auto",
    input_encoding="analog",
    initial_membrane="auto",
    head=None,
    bias_calibration="auto",
):
    """Convert a trained ReLU Keras model into a `keras_snn.SpikingModel`.

    Supported: Dense, Conv1D/Conv2D/DepthwiseConv2D/SeparableConv2D (inline
    relu, relu6 or linear; a separable convolution folds into one Conv2D), ReLU (max_value allowed), Activation relu/relu6/linear, a final
    softmax or sigmoid (dropped; for a sigmoid head decide at readout 0),
    BatchNormalization (folded into the adjacent weighted layer), Rescaling
    and Normalization at the input (folded into the first layer), Dropout and
    noise layers (dropped), Flatten, Reshape, ZeroPadding, Cropping, nearest
    UpSampling, Concatenate, Average/GlobalAverage and Max/GlobalMax pooling
    (1D and 2D; max pooling acts on cumulative spike counts, see
    `keras_snn.layers.SpikingMaxPooling2D`; an average pooling to one
    position per channel, such as global pooling, has no neuron: its mean goes
    on as graded spike events, unrounded), Add (a weighted spiking add),
    and nested models. The final linear layer is the readout, and may be
    followed by reshaping and average pooling. A hidden layer or Add without
    ReLU (a linear bottleneck) gets `keras_snn.neurons.SignedIF` neurons
    rounding to the nearest spike, its ceiling from `|activation|`; a
    BatchNormalization with no Dense/Conv next to it (pre-activation
    ResNetV2, DenseNet) becomes a 1x1 depthwise layer.
    LeakyReLU, swish, a hidden sigmoid/tanh and anything else raise
    `ConversionError` naming the layer.

    channels_first models convert too: the spiking network runs channels-last
    (rewritten once here, see `keras_snn.conversion.layout`, so it needs no
    NCHW kernels) and still takes channels_first input; a feature-map output
    is returned channels_first.

    Normalisation: every spiking layer fires at most `spike_max` per step at
    its activation ceiling lambda. lambda comes from a QReLU's learned bound
    ("auto"), or from the `percentile` of the layer's positive activations
    over `calibration_data` ("auto": for every layer but QReLU ones when data
    is given, a clipped ReLU's percentile being at most its `max_value`;
    without data a ReLU's `max_value`, and layers with no bound need data;
    "percentile" everywhere, "max" = percentile 100); "none" keeps the
    weights as they are (threshold 1).

    Args:
        model: a built Keras 3 Sequential or functional model (nested models
            included), or a tf_keras (Keras 2) model.
        calibration_data: inputs (array, tf.data.Dataset or iterable of
            batches; `(x, y)` elements are fine, and so is a tuple of arrays
            `(x, y[, sample_weight])`, read like Keras's `validation_data`)
            used to measure ceilings. Needed only where a ceiling must come
            from data. Batches must have the model's input shape; NaN or
            infinite values are refused; a layer that never activates on the
            data (e.g. all-zero data) gets ceiling 1 with a warning naming it.
            A model with variable input dims (`keras.Input((None, C))`) is
            converted at the shape of the first calibration batch: the
            spiking network runs inputs of that shape only (its fan-out maps
            and input scales are per position); convert again for another.
        timesteps: default simulation length of the returned model.
        neuron: "if", "buffered" (negative spikes undo over-fire), "lif"
            (leak 1, to be trained), "auto" (default: buffered neurons that
            may send a burst of up to 8 x `spike_max` spikes in one step,
            `BufferedIF(burst=8)`, their count never above `spike_max` per
            step so far; measured best for ReLU and QReLU models), any other name
            `keras_snn.neurons.get` resolves (a class added with
            `keras_snn.neurons.register_neuron`), built with `spike_max`
            and `initial_membrane`, or a `keras_snn.neurons.Neuron` used as
            the template for every layer (e.g. `IF(reset="zero")` for a
            NIR-exact model).
        spike_max: spikes per step at the activation ceiling: the largest
            multi-bit spike (1 = binary spikes), or the average a burst
            neuron keeps to.
        normalization: "auto", "percentile", "max" or "none".
        percentile: the percentile (0, 100] for data ceilings.
        per_channel: one ceiling per output channel (True) or per layer
            (False) for ceilings measured on data; "auto" (default): per
            channel, except for networks with grouped convolutions or a
            Reshape between layers (which cannot carry per-channel scales).
        input_encoding: "analog" (the input is the first layer's current),
            "spiking" (IF input neurons, rate = x / input ceiling) or
            "poisson" (Bernoulli spikes with that rate). For the last two the
            input ceiling is the calibration data's percentile, or 1 (inputs
            in [0, 1]) without data; they encode non-negative inputs only, and
            calibration data with negative values is refused.
        initial_membrane: initial membrane as a fraction of the threshold
            in [0, 1) for every layer (0.5 halves the rounding error), or a
            rule. "shift": a layer with a QReLU starts at the QReLU's `shift`
            phi, so that its spike count after T steps of a constant input is
            `clip(floor(T z / theta + phi), 0, T)`, the QReLU's own rounding
            (its level exactly at T = levels; with phi = 0.5, QCFS, ANN and
            SNN agree in expectation at every T); other layers (ReLU,
            pooling, a spiking input) start at 0.5, which centres their
            rounding error. "auto" (default): as "shift", except that an
            eq. 1 QReLU (phi = 0) starts at 0.5 too, which was much better on
            the deeper measured network. When "auto" `bias_calibration`
            calibrates a network whose start is a free choice, every
            neuron's start is chosen: among 0.5, 0.45 and 0.4 for an eq. 1
            QReLU network, 0.5 and 0.6 for a network without QReLU layers
            (the network is calibrated from each, and the one whose top-1
            agrees with the ANN's on the most calibration inputs, up to
            2048 of them, is kept: a calibration and a simulation of those
            inputs per start; under a `head`, the one whose readout is
            closest to the ANN's). The chosen start is each layer's
            `neuron.initial_membrane`.
            Signed neurons always start at 0.
            The "auto" choices were measured on the repo's benchmark models
            (benchmarks/RESULTS.md, "Conversion defaults").
        bias_calibration: correct each layer's bias by its mean per-channel
            rate error after `timesteps` steps on the calibration data
            (SNN calibration, Li et al. 2021; see
            `keras_snn.conversion.bias_calibration`), layer by layer from
            the input, after dividing a weighted layer's output channels by
            their gain (the slope of the spiking output on the ANN value).
            Weights are calibrated for `timesteps`: convert
            again for another simulation length. True: always (needs
            calibration data); False: never; "auto" (default): with
            calibration data at low latency (`timesteps * spike_max < 32`,
            where it was measured to help), or at any T when an eq. 1 QReLU
            layer starts off its shift (it rounds where the ANN floors), unless
            `normalization="none"`,
            for networks of at most 24 calibrated layers (it simulates
            once or twice per layer), and kept only if it brings the readout
            closer to the ANN's logits on that data (if the gains do not,
            the biases alone are tried).
        head: name of a top-level layer from which the rest of the model runs
            as an ordinary ANN on the spiking part's readout (hybrid inference,
            section C of the conversion-framework paper above), for heads
            without a spiking form.

    Returns:
        A `SpikingModel` whose output `(batch, timesteps, classes)` estimates
        the model's logits after every step.

    Raises:
        ConversionError: for an unsupported layer or argument, or missing
            calibration data (naming the layers that need it), or calibration
            data of the wrong shape or type, empty, or holding non-finite
            values (with their count), or negative values with a spiking or
            Poisson input encoding (with their count).

    Example:

    >>> import keras, numpy as np
    >>> ann = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
    ...                         keras.layers.Dense(3, activation="softmax")])
    >>> x = np.random.rand(64, 8).astype("float32")
    >>> snn = convert_model(ann, x, timesteps=20)
    >>> tuple(snn(x[:4]).shape)
    (4, 20, 3)
    """
    options = _Options(
        timesteps, neuron, spike_max, normalization, percentile, per_channel,
        input_encoding, initial_membrane,
    )
    check_bias_calibration(bias_calibration)
    if bias_calibration is True and calibration_data is None:
        raise ConversionError(
            "bias_calibration=True needs calibration_data (the SNN is run on it to measure "
            "each layer's error); pass data or bias_calibration='auto'/False."
        )
    keras_model = as_keras3_model(model)
    keras_model, calibration_data = _at_calibration_shape(keras_model, calibration_data)
    tail = None
    if head is not None:
        keras_model, tail = _split_at_head(keras_model, head)
    _refuse_operations_outside_layers(keras_model)
    graph = layer_graph(keras_model, flatten=True)
    if len(graph.input_keys) != 1 or len(graph.output_keys) != 1:
        raise ConversionError(
            f"Model '{keras_model.name}' has {len(graph.input_keys)} inputs and "
            f"{len(graph.output_keys)} outputs; convert_model supports one of each."
        )
    ops, output_key = _to_ops(graph)
    input_affine = _input_affine_to_encoder(ops, graph.input_keys[0], options, keras_model)
    _unfoldable_affines_as_layers(ops)
    fold_affines(ops, [output_key])
    output_key = _relu_before_max_pool(ops, output_key)
    output_key = _fuse_activations(ops, output_key)
    if tail is not None:
        tail = _hand_over_to_head(ops, output_key, tail)
    _sign_linear_layers(ops, output_key)
    _check_kinds(ops, graph.input_keys[0], output_key)
    layout = rewrite_to_channels_last(
        ops, graph.input_keys[0], tuple(keras_model.inputs[0].shape[1:]), output_key
    )
    options.resolve(ops)
    needs_data = _layers_needing_data(ops, options)
    if needs_data and calibration_data is None:
        raise ConversionError(
            "calibration_data is needed to measure the activation ceilings of "
            f"{', '.join(needs_data)} (normalization='{options.normalization}'). Pass a few "
            "hundred to a few thousand training inputs, or normalization='none'."
        )
    builder = _NetworkBuilder(
        ops, graph.input_keys[0], output_key, keras_model, options, layout, input_affine
    )
    builder.build()
    off_shift = _rounds_unlike_its_qrelu(ops, options)
    targets = builder.calibration_targets()
    auto = bias_calibration == "auto"
    calibrate = bias_calibration is True or (
        auto and calibration_data is not None
        and options.normalization != "none"  # "none": the weights as they are
        and (options.timesteps * options.spike_max < _CALIBRATE_BELOW_RESOLUTION or off_shift)
        # one simulation per layer: too slow for a default on deep nets
        and len(targets) <= _MOST_AUTO_CALIBRATED_LAYERS
    )
    starts = _starts_to_choose(ops, options, off_shift) if calibrate and auto else (None,)
    by_decisions = tail is None  # a head's input is no class scores to compare
    if calibrate:  # taken first: normalize may read a one-shot iterator to its end
        samples, calibration_data = first_samples(
            calibration_data, choosing_start=len(starts) > 1 and by_decisions)
    builder.normalize(calibration_data)
    if calibrate:
        calibrate_network(
            builder.network, targets, samples, options.timesteps, options.spike_max, auto,
            starts=starts, by_decisions=by_decisions,
        )
    return SpikingModel(builder.network, timesteps=options.timesteps, head=tail)


class _Options:
    def __init__(self, timesteps, neuron, spike_max, normalization, percentile,
                 per_channel, input_encoding, initial_membrane):
        if isinstance(timesteps, bool) or not isinstance(timesteps, int) or timesteps < 1:
            raise ConversionError(f"`timesteps` must be an int >= 1; received {timesteps!r}.")
        auto_membrane = isinstance(initial_membrane, str) and initial_membrane in _MEMBRANE_RULES
        if isinstance(initial_membrane, str) and not auto_membrane:
            raise ConversionError(
                f"`initial_membrane` must be one of {_MEMBRANE_RULES} or a fraction of the "
                f"threshold in [0, 1); received {initial_membrane!r}."
            )
        if isinstance(neuron, neurons_lib.Neuron):
            if spike_max != 1 or not (auto_membrane or initial_membrane == 0.0):
                raise ConversionError(
                    "With a Neuron instance as `neuron`, set spike_max and initial_membrane "
                    "on the instance, not as convert_model arguments."
                )
        elif neuron != "auto":
            _check_neuron_name(neuron)
        if normalization not in _NORMALIZATIONS:
            raise ConversionError(
                f"`normalization` must be one of {_NORMALIZATIONS}; received {normalization!r}."
            )
        if input_encoding not in _ENCODINGS:
            raise ConversionError(
                f"`input_encoding` must be one of {_ENCODINGS}; received {input_encoding!r}."
            )
        if not 0.0 < float(percentile) <= 100.0:
            raise ConversionError(f"`percentile` must be in (0, 100]; received {percentile!r}.")
        try:  # validate spike_max and initial_membrane once, with the neuron's messages
            neurons_lib.IF(
                spike_max=spike_max, initial_membrane=0.0 if auto_membrane else initial_membrane
            )
        except ValueError as error:
            raise ConversionError(str(error)) from None
        self.timesteps = timesteps
        self.neuron = neuron
        self.spike_max = neuron.spike_max if isinstance(neuron, neurons_lib.Neuron) else spike_max
        self.normalization = normalization
        self.percentile = 100.0 if normalization == "max" else float(percentile)
        if isinstance(per_channel, str) and per_channel != "auto":
            raise ConversionError(
                f"`per_channel` must be 'auto', True or False; received {per_channel!r}."
            )
        self.per_channel = per_channel if isinstance(per_channel, str) else bool(per_channel)
        self.input_encoding = input_encoding
        self.initial_membrane = initial_membrane if auto_membrane else float(initial_membrane)
        self.burst = 1  # "auto" neurons get bursts in resolve()

    def resolve(self, ops):
        """Settle the "auto" choices that depend on the model."""
        if isinstance(self.neuron, str) and self.neuron == "auto":
            # Negative spikes undo the over-fire of an early start (theta/2);
            # measured better than IF on ReLU and QReLU models alike. Bursts
            # let a neuron catch up with input that arrives late.
            self.neuron, self.burst = _AUTO_NEURON, _AUTO_BURST
        if isinstance(self.per_channel, str):  # "auto"
            self.per_channel = _PER_CHANNEL and _per_channel_scales_fit(ops)

    def membrane_for(self, op):
        """Initial membrane (fraction of the threshold) of the neurons of `op`.

        "shift": a QReLU layer starts at its shift phi, which makes the spike
        count after T steps `floor(T z / theta + phi)`, the QReLU's own
        rounding rule (exact at T = levels). "auto": the same for a shifted
        (QCFS) QReLU, but theta/2 for an eq. 1 QReLU (phi = 0), which was far
        better on the measured deeper networks (benchmarks/RESULTS.md). Every
        other layer starts at `_RELU_MEMBRANE`.
        """
        if not isinstance(self.initial_membrane, str):
            return self.initial_membrane
        if op is not None and getattr(op, "quantized", False):
            if self.initial_membrane == "shift" or op.shift > 0.0:
                return op.shift
        return _RELU_MEMBRANE

    def make_input_neuron(self):
        """Binary IF for a spiking input layer, sharing the layers' reset and start."""
        template = self.neuron if isinstance(self.neuron, neurons_lib.IF) else None
        if template is None:
            return neurons_lib.IF(initial_membrane=self.membrane_for(None))
        return neurons_lib.IF(initial_membrane=template.initial_membrane, reset=template.reset)

    def make_signed_neuron(self):
        """Signed IF for a layer without ReLU, rounding both signs to the nearest spike.

        It starts at 0 and fires at +-theta/2 (the signed form of starting an
        IF at theta/2); rounding towards zero lost 3.8 points on a
        MobileNetV2-style net at T=8 (benchmarks/RESULTS.md, issue 16).
        """
        return neurons_lib.SignedIF(spike_max=self.spike_max, rounding="nearest")

    def make_neuron(self, op):
        if isinstance(self.neuron, neurons_lib.Neuron):  # a template: one copy per layer
            return copy.deepcopy(self.neuron)  # needs no registration, unlike a config copy
        return _named_neuron(self.neuron, self.spike_max, self.membrane_for(op), self.burst)


def _starts_to_choose(ops, options, off_shift):
    """The initial membranes "auto" calibration chooses among, or `(None,)` for none.

    Only where the start is a free choice the user left to "auto": an eq. 1
    QReLU network started off its shift (AUTO_STARTS), a network without QReLU
    layers (AUTO_RELU_STARTS). A QCFS network starts at its shift; signed
    neurons start at 0 whatever is chosen.
    """
    if (options.initial_membrane != "auto" or isinstance(options.neuron, neurons_lib.Neuron)
            or not any(getattr(op, "spiking", False) and not getattr(op, "signed", False)
                       for op in ops)):
        return (None,)
    if off_shift:
        return AUTO_STARTS
    if not any(getattr(op, "spiking", False) and getattr(op, "quantized", False) for op in ops):
        return AUTO_RELU_STARTS
    return (None,)


def _rounds_unlike_its_qrelu(ops, options):
    """A QReLU layer whose neurons start off its shift (an eq. 1 layer from theta/2).

    Its spike counts then round where the ANN floors: a systematic half-level
    offset at every T, which bias calibration removes (it gained 0.2-2.2 points
    on the eq. 1 ResNet and VGG at 16-32 spikes per neuron).
    """
    return any(
        getattr(op, "spiking", False) and getattr(op, "quantized", False)
        and options.membrane_for(op) != op.shift
        for op in ops
    )


def _check_neuron_name(neuron):
    try:
        if isinstance(neuron, str) and neurons_lib.get(neuron) is not None:
            return
    except ValueError:
        pass
    raise ConversionError(
        "`neuron` must be 'auto', a neuron name ('if', 'buffered', 'lif', a Neuron class name, "
        "or one registered with keras_snn.neurons.register_neuron) or a "
        f"keras_snn.neurons.Neuron instance; received {neuron!r}."
    )


def _named_neuron(name, spike_max, initial_membrane, burst=1):
    """A neuron of the class `neurons.get(name)` names, with convert_model's options."""
    template = neurons_lib.get(name)
    bursts = {"burst": burst} if burst > 1 else {}  # "auto" only, a class that takes it
    try:
        return type(template).from_config({
            **template.get_config(), "spike_max": spike_max, "initial_membrane": initial_membrane,
            **bursts,
        })
    except (TypeError, ValueError) as error:
        raise ConversionError(
            f"`neuron={name!r}` ({type(template).__name__}) could not be built with "
            f"spike_max={spike_max!r}, initial_membrane={initial_membrane!r}: {error}. "
            "Pass a configured keras_snn.neurons.Neuron instance instead."
        ) from None


def _per_channel_scales_fit(ops):
    """Whether every layer can take per-channel input scales.

    A grouped convolution mixes only the channels of its group, and a Reshape
    between layers moves channels across space; neither can absorb a scale per
    input channel, so such networks keep one ceiling per layer.
    """
    for op in ops:
        if isinstance(op, ir.Linear) and op.config.get("groups", 1) != 1:
            return False
        if isinstance(op, ir.Shape) and isinstance(op.layer, keras.layers.Reshape):
            return False
    return True


# ------------------------------------------------------------------ input
def _at_calibration_shape(keras_model, calibration_data):
    """A model with variable input dims rebuilt at the calibration data's shape.

    Returns the model (the user's own one when its input shape is fixed, else
    a clone holding copies of its weights) and the calibration data to read
    (the first batch put back in front when it had to be read here).
    """
    frame = tuple(keras_model.inputs[0].shape[1:])
    if None not in frame:
        return keras_model, calibration_data
    described = f"Model '{keras_model.name}' takes inputs of variable shape (batch, {frame})"
    if calibration_data is None:
        raise ConversionError(
            f"{described}; convert_model builds the spiking network for one input shape, "
            "taken from calibration_data. Pass calibration_data of the shape to simulate."
        )
    batches = calibration_batches(calibration_data)
    first = next(batches, None)
    if first is None:
        raise ConversionError("calibration_data yielded no batches.")
    shape = tuple(first.shape[1:])
    if len(shape) != len(frame) or any(w is not None and w != g for w, g in zip(frame, shape)):
        raise ConversionError(
            f"{described}; calibration_data holds batches of shape {first.shape}."
        )
    try:
        fixed = keras.models.clone_model(
            keras_model, input_tensors=keras.Input(shape, dtype=keras_model.inputs[0].dtype)
        )
        fixed.set_weights(keras_model.get_weights())
    except Exception as error:  # noqa: BLE001 - any failure means no fixed-shape twin
        raise ConversionError(
            f"{described}; rebuilding it at the calibration data's shape {(None,) + shape} "
            f"failed ({type(error).__name__}: {str(error).splitlines()[0]}). Build the model "
            "with a fixed input shape and copy its weights over."
        ) from None
    return fixed, itertools.chain([first], batches)


def as_keras3_model(model):
    """The model itself if it is Keras 3; a tf_keras model's Keras 3 twin.

    tf_keras models (e.g. trained with tensorflow-model-optimization and
    stripped of pruning wrappers) are saved to a temporary legacy HDF5 file
    and loaded by Keras 3's legacy loader, which maps every standard layer.
    """
    if isinstance(model, keras.Model):
        if not model.built:
            raise ConversionError(
                f"Model '{model.name}' is not built; give it an Input or call it on data first."
            )
        return model
    if type(model).__module__.startswith("tf_keras") and hasattr(model, "save"):
        with tempfile.TemporaryDirectory() as directory:
            path = os.path.join(directory, "model.h5")
            model.save(path, save_format="h5")
            try:
                return keras.saving.load_model(path, compile=False)
            except Exception as error:  # custom tf_keras layers have no Keras 3 class
                raise ConversionError(
                    f"tf_keras model '{model.name}' could not be read as a Keras 3 model "
                    f"({error}). Custom tf_keras layers need a Keras 3 equivalent."
                ) from error
    raise ConversionError(
        f"convert_model expects a Keras model; received {type(model).__name__}."
    )


def _split_at_head(model, head):
    try:
        layer = model.get_layer(head)
    except ValueError:
        raise ConversionError(
            f"`head`='{head}' is not a layer of model '{model.name}'."
        ) from None
    spiking_part = keras.Model(model.inputs, layer.input, name=f"{model.name}_spiking")
    tail = keras.Model(layer.input, model.outputs, name=f"{model.name}_head")
    # Fresh copies: the returned model must not share layers with the user's.
    tail_copy = keras.Model.from_config(tail.get_config())
    tail_copy.set_weights(tail.get_weights())
    return spiking_part, tail_copy


def _refuse_operations_outside_layers(model):
    """Name the tensor operations a functional model applies outside any layer.

    `x + 3` or `x * y` on symbolic tensors (MobileNetV3's hard-swish, ConvNeXt's
    layer scale) become graph operations that are not layers: no rule applies.
    """
    if isinstance(model, keras.Sequential):
        return
    layers = {layer.name for layer in model.layers}
    operations = [
        f"'{entry['name']}' ({entry['class_name']})"
        for entry in model.get_config().get("layers", [])
        if entry["class_name"] != "InputLayer" and entry["name"] not in layers
    ]
    if operations:
        raise ConversionError(
            f"Model '{model.name}' applies tensor operations outside layers: "
            f"{', '.join(operations[:5])}{', ...' if len(operations) > 5 else ''}; they have no "
            "spiking form. Express them with layers that do (e.g. keras.layers.Add, ReLU)."
        )


# ---------------------------------------------------------------- op graph
def _to_ops(graph):
    ops, alias = [], {}
    for node in graph.nodes:
        inputs = [alias.get(key, key) for key in node.input_keys]
        new_ops = find_rule(node.layer)(node.layer, node.key, inputs)
        if new_ops:
            ops.extend(new_ops)
            if new_ops[-1].key != node.key:
                alias[node.key] = new_ops[-1].key
        else:
            if len(inputs) != 1:
                raise ConversionError(f"No-op layer '{node.layer.name}' has several inputs.")
            alias[node.key] = inputs[0]
    output_key = alias.get(graph.output_keys[0], graph.output_keys[0])
    return ops, output_key


def _input_affine_to_encoder(ops, input_key, options, keras_model):
    """Move an input Rescaling/Normalization that cannot fold exactly into the encoder.

    Folding `W (scale x + shift)` into a zero-padded convolution is wrong at
    the borders (the padding adds zeros where the ANN sees zeros of the
    shifted input), and an affine map followed by padding or pooling has no
    weighted layer to fold into. With analog input the encoder applies the map
    itself, once per call (the input is static), which is exact. Returns the
    encoder's `scale`/`offset` arguments, or None when the map stays (it folds,
    or the encoding is spiking and must refuse it in folding).
    """
    by_key = {op.key: op for op in ops}
    affine = next(
        (op for op in ops if isinstance(op, ir.Affine) and op.inputs == [input_key]), None
    )
    if affine is None or options.input_encoding != "analog":
        return None
    users = ir.consumers(ops, affine.key)
    shifts = bool(np.any(np.asarray(affine.shift) != 0))
    folds = bool(users) and all(
        isinstance(user, ir.Linear)
        and not (shifts and user.kernel.ndim > 2 and user.config.get("padding", "valid") != "valid")
        for user in users
    )
    if folds:
        return None
    frame = tuple(keras_model.inputs[0].shape[1:])
    shape = ()  # one value for every input element
    if affine.channel_axis == "last" and np.size(affine.scale) * np.size(affine.shift) > 1:
        shape = (-1,)
    elif affine.channel_axis == "first":
        shape = (-1,) + (1,) * (len(frame) - 1)
    scale, offset = (np.asarray(v, "float32") for v in (affine.scale, affine.shift))
    ir.replace_input(ops, affine.key, input_key)
    ops.remove(by_key[affine.key])
    return {
        "scale": scale.reshape(shape) if scale.size > 1 else float(scale.reshape(-1)[0]),
        "offset": offset.reshape(shape) if offset.size > 1 else float(offset.reshape(-1)[0]),
    }


def _unfoldable_affines_as_layers(ops):
    """Turn a BatchNormalization with no Dense/Conv to fold into into a layer of its own.

    Pre-activation networks (ResNetV2, DenseNet) apply `BN -> ReLU` to the
    output of an Add or a Concatenate. The per-channel affine map is then a
    depthwise 1x1 convolution (a diagonal Dense on flat inputs) with the BN's
    scale as kernel and its shift as bias, and the ReLU after it fuses into its
    neuron as for any weighted layer: exact, at one synapse per input element.
    """
    by_key = {op.key: op for op in ops}
    for index, affine in enumerate(ops):
        if not isinstance(affine, ir.Affine) or affine.rank not in (2, 4):
            continue
        producer = by_key.get(affine.inputs[0])
        users = ir.consumers(ops, affine.key)
        if isinstance(producer, ir.Linear) and ir.consumers(ops, producer.key) == [affine]:
            continue  # folds into the layer before it
        if users and all(isinstance(op, ir.Linear) for op in users):
            continue  # folds into the layers after it
        channels = affine.scale.size if affine.scale.size > 1 else affine.shift.size
        scale = np.broadcast_to(affine.scale, (channels,)).astype("float32")
        shift = np.broadcast_to(affine.shift, (channels,)).astype("float32")
        if affine.rank == 4:
            spiking_class = snn_layers.SpikingDepthwiseConv2D
            config = {"kernel_size": (1, 1), "name": affine.source}
            if affine.channel_axis == "first":  # made channels-last by layout.py
                config["data_format"] = "channels_first"
            kernel = scale.reshape(1, 1, channels, 1)
        else:
            spiking_class = snn_layers.SpikingDense
            config = {"units": channels, "name": affine.source}
            kernel = np.diag(scale)
        ops[index] = ir.Linear(
            affine.key, affine.inputs, affine.source, spiking_class, config, kernel, shift.copy()
        )
        by_key[affine.key] = ops[index]


def _relu_before_max_pool(ops, output_key):
    """Rewrite `Conv -> MaxPool -> ReLU` as `Conv -> ReLU -> MaxPool`.

    A ReLU, clipped or not, is non-decreasing, so it commutes with a window
    maximum exactly: `relu(max_i x_i) == max_i relu(x_i)`. Moved next to the
    weighted layer it fuses with it into a spiking layer as usual.
    """
    by_key = {op.key: op for op in ops}
    for relu in [op for op in ops if isinstance(op, ir.Relu)]:
        pool = by_key.get(relu.inputs[0])
        if not isinstance(pool, ir.MaxPool) or ir.consumers(ops, pool.key) != [relu]:
            continue
        producer = by_key.get(pool.inputs[0])
        if not isinstance(producer, (ir.Linear, ir.Merge)) or producer.spiking:
            continue
        if ir.consumers(ops, producer.key) != [pool]:
            continue
        ir.replace_input(ops, relu.key, pool.key)
        relu.inputs, pool.inputs = [producer.key], [relu.key]
        ops.remove(relu)
        ops.insert(ops.index(pool), relu)  # keep the list in graph order
        if output_key == relu.key:
            output_key = pool.key
    return output_key


def _fuse_activations(ops, output_key):
    """Merge each ReLU into the weighted layer (or Add) before it; drop the final softmax."""
    by_key = {op.key: op for op in ops}
    for op in list(ops):
        producer = by_key.get(op.inputs[0]) if op.inputs else None
        if isinstance(op, ir.Relu):
            fusable = isinstance(producer, (ir.Linear, ir.Merge)) and not producer.spiking
            if fusable and ir.consumers(ops, producer.key) == [op]:
                producer.spiking, producer.max_value = True, op.max_value
                producer.quantized, producer.shift = op.quantized, op.shift
                producer.levels = op.levels
            elif _nonnegative(producer, by_key) and op.max_value is None:
                pass  # ReLU of spikes (e.g. after pooling) changes nothing
            elif _relu_as_identity_layer(ops, op, by_key):
                continue  # a spiking identity layer now stands for the ReLU
            else:
                raise ConversionError(
                    f"ReLU '{op.source}' follows '{producer.source if producer else 'the input'}'"
                    ", which is not a Dense/Conv/Add whose only consumer is this ReLU; "
                    "spiking neurons fuse a ReLU with the weighted layer before it."
                )
        elif isinstance(op, ir.Softmax):  # softmax or sigmoid
            if op.key != output_key:
                raise ConversionError(
                    f"Layer '{op.source}' applies {op.activation} but is not the model's final "
                    f"layer; a {op.activation} has no spiking form except as the (dropped) "
                    f"final activation. Convert with head='{op.source}' to run it "
                    "and what follows as an ANN on the spiking part's readout."
                )
        else:
            continue
        new_key = op.inputs[0]
        ir.replace_input(ops, op.key, new_key)
        if output_key == op.key:
            output_key = new_key
        ops.remove(op)
    return output_key


def _relu_as_identity_layer(ops, relu, by_key):
    """Replace a ReLU that cannot fuse with a spiking identity layer with that ReLU.

    Xception's residual Add feeds both a ReLU and the next shortcut: the Add
    keeps its value (signed spikes) and the ReLU becomes a 1x1 depthwise
    convolution with kernel 1 and no bias (an identity Dense on flat inputs)
    whose neuron is the ReLU: exact, one synapse per element.
    Returns False (nothing done) when the ReLU's shape is unknown.
    """
    shape = relu.shape
    if shape is None or len(shape) not in (1, 3) or shape[-1] is None:
        return False
    channels = shape[-1]
    if len(shape) == 3:
        spiking_class = snn_layers.SpikingDepthwiseConv2D
        config = {"kernel_size": (1, 1), "name": relu.source}
        kernel = np.ones((1, 1, channels, 1), "float32")
    else:
        spiking_class = snn_layers.SpikingDense
        config = {"units": channels, "name": relu.source}
        kernel = np.eye(channels, dtype="float32")
    identity = ir.Linear(
        relu.key, relu.inputs, relu.source, spiking_class, config, kernel,
        np.zeros(channels, "float32"), spiking=True, max_value=relu.max_value,
        quantized=relu.quantized, shift=relu.shift,
    )
    ops[ops.index(relu)] = identity
    by_key[relu.key] = identity
    return True


def _hand_over_to_head(ops, output_key, tail):
    """Make the spiking part's last layer report its membrane to the ANN head.

    The head needs the activation at the split; the mean current of the last
    layer, passed through that layer's ReLU inside the head, estimates it
    without the spike-count quantisation.
    """
    last = next(op for op in ops if op.key == output_key)
    if not (isinstance(last, (ir.Linear, ir.Merge)) and last.spiking):
        return tail
    last.spiking = False
    inputs = keras.Input(tail.inputs[0].shape[1:])
    outputs = tail(keras.layers.ReLU(max_value=last.max_value)(inputs))
    return keras.Model(inputs, outputs, name=tail.name)


def _nonnegative(op, by_key):
    if isinstance(op, (ir.Linear, ir.Merge)):
        return op.spiking and not op.signed
    if isinstance(op, (ir.Pool, ir.Shape)):
        return all(_nonnegative(by_key.get(key), by_key) for key in op.inputs)
    return False


def _check_kinds(ops, input_key, output_key):
    """Every op's inputs must be something its spiking layer can receive.

    Kinds follow `keras_snn.plan.Carries`, the rules the SpikingModel runs
    by: a weighted layer or Add with a neuron makes spikes, one without makes
    a current (refused as the input of a weighted layer, which has no
    neuron to turn it into spikes), pooling and shape layers pass on what
    they receive.
    """
    kinds = {input_key: Carries.ANALOG}
    by_key = {op.key: op for op in ops}
    tail = _readout_tail(ops, output_key)
    for op in ops:
        inputs = [kinds[key] for key in op.inputs]
        if isinstance(op, ir.Linear) and Carries.CURRENT in inputs:
            _refuse_current(op, by_key)
        elif isinstance(op, ir.Merge) and Carries.ANALOG in inputs:
            raise ConversionError(f"Add '{op.source}' adds the raw input; unsupported.")
        elif isinstance(op, ir.Pool) and Carries.CURRENT in inputs and op.key not in tail:
            _refuse_current(op, by_key)
        elif isinstance(op, ir.Shape) and len(set(inputs)) != 1:
            raise ConversionError(
                f"Layer '{op.source}' mixes spikes with analog values; unsupported."
            )
        if isinstance(op, (ir.Linear, ir.Merge)):
            # Here a weighted layer without neuron is the readout (or feeds
            # the head), so its output counts as a current even when it reads
            # the raw input (a one-layer model): only "no weighted layer at
            # all" leaves the output analog.
            kinds[op.key] = Carries.SPIKES if op.spiking else Carries.CURRENT
        else:
            kinds[op.key] = Carries.passed_on(inputs)
    if kinds[output_key] is Carries.ANALOG:
        raise ConversionError("The model has no weighted layer between its input and output.")


def _sign_linear_layers(ops, output_key):
    """Give every hidden layer without ReLU signed spiking neurons.

    A linear layer or residual Add that is not the readout (MobileNetV2's
    linear bottlenecks and the sums of its residual adds) passes a signed value
    on. A `SignedIF` neuron carries it: positive and negative spikes, its
    ceiling taken from `|activation|`. Two cases need no neuron: a linear
    branch into a spiking Add adds its current there on the Add's scale, and
    the final layer followed only by reshaping and average pooling is the
    readout.
    """
    tail = _readout_tail(ops, output_key)

    def is_readout(op):
        users = ir.consumers(ops, op.key)
        return op.key == output_key or (users and all(user.key in tail for user in users))

    for op in ops:
        if isinstance(op, ir.Merge) and not op.spiking and not is_readout(op):
            op.spiking, op.signed = True, True
    for op in ops:
        if isinstance(op, ir.Linear) and not op.spiking and not is_readout(op):
            users = ir.consumers(ops, op.key)
            if not all(isinstance(user, ir.Merge) and user.spiking for user in users):
                op.spiking, op.signed = True, True


def _signed_values(ops):
    """Keys of the ops whose spikes may be negative (signed layers and what moves them)."""
    signed = set()
    for op in ops:
        if isinstance(op, (ir.Linear, ir.Merge)):
            if op.signed:
                signed.add(op.key)
        elif isinstance(op, (ir.Pool, ir.Shape)) and any(key in signed for key in op.inputs):
            signed.add(op.key)
    return signed


def _readout_tail(ops, output_key):
    """Keys of the linear ops between the last weighted layer and the output.

    The readout is the running mean of its input, and a time average commutes
    with every linear map that acts on one step at a time (Reshape, Flatten,
    padding, average pooling). So a final linear layer followed only by such
    ops (MobileNet's conv_preds -> Reshape -> softmax, or an all-convolutional
    classifier's Conv -> GlobalAveragePooling -> softmax) is still the readout:
    these ops run on its current. Max pooling is not linear and ends the tail.
    """
    by_key = {op.key: op for op in ops}
    tail, key = set(), output_key
    while True:
        op = by_key.get(key)
        linear = isinstance(op, ir.Shape) or (
            isinstance(op, ir.Pool) and not isinstance(op, ir.MaxPool)
        )
        if not linear or len(op.inputs) != 1:
            return tail
        tail.add(key)
        key = op.inputs[0]
        if len(ir.consumers(ops, key)) != 1:  # the current must feed nothing else
            return tail


def _pools_into_events(output_shape):
    """Whether a pooling of spikes passes its means on as graded events (no neuron).

    Where it leaves one position per channel (global pooling, or a window as
    large as the map): the mean over a whole map is far below the ceiling it
    inherits from its input (a channel's 99.99th percentile), and a neuron
    would round it again to a multiple of 1/T. At T=8 that cost the small
    ReLU ResNet 7 points and an untuned strided/GAP network 11.5 before
    calibration, and saved the ResNet 0.04% of its operations
    (benchmarks/RESULTS.md, issue 16).
    A window's mean keeps its inputs' scale: without their neurons the VGG's
    and Conv MNIST's windowed pools gained nothing measurable and the networks
    did 5-6% more operations (graded events where any window member spiked).
    """
    return all(size == 1 for size in output_shape[1:-1])


def _refuse_current(op, by_key):
    raise ConversionError(
        f"Layer '{op.source}' receives the output of a layer without ReLU; spiking "
        "layers receive spikes, so put a ReLU between them."
    )


def _ceiling_from_data(op, options):
    """Whether a spiking op's ceiling must be measured (no usable known bound)."""
    if not (isinstance(op, (ir.Linear, ir.Merge)) and op.spiking):
        return False
    if options.normalization == "none":
        return False
    return options.normalization != "auto" or op.max_value is None


def _measured_when_data(op, options):
    """Whether a spiking op's ceiling is measured when calibration data is given.

    Also a clipped ReLU's (ReLU6, `ReLU(max_value)`): its bound is only an upper
    limit, which trained networks rarely reach (ReLU6 activations mostly stay
    under 1-2), and a ceiling far above the activations leaves the neurons
    firing far below capacity. The data's percentile (clipped by the bound in
    the ANN forward pass, so never above it) is the better ceiling; the bound
    remains the fallback without data. A QReLU's bound is exact: it is kept.
    """
    if _ceiling_from_data(op, options):
        return True
    return (
        options.normalization == "auto"
        and isinstance(op, (ir.Linear, ir.Merge)) and op.spiking
        and op.max_value is not None and not op.quantized
    )


def _layers_needing_data(ops, options):
    return [f"'{op.source}'" for op in ops if _ceiling_from_data(op, options)]


# ----------------------------------------------------------------- network
class _NetworkBuilder:
    """Builds the spiking network from the fused ops, then normalises it."""

    def __init__(self, ops, input_key, output_key, keras_model, options, layout=None,
                 input_affine=None):
        self.ops, self.input_key, self.output_key = ops, input_key, output_key
        self.options = options
        self.input_affine = input_affine or {}  # AnalogInput's scale and offset, if any
        self.layout = layout  # a layout.ChannelsLastPlan for channels_first models
        self.frame_shape = tuple(keras_model.inputs[0].shape[1:])
        self.layers = {}  # op key -> spiking layer
        self.names = set()

    def _name(self, source):
        name, index = source, 1
        while name in self.names:
            name, index = f"{source}_{index}", index + 1
        self.names.add(name)
        return name

    def build(self):
        options = self.options
        inputs = keras.Input(self.frame_shape, name=self._name("input"))
        encoder = {
            "analog": lambda: snn_layers.AnalogInput(
                name=self._name("analog_input"), **self.input_affine
            ),
            "spiking": lambda: snn_layers.SpikingInput(
                neuron=options.make_input_neuron(),
                name=self._name("spiking_input"),
            ),
            "poisson": lambda: snn_layers.PoissonInput(seed=0, name=self._name("poisson_input")),
        }[options.input_encoding]()
        self.encoder = encoder
        self.signed = _signed_values(self.ops)
        encoded = self._change_layout(encoder(inputs), "input_dims", "to_channels_last")
        tensors = {self.input_key: encoded}
        self.held_frame_shape = tuple(tensors[self.input_key].shape[1:])
        spikes = {self.input_key: options.input_encoding != "analog"}
        for op in self.ops:
            x = [tensors[key] for key in op.inputs]
            x = x if len(x) > 1 else x[0]
            input_spikes = all(spikes[key] for key in op.inputs)
            layer = self._make_layer(op, input_spikes, x)
            self.layers[op.key] = layer
            tensors[op.key] = layer(x)
            # A pooling without neuron passes spikes on as graded events.
            spikes[op.key] = getattr(layer, "emits_spikes", input_spikes) or (
                getattr(layer, "averages_inputs", False) and input_spikes)
            if isinstance(op, ir.Linear):
                layer.kernel.assign(op.kernel)
                layer.bias.assign(
                    np.zeros(layer.bias.shape, "float32") if op.bias is None else op.bias
                )
        last = self._change_layout(tensors[self.output_key], "output_dims", "to_channels_first")
        outputs = snn_layers.Readout(name=self._name("readout"))(last)
        self.network = keras.Model(inputs, outputs, name="spiking_network")

    def _change_layout(self, tensor, where, name):
        """A channels_first model's one transpose at the input (or output), if any."""
        dims = getattr(self.layout, where, None)
        if dims is None:
            return tensor
        return keras.layers.Permute(dims, name=self._name(name))(tensor)

    def _make_layer(self, op, input_spikes, inputs):
        name = self._name(op.source)
        neuron = None
        if getattr(op, "spiking", False):
            signed = getattr(op, "signed", False)
            neuron = (
                self.options.make_signed_neuron() if signed else self.options.make_neuron(op)
            )
        if isinstance(op, ir.Linear):
            return op.spiking_class(**{**op.config, "name": name}, neuron=neuron)
        if isinstance(op, ir.Merge):
            return snn_layers.SpikingAdd(neuron=neuron, name=name)
        if isinstance(op, ir.MaxPool):
            # Spikes: the window max of cumulative counts; the analog input:
            # the window max of the values (static, so computed once).
            return op.spiking_class(**{**op.config, "name": name}, cumulative=input_spikes)
        if isinstance(op, ir.Pool):
            # Pooling spikes fires like any neuron (a signed one on signed
            # spikes), except where it leaves one position (global pooling,
            # `_pools_into_events`); pooling the analog input is a fixed
            # linear map computed once. Both have no neuron.
            layer = op.spiking_class(**{**op.config, "name": name}, neuron=None)
            if not input_spikes or _pools_into_events(layer.compute_output_shape(inputs.shape)):
                return layer
            signed = any(key in self.signed for key in op.inputs)
            pool_neuron = (
                self.options.make_signed_neuron() if signed else self.options.make_neuron(op)
            )
            return op.spiking_class(**{**op.config, "name": name}, neuron=pool_neuron)
        return op.layer

    def calibration_targets(self):
        """Layers whose bias bias calibration corrects, from the input on."""
        by_key = {op.key: op for op in self.ops}
        targets = []
        for op in self.ops:
            layer = self.layers[op.key]
            bias_layer = None
            if isinstance(op, ir.Linear) and (op.spiking or op.key == self.output_key):
                bias_layer = layer
            elif isinstance(op, ir.Merge) and op.spiking:
                # An Add has no bias: its non-spiking branch's bias feeds it with weight 1.
                branch = [k for k in op.inputs if isinstance(by_key.get(k), ir.Linear)
                          and not by_key[k].spiking and len(ir.consumers(self.ops, k)) == 1]
                bias_layer = self.layers[branch[0]] if branch else None
            if bias_layer is None:
                continue
            quantizer = (op.levels, op.shift) if getattr(op, "quantized", False) else None
            targets.append(bias_calibration_lib.CalibrationTarget(
                layer.name, bias_layer, quantizer, bool(getattr(op, "signed", False))
            ))
        return targets

    # ----------------------------------------------------------- ceilings
    def normalize(self, calibration_data):
        """Measure the ceilings and rescale every layer (threshold 1)."""
        options = self.options
        graph = layer_graph(self.network)
        max_values = {
            op.key: op.max_value for op in self.ops if isinstance(op, (ir.Linear, ir.Merge))
        }
        # Each spiking layer is called once, so its graph key is its name.
        keys = {op.key: self.layers[op.key].name for op in self.ops}
        data_keys = [
            op.key for op in self.ops
            if _ceiling_from_data(op, options)
            or (calibration_data is not None and _measured_when_data(op, options))
        ]
        by_key = {op.key: op for op in self.ops}
        input_ceiling = 1.0
        encoded = options.input_encoding != "analog"
        estimator = CeilingEstimator(options.percentile, options.per_channel)
        # One input ceiling (an encoder has one threshold), measured over every
        # value: the batch's last axis is not the channels in channels_first models.
        input_estimator = CeilingEstimator(options.percentile, per_channel=False)
        if calibration_data is not None and options.normalization != "none" and (data_keys or encoded):
            reader = CalibrationReader(calibration_data, self.frame_shape)
            negative, lowest = 0, 0.0  # inputs a spike encoder cannot represent
            for batch in reader:
                values = analog_forward(graph, batch, {keys[k]: v for k, v in max_values.items()})
                for key in data_keys:
                    value = values[keys[key]]  # a signed layer's ceiling bounds |value|
                    estimator.add(key, np.abs(value) if by_key[key].signed else value)
                if encoded:
                    input_estimator.add("__input__", np.maximum(batch, 0))
                    negative += int(np.count_nonzero(batch < 0))
                    lowest = min(lowest, float(batch.min()))
            reader.finish()
            if negative:
                _refuse_negative_encoded_input(options.input_encoding, negative, reader, lowest)
            # A clipped ReLU the data never activated keeps its bound: no warning.
            data_keys = [
                key for key in data_keys
                if _ceiling_from_data(by_key[key], options) or estimator.measured(key)
            ]
            _warn_unmeasured_ceilings(
                reader, estimator, input_estimator, data_keys, encoded, self.ops
            )
            if encoded:
                input_ceiling = float(input_estimator.ceiling("__input__").max())
        ceilings = {
            key: estimator.ceiling(key) if key in data_keys else None for key in keys
        }
        self._rescale(ceilings, input_ceiling)

    def _own_ceiling(self, op, measured):
        """lambda of a spiking op: measured, or its ReLU bound, or 1 (none)."""
        if measured is not None:
            return measured
        if self.options.normalization != "none" and op.max_value is not None:
            return np.array([op.max_value], "float32")
        return np.array([1.0], "float32")

    def _rescale(self, ceilings, input_ceiling):
        options = self.options
        spike_max = float(options.spike_max)
        by_key = {op.key: op for op in self.ops}
        # A non-spiking branch into a residual Add is scaled by the Add's lambda,
        # so the Add sums both branches on one scale (branch weight 1).
        branch_scale = {}
        for op in self.ops:
            if isinstance(op, ir.Merge) and op.spiking:
                for key in op.inputs:
                    producer = by_key.get(key)
                    if isinstance(producer, ir.Linear) and not producer.spiking:
                        branch_scale[key] = self._own_ceiling(op, ceilings[op.key]) / spike_max
        # Per-sample maps of the value one spike stands for (lambda / S_max).
        input_scale = input_ceiling  # 1 for analog input: the current is the input itself
        scales = {self.input_key: np.full(self.held_frame_shape, input_scale, "float32")}
        if options.input_encoding == "spiking":
            self.encoder.threshold = input_scale
        elif options.input_encoding == "poisson":
            self.encoder.gain = 1.0 / input_scale
        for op in self.ops:
            layer = self.layers[op.key]
            in_maps = [scales[key] for key in op.inputs]
            shapes = [(None,) + m.shape for m in in_maps]
            out_shape = tuple(layer.compute_output_shape(shapes if len(shapes) > 1 else shapes[0]))[1:]
            if isinstance(op, ir.Linear):
                if op.spiking:
                    out_vec = self._own_ceiling(op, ceilings[op.key]) / spike_max
                else:  # an Add branch, or the readout layer (logits in the ANN's units)
                    out_vec = branch_scale.get(op.key, np.ones(1, "float32"))
                _scale_linear(layer, op, _channel_vector(in_maps[0], op), out_vec)
            elif isinstance(op, ir.Merge):
                out_vec = np.ones(1, "float32")
                if op.spiking:
                    out_vec = self._own_ceiling(op, ceilings[op.key]) / spike_max
                channels = np.ones(out_shape[-1], "float32")
                weights = [
                    channels if key in branch_scale
                    else channels * _channel_vector(in_map, op) / out_vec
                    for key, in_map in zip(op.inputs, in_maps)
                ]
                layer.branch_weights.assign(np.stack(weights).astype("float32"))
            elif isinstance(op, ir.Pool):
                # Mean and max act within a channel: both keep its scale.
                out_vec = _channel_vector(in_maps[0], op)
            else:  # a shape layer moves the scale map like the values
                batch = [m[None] for m in in_maps]
                scales[op.key] = np.asarray(layer(batch if len(batch) > 1 else batch[0]))[0]
                continue
            scales[op.key] = np.broadcast_to(out_vec, out_shape).astype("float32")


def _refuse_negative_encoded_input(encoding, negative, reader, lowest):
    """Spiking and Poisson input fire at rate x / ceiling: a negative x never fires.

    The network would see 0 wherever the ANN saw a negative input (a signed
    signal, standardised images), which silently costs accuracy.
    """
    raise ConversionError(
        f"input_encoding='{encoding}' encodes only non-negative inputs (a negative value "
        f"never fires and reads as 0), but {negative} of the {reader.values} calibration input "
        f"values are negative (the lowest is {lowest:.4g}). Use input_encoding='analog' (the "
        "input is the first layer's current, any sign), or shift the inputs to be "
        "non-negative before training."
    )


def _warn_unmeasured_ceilings(reader, estimator, input_estimator, data_keys, encoded, ops):
    """Warn about ceilings the calibration data could not measure.

    A layer that never produced a positive activation on the calibration
    data gets the neutral ceiling 1, which is a guess, not a measurement:
    its spikes may saturate or never come on real data.
    """
    sources = {op.key: op.source for op in ops}
    silent = [f"'{sources[key]}'" for key in data_keys if not estimator.measured(key)]
    if encoded and not input_estimator.measured("__input__"):
        silent.insert(0, "the input encoder")
    if not silent:
        return
    cause = "is all zeros" if reader.all_zero else "never activates them"
    warnings.warn(
        f"The calibration data {cause}: the activation ceilings of {', '.join(silent)} could "
        "not be measured and were set to 1. Calibrate with representative inputs.",
        stacklevel=4,
    )


def _channel_vector(scale_map, op):
    """Per-channel value of a scale map, which must be uniform over space."""
    columns = np.asarray(scale_map, "float32").reshape(-1, scale_map.shape[-1])
    live = np.ma.masked_less_equal(columns, 0.0)  # zero padding carries no scale
    high, low = live.max(axis=0).filled(1.0), live.min(axis=0).filled(1.0)
    if np.any(high - low > 1e-6 * high):
        raise ConversionError(
            f"Layer '{op.source}' receives inputs whose scale varies over space "
            "(a reshape between convolutions?); unsupported."
        )
    return np.asarray(high, "float32")


def _scale_linear(layer, op, in_vec, out_vec):
    """`W <- W * lambda_in / lambda_out`, `b <- b / lambda_out` (threshold 1)."""
    kernel = op.kernel
    in_axes, out_axes = op.channel_axes
    if np.all(in_vec == in_vec.flat[0]):
        in_vec = in_vec[:1]  # one scale: also right for grouped convolutions
    in_channels = int(np.prod([kernel.shape[axis] for axis in in_axes]))
    if in_vec.size not in (1, in_channels):
        raise ConversionError(
            f"Layer '{op.source}' has per-channel input scales that do not match its "
            "kernel (grouped convolution after per-channel normalisation); use "
            "per_channel=False."
        )
    kernel = kernel * ir.along_axes(in_vec, kernel.shape, in_axes)
    out_channels = op.output_channels
    out = np.broadcast_to(out_vec, (out_channels,))
    kernel = kernel / ir.along_axes(out, kernel.shape, out_axes)
    bias = np.zeros(out_channels, "float32") if op.bias is None else op.bias
    layer.kernel.assign(kernel.astype("float32"))
    layer.bias.assign((bias / out).astype("float32"))
