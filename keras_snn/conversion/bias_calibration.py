"""SNN bias calibration: shift each layer's bias by its mean rate error.

A converted layer's spike rate after T steps differs from the ANN activation
it stands for (rounding at resolution 1/T, a neuron that fires before its
input has settled, the error carried in from the layers before it). Much of
that error is systematic: its mean over the data is not zero per channel, and
in deep networks (residual Adds) these means add up layer after layer. Li et
al., "A Free Lunch From ANN: Towards Efficient, Accurate Spiking Neural
Networks Calibration" (ICML 2021), remove them after conversion ("light
calibration"): from the input to the output, run the SNN for the T steps it
will be used with on calibration data, compare each layer's mean output per
channel with the ANN's activation on the same data, and add the difference to
the layer's bias. Layer k is measured after layers 1..k-1 are corrected, so
it also absorbs what they could not fix.

Here every quantity is in the spiking network's units (after normalisation:
a spike stands for lambda / spike_max, so the ANN activation is
`clip(z, 0, spike_max)` of the normalised current z, and for a QReLU its level
`spike_max / L * min(floor(z L / spike_max + phi), L)`). A spiking layer's
mean output over T steps is its rate; a bias shift of d moves the rate of an
unsaturated neuron by d per step, so the shift is the mean error itself. A
residual Add has no bias: it is corrected through the bias of its non-spiking
branch (the convolution that feeds the Add with weight 1), and skipped when it
has none. The readout layer's bias is corrected last, against the ANN logits.

A bias only moves a channel's mean. In deep networks at a few steps the
spiking output also follows the ANN activation with a slope below one (the
last two gain-calibrated convolutions of the small QReLU ResNet at T=8: mean
slopes 0.83-0.92; the SNN under-responds to inputs whose spikes arrive late),
an error that varies from sample to sample and which no bias removes. Li et
al.'s advanced pipeline calibrates the weights for it (least squares on each
layer's input); here its per-channel diagonal does: before its bias, a
weighted layer that is its own bias layer (the readout included: a class
whose logit is damped more than the others' loses to them) has each output
channel's kernel and bias divided by that channel's gain, the least-squares
slope of its spiking output on the ANN value over the calibration samples
and positions; then the bias absorbs what is left of the mean. A channel
that does not vary on the calibration data keeps gain 1, and gains are kept
within `_GAIN_RANGE`. The Add's branch is not scaled (a branch gain would not
scale the sum), nor a depthwise kernel (its output channels are not one axis).

Where to start the membranes is a third lever at a few steps: charge present
at step 0 makes up for input spikes that arrive late in deep layers, which a
bias spreads over all steps. Where the start is a free choice (an eq. 1 QReLU
network, started off its shift; a ReLU network) `calibrate_network`
calibrates from each of a few starts and keeps the one whose network's top-1
agrees with the ANN's on the most calibration inputs (Hao et al., ICLR 2023,
"offset spikes", correct one spike too many or too few by shifting the
initial membrane; here one shift for the whole network, chosen by
measurement).
"""

import dataclasses
import itertools

import keras
import numpy as np

from keras_snn.conversion.calibration import analog_forward
from keras_snn.conversion.calibration import calibration_batches
from keras_snn.conversion.errors import ConversionError
from keras_snn.graph import layer_graph
from keras_snn.layers.readout import Readout
from keras_snn.spiking_model import SpikingModel

