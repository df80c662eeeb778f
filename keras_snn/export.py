"""Export a SpikingModel: a TensorFlow SavedModel for serving, or a NIR graph.

The SavedModel holds the whole compiled time loop and the weights. It loads
with `tf.saved_model.load` in a process that imports only TensorFlow (no
keras_snn, no Keras code needed), and serves through TF Serving: the
`serving_default` signature (also named `serve`) takes `inputs`, a batch of
any size, and returns `readout` `(batch, T, classes)` and `synaptic_ops`
`(batch, T)`.
"""

import keras
import numpy as np
import tensorflow as tf

from keras_snn import layers as snn_layers
from keras_snn import neurons as neurons_lib
from keras_snn.graph import layer_graph

_MAX_POOLING = (
    snn_layers.SpikingMaxPooling1D,
    snn_layers.SpikingMaxPooling2D,
    snn_layers.SpikingGlobalMaxPooling1D,
    snn_layers.SpikingGlobalMaxPooling2D,
)


def export_saved_model(snn, filepath, timesteps=None, verbose=False):
    """Write `snn` as a SavedModel with a serving signature.

    Args:
        snn: a non-stateful `keras_snn.SpikingModel`.
        filepath: directory to write.
        timesteps: steps the served model runs (default: the model's; for
            event input, the number of frames given).
        verbose: print the exported variables.

    Returns:
        `filepath`.

    Raises:
        ValueError: for a stateful model (its state lives outside the graph).

    Example (in a fresh process, without keras_snn):

        served = tf.saved_model.load(filepath)
        out = served.signatures["serving_default"](inputs=tf.constant(x))
        out["readout"], out["synaptic_ops"]
    """
    if snn.stateful:
        raise ValueError(
            "A stateful SpikingModel keeps its state outside the graph and cannot be "
            "served; export a stateful=False copy: snn.with_options(stateful=False)."
        )
    per_call_steps = None if timesteps is None else int(timesteps)
    shape = snn.network.inputs[0].shape[1:]
    if snn.expects_sequence:
        shape = (None,) + tuple(shape)  # (batch, T, *frame)

    def serve(inputs):
        record = snn.run(inputs, timesteps=per_call_steps)
        return {"readout": record["readout"], "synaptic_ops": record["synaptic_ops"]}

    archive = keras.export.ExportArchive()
    archive.track(snn)
    archive.add_endpoint(
        "serve",
        serve,
        input_signature=[tf.TensorSpec((None, *shape), snn.compute_dtype, name="inputs")],
    )
    archive.write_out(filepath, verbose=verbose)
    return filepath


# --------------------------------------------------------------------- NIR
class NIRExportError(ValueError):
    """A SpikingModel (or a layer of it) that NIR cannot represent as it runs here."""


def export_nir(snn, filepath, approximate=False):
    """Write `snn` as a Neuromorphic Intermediate Representation (NIR) graph.

    Nodes: `Input`, `Affine` (Dense), `Conv1d`/`Conv2d` (depthwise as grouped),
    `AvgPool2d`, `Flatten`, `Scale` (the branch factors of a weighted add, whose
    branches NIR sums at the neuron), `IF`/`LIF` neurons (thresholds and leaks
    after normalisation, one value per neuron) and `Output` (the readout's
    input: NIR has no time average, so a NIR simulator reports the per-step
    current that keras_snn averages). Weights and shapes are channels-first, as
    NIR expects; a Dense after Flatten gets its inputs reordered to match. A
    converted channels_first model (its network moves the channels last right
    after the encoder, and back before a feature-map readout) is written with
    its own channels_first input: those two `Permute`s are no NIR node.

    NIR's IF/LIF neurons reset to a fixed value and emit binary spikes, so a
    model is exported exactly only when every neuron is
    `IF(reset="zero", spike_max=1)` or `LIF(reset="zero", spike_max=1)` with
    initial membrane 0 (make one with
    `convert_model(..., neuron=keras_snn.neurons.IF(reset="zero"))`). Other
    models are refused, or, with `approximate=True`, exported with their
    reset-by-subtraction / multi-bit / buffered neurons written as the nearest
    NIR neuron (the file then behaves differently; the metadata says how).
    LIF leak alpha is written as `tau = 1 / (1 - alpha)`, `r = tau`,
    `v_leak = 0` (forward Euler with dt = 1 gives `v <- alpha v + z`); a leak
    of 1 is written as IF. keras_snn fires at `v >= threshold`, NIR at
    `v > threshold`: they differ only when a membrane lands exactly on it.
    A depthwise convolution is written as a grouped `Conv2d`, which nir 1.0's
    type checker mis-reads: read such files with `nir.read(path, type_check=False)`.

    Args:
        snn: a `keras_snn.SpikingModel` with analog, spiking or event input.
        filepath: the .nir file to write.
        approximate: export inexact neurons anyway (see above).

    Returns:
        the `nir.NIRGraph` written.

    Raises:
        NIRExportError: naming the layer that NIR cannot hold and why.
        ImportError: when the `nir` package is missing (`pip install keras_snn[nir]`).
    """
    try:
        import nir
    except ImportError:
        raise ImportError("export_nir needs the nir package: pip install nir") from None
    builder = _NIRBuilder(snn, nir, approximate)
    graph = builder.build()
    nir.write(filepath, graph)
    return graph