BIAS_CALIBRATION_MODES = ("auto", True, False)
# Samples of the calibration data used: Li et al. use 1024; a few hundred keep
# the per-channel means within a few percent of a spike per step, and the
# calibration within seconds.
_SAMPLES = 256
_BATCH = 128
# Gains outside this range are clipped: a channel that hardly follows the ANN
# on the calibration data is not amplified (nor damped) by more than 2x.
_GAIN_RANGE = (0.5, 2.0)
# Initial membranes (fractions of the threshold) "auto" tries for an eq. 1
# QReLU network started off its shift. theta/2 first: ties keep it. Which
# start suits a deep network at a few steps varies from training to training
# (the small ResNet at T=8 on 10000 test images: 0.4 gained 0.84 points on one
# of three trainings, 0.45 and 0.5 were best on the others); 0.35 and below
# lost 4-12 points there (benchmarks/RESULTS.md, issue 16).
AUTO_STARTS = (0.5, 0.45, 0.4)
# ...and for a network without QReLU layers. Which start is better varies as
# much: on 10000 test images at T=4-8, 0.6 gained a long-trained small ReLU
# ResNet 1.3-1.9 points over 0.5 and cost a shorter-trained one 1.4-3.0; the
# VGGs and Conv MNIST moved by -0.13 to +0.35, and at T=16 every network by at
# most 0.25 (benchmarks/RESULTS.md, issue 16, tenth pass).
AUTO_RELU_STARTS = (0.5, 0.6)
# The start is chosen by the top-1 agreement of the calibrated network with
# the ANN on up to this many calibration inputs (the first _SAMPLES of them
# fit the biases): the readout's squared error on the fitted samples chose
# 0.5 for that ResNet at T=4 where 0.6 agreed on 2.3% more held-out inputs
# and gained 1.3 test points. Fewer where the inputs are large (_CHOICE_BYTES).
_CHOICE_SAMPLES = 2048
_CHOICE_BYTES = 256 * 2**20


@dataclasses.dataclass
class CalibrationTarget:
    """One corrected layer.

    Attributes:
        tap: name of the layer whose output is compared (a spiking layer, or
            the readout's input layer).
        bias_layer: the layer whose bias absorbs the error (the tap itself,
            or the non-spiking branch into an Add).
        quantizer: `(levels, shift)` of a QReLU layer (its ANN activation is
            quantised), or None.
        signed: a signed neuron (the ANN value is linear, clipped to
            `+-spike_max`).
    """

    tap: str
    bias_layer: object
    quantizer: tuple = None
    signed: bool = False


def check_bias_calibration(value):
    """Validate the `bias_calibration` argument of `convert_model`."""
    if not any(value is mode or (isinstance(mode, str) and value == mode)
               for mode in BIAS_CALIBRATION_MODES):
        raise ConversionError(
            "`bias_calibration` must be 'auto', True or False; received "
            f"{value!r}."
        )
    return value


def calibrate_biases(network, targets, inputs, timesteps, spike_max, keep_if_better, gains=True):
    """Correct the targets' gains and biases in order, in place; return a report.

    Args:
        network: the normalised spiking network (its layers are changed).
        targets: `CalibrationTarget`s in topological order.
        inputs: calibration inputs (NumPy array, the network's input shape);
            the first 256 are used.
        timesteps: the simulation length the biases are calibrated for.
        spike_max: the largest spike (the normalised ceiling).
        keep_if_better: keep the new weights only if they bring the SNN's
            readout closer to the ANN's logits on `inputs` (mean squared
            error); otherwise the old weights are restored.
        gains: calibrate the gains of the weighted layers too (False: the
            biases only, as Li et al.'s light calibration).

    Returns:
        dict with "errors_before" and "errors_after" (mean absolute
        per-channel error of every target, in network units, before and
        after the correction), "gains" (the mean gain of every target whose
        kernel was scaled, 1.0 for the others),
        "readout_mse_before"/"readout_mse_after" and "kept".
    """
    inputs = np.asarray(inputs, "float32")[:_SAMPLES]
    readout_input = _producer(network, network.layers[-1])
    taps = [network.get_layer(target.tap) for target in targets] + [readout_input]
    quantizers = {t.tap: t.quantizer for t in targets if t.quantizer is not None}
    ann = _ann_values(network, inputs, spike_max, quantizers)
    wanted = [
        _per_channel(np.clip(ann[t.tap], -spike_max, spike_max) if t.signed else ann[t.tap])
        for t in targets
    ]
    ann_logits = ann[readout_input.name].reshape(len(inputs), -1)
    probe, slices = _probe(network, taps, timesteps)
    scaled = [gains and _scalable(target, network) for target in targets]
    original = [
        [target.bias_layer.bias.numpy()] + ([target.bias_layer.kernel.numpy()] if scale else [])
        for target, scale in zip(targets, scaled)
    ]

    def measure():
        rates = _run(probe, inputs, timesteps)
        outputs = [_per_channel(rates[:, s].reshape((len(inputs),) + tuple(layer.output.shape[1:])))
                   for s, layer in zip(slices[:-1], taps[:-1])]
        return outputs, rates[:, slices[-1]]

    outputs, logits = measure()
    errors_before = [_mean_abs_error(a, o) for a, o in zip(wanted, outputs)]
    mse_before = float(np.mean((logits - ann_logits) ** 2))
    mean_gains = [1.0] * len(targets)
    # One pass: a second one halved the remaining per-channel errors of the
    # measured ResNet but did not change its accuracy (and doubles the cost).
    for index, target in enumerate(targets):
        layer = target.bias_layer
        if index > 0:  # layer k is measured after layers 1..k-1 are corrected
            outputs, logits = measure()
        if scaled[index]:
            gain = channel_gains(wanted[index], outputs[index])
            layer.kernel.assign((layer.kernel.numpy() / gain).astype("float32"))
            layer.bias.assign((layer.bias.numpy() / gain).astype("float32"))
            mean_gains[index] = float(np.mean(gain))
            outputs, logits = measure()  # the mean moved with the gain
        shift = (wanted[index].mean(axis=0) - outputs[index].mean(axis=0)).reshape(layer.bias.shape)
        layer.bias.assign((layer.bias.numpy() + shift).astype("float32"))
    outputs, logits = measure()
    errors_after = [_mean_abs_error(a, o) for a, o in zip(wanted, outputs)]
    mse_after = float(np.mean((logits - ann_logits) ** 2))
    kept = not keep_if_better or mse_after <= mse_before
    if not kept:
        for target, values in zip(targets, original):
            target.bias_layer.bias.assign(values[0])
            if len(values) > 1:
                target.bias_layer.kernel.assign(values[1])
    return {
        "errors_before": errors_before, "errors_after": errors_after, "gains": mean_gains,
        "readout_mse_before": mse_before, "readout_mse_after": mse_after, "kept": kept,
    }