def _channels_first(shape):
    shape = tuple(int(d) for d in shape)
    return shape if len(shape) < 2 else (shape[-1],) + shape[:-1]


def _layout_permute(layer):
    """"to_last"/"to_first" for a Permute that only moves the channel axis, else None."""
    if not isinstance(layer, keras.layers.Permute) or len(layer.dims) < 2:
        return None
    rank = len(layer.dims)
    if tuple(layer.dims) == tuple(range(2, rank + 1)) + (1,):
        return "to_last"
    if tuple(layer.dims) == (rank,) + tuple(range(1, rank)):
        return "to_first"
    return None


class _NIRBuilder:
    def __init__(self, snn, nir, approximate):
        self.snn, self.nir, self.approximate = snn, nir, approximate
        self.graph = layer_graph(snn.network)
        self.shapes = snn._plan.output_shapes
        self.nodes, self.edges, self.notes = {}, [], []
        self.tails = {}  # graph key -> NIR node names whose outputs carry that value
        # Keys whose values Keras already holds channels-first (NIR's order):
        # the input of a converted channels_first model, up to its Permute.
        self.native = set()

    def build(self):
        input_key = self.graph.input_keys[0]
        if any(_layout_permute(node.layer) == "to_last" for node in self.graph.nodes):
            self.native.add(input_key)
        shape = self._nir_shape(input_key)
        self.nodes["input"] = self.nir.Input(input_type={"input": np.array(shape)})
        self.tails[input_key] = ["input"]
        for node in self.graph.nodes:
            self._add(node)
        output_key = self.graph.output_keys[0]
        out_shape = self._nir_shape(output_key)
        self.nodes["output"] = self.nir.Output(output_type={"output": np.array(out_shape)})
        self._connect(self.tails[output_key], "output")
        metadata = {"producer": "keras_snn", "dt": 1.0}
        if self.notes:
            metadata["approximations"] = "; ".join(self.notes)
        # nir 1.0's type inference reads a grouped convolution's input channels
        # from weight.shape[1] alone (ignoring `groups`), so it would reject a
        # correct depthwise layer; such graphs are written unchecked and must be
        # read with `nir.read(path, type_check=False)` (said in the docstring).
        grouped = any(getattr(node, "groups", 1) > 1 for node in self.nodes.values())
        return self.nir.NIRGraph(
            nodes=self.nodes, edges=self.edges, metadata=metadata, type_check=not grouped
        )

    def _connect(self, sources, target):
        self.edges.extend((source, target) for source in sources)

    def _refuse(self, layer, why):
        raise NIRExportError(f"Layer '{layer.name}' ({type(layer).__name__}): {why}")

    def _nir_shape(self, key):
        shape = tuple(int(d) for d in self.shapes[key][1:])
        return shape if key in self.native else _channels_first(shape)

    def _follow_layout(self, node, sources):
        """Encoders, readout and layout Permutes: no NIR node; track the value's order."""
        native = any(key in self.native for key in node.input_keys)
        if isinstance(node.layer, keras.layers.Permute):
            move = _layout_permute(node.layer)
            if move is None or native != (move == "to_last"):
                self._refuse(node.layer, "a Permute other than the channels_first model's own "
                             "layout change has no NIR node.")
            native = not native
        if native:
            self.native.add(node.key)
        self.tails[node.key] = sources

    def _add(self, node):
        layer, key = node.layer, node.key
        sources = [name for k in node.input_keys for name in self.tails[k]]
        if isinstance(layer, (snn_layers.Readout, snn_layers.AnalogInput, snn_layers.EventInput,
                              keras.layers.Permute)):
            self._follow_layout(node, sources)  # no node: the values pass straight through
        elif isinstance(layer, snn_layers.SpikingInput):
            self._follow_layout(node, sources)
            self.tails[key] = [self._neuron(layer, layer.neuron, layer.threshold, key, sources)]
        elif isinstance(layer, snn_layers.PoissonInput):
            self._refuse(layer, "random rate coding has no NIR node; use AnalogInput or SpikingInput.")
        elif isinstance(layer, _MAX_POOLING):
            self._refuse(layer, "NIR has no max-pooling node (its rate form keeps "
                         "cumulative spike counts); export a model with average pooling.")
        elif any(k in self.native for k in node.input_keys) and len(self.shapes[key]) > 2:
            self._refuse(layer, "reads channels_first values that the network did not move "
                         "channels-last; NIR export expects channels-last Keras layers.")
        elif isinstance(layer, snn_layers.SynapticLayer):
            synapse = self._synapse(node, sources)
            if layer.neuron is None:
                self.tails[key] = synapse
            else:
                threshold = float(np.asarray(layer.threshold))
                params = {k: float(np.asarray(v)) for k, v in layer.neuron_parameters.items()}
                self.tails[key] = [
                    self._neuron(layer, layer.neuron, threshold, key, synapse, **params)
                ]
        elif isinstance(layer, keras.layers.Flatten):
            shape = self._nir_shape(node.input_keys[0])
            name = self._name(key)
            self.nodes[name] = self.nir.Flatten(
                input_type={"input": np.array(shape)}, start_dim=0, end_dim=-1
            )
            self._connect(sources, name)
            self.tails[key] = [name]
        else:
            self._refuse(layer, "has no NIR node (NIR holds Affine, Conv, AvgPool, Flatten, "
                         "Scale, IF and LIF).")

    def _name(self, key):
        return key.replace("/", "_")

    def _synapse(self, node, sources):
        layer, key, nir = node.layer, node.key, self.nir
        name = self._name(key)
        if getattr(layer, "data_format", "channels_last") == "channels_first":
            self._refuse(layer, "NIR export reads channels_last layers; convert the model with "
                         "keras_snn.convert_model, which builds channels_last layers from a "
                         "channels_first model.")
        if isinstance(layer, snn_layers.SpikingAdd):
            names = []
            weights = np.asarray(layer.branch_weights)
            for index, input_key in enumerate(node.input_keys):
                scale_name = f"{name}_scale{index}"
                shape = self._nir_shape(input_key)
                factor = np.broadcast_to(
                    weights[index].reshape((-1,) + (1,) * (len(shape) - 1)), shape
                )
                self.nodes[scale_name] = nir.Scale(scale=np.array(factor, "float32"))
                self._connect(self.tails[input_key], scale_name)
                names.append(scale_name)
            return names  # NIR sums every edge into the neuron
        if isinstance(layer, snn_layers.SpikingDense):
            kernel = np.asarray(layer.kernel)
            in_shape = self.shapes[node.input_keys[0]][1:]
            if len(in_shape) != 1:
                self._refuse(layer, "Dense on a non-flat input has no NIR Affine form.")
            kernel = self._after_flatten(node, kernel)
            self.nodes[name] = nir.Affine(weight=kernel.T.copy(), bias=np.asarray(layer.bias))
        elif isinstance(layer, (snn_layers.SpikingConv2D, snn_layers.SpikingConv1D, snn_layers.SpikingDepthwiseConv2D)):
            self.nodes[name] = self._conv(node, layer)
        elif isinstance(layer, snn_layers.SpikingAveragePooling2D):
            if layer.padding != "valid":
                self._refuse(layer, "NIR AvgPool2d pads with zeros that count in the mean; "
                             "only padding='valid' exports exactly.")
            self.nodes[name] = nir.AvgPool2d(
                kernel_size=np.array(layer.pool_size), stride=np.array(layer.strides),
                padding=np.array([0, 0]),
            )
        else:
            self._refuse(layer, "has no NIR synapse node.")
        self._connect(sources, name)
        return [name]

    def _after_flatten(self, node, kernel):
        """Reorder Dense rows from Keras's (H, W, C) flattening to NIR's (C, H, W)."""
        producer = next((n for n in self.graph.nodes if n.key == node.input_keys[0]), None)
        if producer is None or not isinstance(producer.layer, keras.layers.Flatten):
            return kernel
        shape = tuple(int(d) for d in self.shapes[producer.input_keys[0]][1:])
        if len(shape) < 2:
            return kernel
        order = (len(shape) - 1,) + tuple(range(len(shape) - 1))
        return kernel.reshape(shape + (-1,)).transpose(order + (len(shape),)).reshape(
            kernel.shape
        )

    def _conv(self, node, layer):
        nir = self.nir
        in_shape = tuple(int(d) for d in self.shapes[node.input_keys[0]][1:])
        spatial = in_shape[:-1]
        kernel = np.asarray(layer.kernel)
        if isinstance(layer, snn_layers.SpikingDepthwiseConv2D):
            kh, kw, channels, multiplier = kernel.shape
            weight = kernel.reshape(kh, kw, channels * multiplier)[:, :, :, None]
            weight = weight.transpose(2, 3, 0, 1)  # (C*M, 1, kh, kw)
            groups = channels
        else:
            groups = getattr(layer, "groups", 1)
            rank = kernel.ndim - 2
            weight = kernel.transpose((rank + 1, rank) + tuple(range(rank)))  # (out, in, k..)
        if layer.padding == "causal":
            self._refuse(layer, "causal padding has no NIR form.")
        padding = []
        for size, k, stride, dilation in zip(
            spatial, weight.shape[2:], layer.strides, layer.dilation_rate
        ):
            if layer.padding == "valid":
                padding.append(0)
                continue
            extent = (k - 1) * dilation + 1
            out = -(-size // stride)
            total = max((out - 1) * stride + extent - size, 0)
            if total % 2:
                self._refuse(layer, "'same' padding here is asymmetric (TensorFlow pads one more "
                             "at the end); NIR convolutions pad symmetrically.")
            padding.append(total // 2)
        common = dict(weight=np.ascontiguousarray(weight), stride=tuple(layer.strides),
                      padding=tuple(padding), dilation=tuple(layer.dilation_rate), groups=groups,
                      bias=np.asarray(layer.bias))
        if len(spatial) == 2:
            return nir.Conv2d(input_shape=spatial, **common)
        return nir.Conv1d(
            input_shape=spatial[0], **{k: (v[0] if isinstance(v, tuple) else v) for k, v in common.items()}
        )

    def _neuron(self, layer, neuron, threshold, key, sources, leak=None):
        exact = (
            isinstance(neuron, neurons_lib.IF) and neuron.reset == "zero" and neuron.spike_max == 1
            and neuron.initial_membrane == 0.0
        )
        if not exact:
            why = (
                f"its neuron {neuron!r} is not NIR-exact (NIR neurons reset to zero, emit binary, "
                "non-negative spikes and start at rest)"
            )
            if not self.approximate:
                self._refuse(layer, why + "; convert with neuron=keras_snn.neurons.IF(reset='zero') "
                             "or pass approximate=True.")
            self.notes.append(f"{layer.name}: {why}")
        shape = self._nir_shape(key)
        ones = np.ones(shape, "float32")
        name = f"{self._name(key)}_neuron"
        if leak is not None and leak < 1.0:
            tau = 1.0 / (1.0 - leak)
            self.nodes[name] = self.nir.LIF(
                tau=ones * tau, r=ones * tau, v_leak=ones * 0.0, v_threshold=ones * threshold
            )
        else:
            self.nodes[name] = self.nir.IF(r=ones, v_threshold=ones * threshold)
        self._connect(sources, name)
        return name