def calibrate_network(network, targets, inputs, timesteps, spike_max, auto, starts=(None,),
                      by_decisions=True):
    """Calibrate `network` in place, choosing its neurons' start among `starts`.

    For each start (None: the neurons as they are) the network's weights as
    given are calibrated on the first 256 `inputs` (`calibrate_biases`; with
    `auto`, kept only if the readout comes closer to the ANN's logits, and if
    the gains do not, the biases alone are tried). With several starts the
    one whose calibrated network decides like the ANN on the most `inputs`
    (the top class of the readout after `timesteps` steps, per position for
    a feature-map output; the sign of a single output) is kept, with its
    weights; among equal agreements, the one whose readout is closest to the
    ANN's logits, then the earlier one. The ANN is the network's own analog
    pass, ceilings included (the Keras model up to clipping at them).
    Without `by_decisions` (a readout that feeds a head, not class scores)
    the readout's closeness alone ranks them.

    Args:
        network, targets, timesteps, spike_max: as for `calibrate_biases`.
        inputs: calibration inputs (NumPy array, the network's input shape).
        auto: keep only what brings the readout closer (`bias_calibration`
            "auto"); False keeps the calibration as it comes.
        starts: initial membranes (fractions of the threshold) tried for
            every neuron that is not signed (`set_initial_membrane`); with
            several, each is calibrated from the weights as given.
        by_decisions: rank the starts by agreement in decisions first.

    Returns:
        The start of the kept network.
    """
    if len(starts) == 1:  # nothing to compare: no weights to keep aside
        if starts[0] is not None:
            set_initial_membrane(network, starts[0])
        _calibrate_once(network, targets, inputs, timesteps, spike_max, auto)
        return starts[0]
    inputs = np.asarray(inputs, "float32")
    readout_input = _producer(network, network.layers[-1])
    classes = readout_input.output.shape[-1]
    if by_decisions:
        quantizers = {t.tap: t.quantizer for t in targets if t.quantizer is not None}
        ann_decisions = _decisions(_ann_values(
            network, inputs, spike_max, quantizers, keep=readout_input.name
        )[readout_input.name], len(inputs), classes)
    weights = network.get_weights()
    best = None
    for start in starts:
        set_initial_membrane(network, start)
        network.set_weights(weights)
        mse = _calibrate_once(network, targets, inputs, timesteps, spike_max, auto)
        agreement = 0.0
        if by_decisions:
            probe, _ = _probe(network, [readout_input], timesteps)  # traces the new neurons
            decisions = _decisions(_run(probe, inputs, timesteps), len(inputs), classes)
            agreement = np.mean(decisions == ann_decisions)
        if best is None or (agreement, -mse) > best[1]:
            best = (start, (agreement, -mse), network.get_weights())
    set_initial_membrane(network, best[0])
    network.set_weights(best[2])
    return best[0]


def _decisions(values, items, classes):
    """What a readout decides per item and position: the top class along the
    last axis, or the sign of a single output (a sigmoid's decision at 0)."""
    values = np.reshape(values, (items, -1, classes))
    return values[..., 0] > 0 if classes == 1 else values.argmax(axis=-1)


def _calibrate_once(network, targets, inputs, timesteps, spike_max, auto):
    """Gains and biases (or, under `auto`, the biases alone where the gains do not help).

    Returns the readout's mean squared error to the ANN's logits afterwards.
    """
    report = calibrate_biases(network, targets, inputs, timesteps, spike_max, keep_if_better=auto)
    if report["kept"]:
        return report["readout_mse_after"]
    # Gains too did not bring the readout closer (the eq. 1 ResNet at T=8,
    # benchmarks/RESULTS.md): the biases alone may still do.
    report = calibrate_biases(
        network, targets, inputs, timesteps, spike_max, keep_if_better=True, gains=False
    )
    return report["readout_mse_after" if report["kept"] else "readout_mse_before"]


def set_initial_membrane(network, start):
    """Start every neuron of `network` that is not signed at `start` x its threshold.

    Each layer gets a new neuron of the same class and configuration (signed
    neurons keep theirs: they start at 0 to round both signs alike).
    """
    for layer in network.layers:
        neuron = getattr(layer, "neuron", None)
        if neuron is not None and not getattr(neuron, "signed", False):
            layer.neuron = type(neuron).from_config(
                {**neuron.get_config(), "initial_membrane": start}
            )


def channel_gains(wanted, measured):
    """Per channel, the least-squares slope of `measured` on `wanted`.

    Args:
        wanted: the ANN values, shape `(items, channels)`.
        measured: the spiking outputs for the same items.

    Returns:
        float32 array `(channels,)`: the slope, 1.0 for a channel whose
        ANN value does not vary, clipped to `_GAIN_RANGE`.

    Example:

    >>> import numpy as np
    >>> wanted = np.array([[0.0, 1.0], [1.0, 1.0], [2.0, 1.0]])
    >>> [round(float(g), 3) for g in channel_gains(wanted, 0.8 * wanted + 0.1)]
    [0.8, 1.0]
    """
    centred = wanted - wanted.mean(axis=0)
    spread = np.sum(centred**2, axis=0)
    covariance = np.sum(centred * (measured - measured.mean(axis=0)), axis=0)
    varies = spread > 1e-8 * len(wanted)
    slope = np.where(varies, covariance / np.where(varies, spread, 1.0), 1.0)
    return np.clip(slope, *_GAIN_RANGE).astype("float32")


def first_samples(calibration_data, choosing_start=False):
    """`(samples, data)`: the first calibration inputs as one array, and the
    calibration data to read again from its start.

    The first `_SAMPLES` inputs, or for choosing the start up to
    `_CHOICE_SAMPLES`, as many as fit in `_CHOICE_BYTES` (at least
    `_SAMPLES`). Reading stops at a batch whose input shape differs from the
    first's (normalisation's reader names that error). A one-shot iterator
    (a generator) is read once: what was taken from it is put back in front
    of the rest.
    """
    count = _CHOICE_SAMPLES if choosing_start else _SAMPLES
    iter_once = (
        not isinstance(calibration_data, tuple)
        and not hasattr(calibration_data, "__array__")
        and iter(calibration_data) is calibration_data
    )
    taken, parts, total = [], [], 0
    source = calibration_data if iter_once else calibration_batches(calibration_data)

    def batches():  # what is taken from a one-shot iterator is kept, to put back
        for element in source:
            taken.append(element)
            yield from calibration_batches([element]) if iter_once else [element]

    for batch in batches():
        batch = np.asarray(batch, "float32")
        if parts and batch.shape[1:] != parts[0].shape[1:]:
            break
        if not parts and choosing_start:
            fitting = _CHOICE_BYTES // max(batch[:1].nbytes, 1)
            count = min(_CHOICE_SAMPLES, max(_SAMPLES, fitting))
        parts.append(batch[: count - total])
        total += len(parts[-1])
        if total >= count:
            break
    if not parts:
        raise ConversionError("calibration_data yielded no batches.")
    rest = itertools.chain(taken, calibration_data) if iter_once else calibration_data
    return np.concatenate(parts), rest


def _producer(network, layer):
    """The layer feeding `layer` (the converter's graph: one input each)."""
    graph = layer_graph(network)
    node = next(n for n in graph.nodes if n.layer is layer)
    return next(n.layer for n in graph.nodes if n.key == node.input_keys[0])


def _ann_values(network, inputs, spike_max, quantizers, keep=None):
    """The ANN's activations in network units, QReLU levels included (only `keep`'s if given)."""
    graph = layer_graph(network)
    clip = {node.key: spike_max for node in graph.nodes}
    values = {}
    for start in range(0, len(inputs), _BATCH):
        batch = analog_forward(graph, inputs[start : start + _BATCH], clip, quantizers)
        for key, value in batch.items():
            if keep is None or key == keep:
                values.setdefault(key, []).append(np.asarray(value))
    return {key: np.concatenate(parts) for key, parts in values.items()}


def _per_channel(values):
    """`(items, channels)`: samples and positions as items (the last axis is the channel)."""
    return values.reshape(-1, values.shape[-1])


def _mean_abs_error(wanted, measured):
    """Mean over channels of |mean ANN value - mean spiking output|."""
    return float(np.mean(np.abs(wanted.mean(axis=0) - measured.mean(axis=0))))


def _scalable(target, network):
    """Whether the target's gain can be calibrated through its own kernel.

    Only a weighted layer that is its own bias layer (not the branch into an
    Add, whose sum a branch gain would not scale) with one output-channel axis
    last in its kernel (Dense, convolutions; not a depthwise kernel).
    """
    layer = target.bias_layer
    if layer is not network.get_layer(target.tap) or getattr(layer, "kernel", None) is None:
        return False
    axes = getattr(layer, "kernel_channel_axes", None)
    rank = len(layer.kernel.shape)
    return axes is not None and axes(rank)[1] == (rank - 1,) and (
        layer.kernel.shape[-1] == layer.bias.shape[-1])


def _probe(network, layers, timesteps):
    """A SpikingModel reading out the flattened outputs of `layers` (shared weights)."""
    # Names of their own: automatic ones may repeat the network's (a loaded ANN's).
    taken = {layer.name for layer in network.layers}

    def name(base):
        index = 0
        while f"{base}_{index}" in taken:
            index += 1
        taken.add(f"{base}_{index}")
        return f"{base}_{index}"

    flat = [keras.layers.Flatten(name=name("calibration_flatten"))(layer.output)
            for layer in layers]
    sizes = [int(np.prod(layer.output.shape[1:])) for layer in layers]
    joined = (keras.layers.Concatenate(name=name("calibration_concatenate"))(flat)
              if len(flat) > 1 else flat[0])
    model = keras.Model(network.inputs, Readout(name=name("calibration_readout"))(joined))
    starts = np.cumsum([0] + sizes)
    slices = [slice(int(a), int(b)) for a, b in zip(starts[:-1], starts[1:])]
    return SpikingModel(model, timesteps=timesteps), slices


def _run(probe, inputs, timesteps):
    """Mean output over `timesteps` steps, per sample and flattened neuron."""
    parts = []
    for start in range(0, len(inputs), _BATCH):
        out = probe(inputs[start : start + _BATCH], timesteps=timesteps, readout_every=timesteps)
        parts.append(np.asarray(out)[:, -1])
    return np.concatenate(parts)
