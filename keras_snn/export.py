"""Export a SpikingModel: a TensorFlow SavedModel for serving, or a NIR graph.

The SavedModel holds the whole compiled time loop and the weights. It loads
with `tf.saved_model.load` in a process that imports only TensorFlow (no
keras_snn, no Keras code needed), and serves through TF Serving: the
`serving_default` signature (also named `serve`) takes `inputs`, a batch of
any size, and returns `readout` `(batch, T, classes)` and `synaptic_ops`
`(batch, T)`.

The NIR graph is written layer by layer by export rules kept in a registry
keyed by layer class (most specific class first, so subclasses of a layer
export as it does); `register_nir_rule` teaches `export_nir` a new class.
Layers NIR cannot hold (max pooling, Poisson input) are refused by class with
a `NIRExportError` naming the layer.
"""

import keras
import numpy as np
import tensorflow as tf

from keras_snn import layers as snn_layers
from keras_snn import neurons as neurons_lib

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


def export_nir(
    snn, filepath, approximate=False, pooling="average", residual_scale="node", dt=1.0,
    flatten="node", lif_r="tau", subtractive_if=False,
):
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
    One keras_snn step is `dt` (metadata "dt"). LIF leak alpha is written as
    `tau = dt / (1 - alpha)`, `r = tau / dt`, `v_leak = 0` (forward Euler with
    step dt gives `v <- alpha v + z`); IF as `r = 1 / dt` (`v <- v + z`); a
    leak of 1 is written as IF. keras_snn fires at `v >= threshold`, NIR at
    `v > threshold` (strictly): average pooling and integer currents put
    membranes exactly on the threshold often, so `v_threshold` is written as
    the next float32 below it, which fires on the same steps under NIR's rule.
    Each neuron node's metadata records `reset` ("zero" or "subtract"),
    `fires` (the comparison the written threshold assumes) and
    `keras_snn_threshold` (the threshold as keras_snn holds it).
    A depthwise convolution is written as a grouped `Conv2d`, which nir 1.0's
    type checker mis-reads: read such files with `nir.read(path, type_check=False)`.

    Importers differ in what they accept (see README.md, "NIR interop"):
    `pooling="sum"` writes average pooling as `SumPool2d` (read by sinabs,
    Norse and nirtorch's default map; Norse has no `AvgPool2d`) with the
    `1/k^2` folded into the pool's neuron (its threshold times `k^2`: exact
    for the power-of-two windows where `k^2` scales a float32 exactly).
    `residual_scale="diagonal"` writes a residual add's branch factors as
    `Affine` (flat) or 1x1 `Conv1d`/`Conv2d` nodes with the factors on the
    diagonal instead of `Scale` nodes, which no importer we tested maps.
    `dt=1e-4` suits importers that fix the step at 1e-4 s (snnTorch).
    `flatten="conv"` writes no `Flatten`: the Dense layers after it become
    convolutions whose kernel covers the whole feature map, then 1x1 ones, on
    `(units, 1, 1)` maps (the same sums, in another order: float rounding may
    differ in the last bit). For importers that hand NIR's batch-free Flatten
    dims to torch unshifted (snnTorch, Norse).
    `lif_r="one"` writes LIF with `r = 1` and the threshold times
    `dt / tau = 1 - alpha` (the membrane is then `1 - alpha` times keras_snn's:
    the same spikes, up to float32 rounding), for importers that ignore `r`
    (Norse's LIFBox).
    `subtractive_if=True` is for targets whose IF resets by subtraction and
    fires at `v >= v_threshold` (sinabs; nir 1.0.4's IF had no reset value):
    it writes `IF(reset="subtract", spike_max=1)` neurons exactly as IF nodes
    with the threshold unchanged and `reset: "subtract"` in their metadata. A
    NIR >= 1.0.5 reader of such a file resets to `v_reset` (0) instead, so
    use it only for such targets.

    Args:
        snn: a `keras_snn.SpikingModel` with analog, spiking or event input.
        filepath: the .nir file to write.
        approximate: export inexact neurons anyway (see above).
        pooling: "average" (`AvgPool2d`) or "sum" (`SumPool2d`, see above).
        residual_scale: "node" (`Scale`) or "diagonal" (see above).
        dt: the duration of one step, in the unit of the time constants.
        flatten: "node" (`Flatten`) or "conv" (see above).
        lif_r: "tau" (`r = tau / dt`, threshold unchanged) or "one" (see above).
        subtractive_if: write reset-by-subtraction IF neurons as IF nodes for
            targets whose IF subtracts (see above); reset-to-zero neurons are
            then refused.

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
    if pooling not in _NIR_POOLING:
        raise ValueError(f"`pooling` must be one of {sorted(_NIR_POOLING)}; received {pooling!r}.")
    if residual_scale not in _NIR_RESIDUAL_SCALES:
        raise ValueError(f"`residual_scale` must be one of {sorted(_NIR_RESIDUAL_SCALES)}; "
                         f"received {residual_scale!r}.")
    if flatten not in _NIR_FLATTEN:
        raise ValueError(f"`flatten` must be one of {sorted(_NIR_FLATTEN)}; received {flatten!r}.")
    if lif_r not in _NIR_LIF_R:
        raise ValueError(f"`lif_r` must be one of {sorted(_NIR_LIF_R)}; received {lif_r!r}.")
    if not float(dt) > 0.0:
        raise ValueError(f"`dt` must be a positive duration; received {dt!r}.")
    builder = _NIRBuilder(snn, nir, approximate, pooling, bool(subtractive_if),
                          residual_scale, float(dt), flatten, lif_r)
    graph = builder.build()
    nir.write(filepath, graph)
    if subtractive_if:
        _write_if_without_reset_value(filepath)
    return graph


def _write_if_without_reset_value(filepath):
    """Drop `v_reset` from the file's IF nodes: nir 1.0.4's IF (r, v_threshold) resets by
    subtraction and its reader rejects the field that nir >= 1.0.5 writes."""
    import h5py  # nir's own file format dependency

    with h5py.File(filepath, "r+") as f:
        for node in f["node/nodes"].values():
            if "type" in node and node["type"][()] in (b"IF", "IF") and "v_reset" in node:
                del node["v_reset"]


_NIR_POOLING = ("average", "sum")
_NIR_RESIDUAL_SCALES = ("node", "diagonal")
_NIR_FLATTEN = ("node", "conv")
_NIR_LIF_R = ("tau", "one")


def _nir_strict_threshold(threshold):
    """The float32 threshold that makes NIR's `v > t` fire where keras_snn's `v >= theta` does.

    Between two adjacent float32 values there is none, so `v > nextafter(theta, -inf)`
    holds exactly when `v >= theta` for float32 membranes.
    """
    return np.nextafter(np.float32(threshold), np.float32(-np.inf))


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
    def __init__(self, snn, nir, approximate, pooling="average", subtractive_if=False,
                 residual_scale="node", dt=1.0, flatten="node", lif_r="tau"):
        self.snn, self.nir, self.approximate = snn, nir, approximate
        self.pooling, self.subtractive_if = pooling, subtractive_if
        self.residual_scale, self.dt, self.flatten = residual_scale, dt, flatten
        self.lif_r = lif_r
        # flatten="conv": graph key -> trailing size-1 spatial dims its values carry.
        self.map_dims = {}
        # The network as the simulator runs it: node order, per-step shapes.
        self.plan = snn.plan
        self.shapes = snn.plan.output_shapes
        self.nodes, self.edges, self.notes = {}, [], []
        self.tails = {}  # graph key -> NIR node names whose outputs carry that value
        # Keys whose values Keras already holds channels-first (NIR's order):
        # the input of a converted channels_first model, up to its Permute.
        self.native = set()

    def build(self):
        input_key = self.plan.input_key
        if any(_layout_permute(node.layer) == "to_last" for node in self.plan.nodes):
            self.native.add(input_key)
        shape = self._shape(input_key)
        self.nodes["input"] = self.nir.Input(input_type={"input": np.array(shape)})
        self.tails[input_key] = ["input"]
        for node in self.plan.nodes:
            self._add(node)
        output_key = self.plan.output_key
        out_shape = self._shape(output_key)
        self.nodes["output"] = self.nir.Output(output_type={"output": np.array(out_shape)})
        self._connect(self.tails[output_key], "output")
        metadata = {
            "producer": "keras_snn", "dt": self.dt, "nir_version": _nir_version(),
            "pooling": self.pooling, "residual_scale": self.residual_scale,
            "flatten": self.flatten, "lif_r": self.lif_r,
            "if_reset": "subtract" if self.subtractive_if else "zero",
        }
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

    def _shape(self, key):
        """A value's shape without the batch, as the written graph holds it.

        Channels-first, unless the value is still in a channels_first model's
        own order (`self.native`); `flatten="conv"` maps carry trailing 1s.
        """
        shape = tuple(int(d) for d in self.shapes[key][1:])
        if key not in self.native:
            shape = _channels_first(shape)
        return shape + (1,) * self.map_dims.get(key, 0)

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
        carried = [self.map_dims[k] for k in node.input_keys if k in self.map_dims]
        if carried:
            self.map_dims[key] = carried[0]
        rule = _find_nir_rule(self, layer)  # refusals (max pooling, PoissonInput) first
        if not (rule is not None and rule.follows_layout):
            if any(k in self.native for k in node.input_keys) and len(self.shapes[key]) > 2:
                self._refuse(layer, "reads channels_first values that the network did not "
                             "move channels-last; NIR export expects channels-last Keras "
                             "layers.")
        if rule is None:
            self._refuse(layer, "has no NIR node (NIR holds Affine, Conv, AvgPool, Flatten, "
                         "Scale, IF and LIF).")
        if isinstance(layer, snn_layers.SynapticLayer):
            if getattr(layer, "data_format", "channels_last") == "channels_first":
                self._refuse(layer, "NIR export reads channels_last layers; convert the model "
                             "with keras_snn.convert_model, which builds channels_last layers "
                             "from a channels_first model.")
            synapse = rule.write(self, node, sources)
            self.tails[key] = self._fire(node, synapse)
        else:
            self.tails[key] = rule.write(self, node, sources)

    def _fire(self, node, synapse):
        """The synaptic layer's neuron on the synapse nodes' summed output (none: the current)."""
        layer = node.layer
        if layer.neuron is None:
            return synapse
        threshold = float(np.asarray(layer.threshold))
        params = {k: float(np.asarray(v)) for k, v in layer.neuron_parameters.items()}
        if self._sums_pool(layer):
            params["input_scale"] = float(np.prod(layer.pool_size))
        return [self._neuron(layer, layer.neuron, threshold, node.key, synapse, **params)]

    def _name(self, key):
        return key.replace("/", "_")

    # The builder as export rules see it (see `register_nir_rule`).
    def add_node(self, node, nir_node, sources, suffix=""):
        """Add `nir_node` for graph node `node` (name: its key + `suffix`), fed by `sources`.

        Returns the new NIR node's name.
        """
        name = self._name(node.key) + suffix
        self.nodes[name] = nir_node
        self._connect(sources, name)
        return name

    def shape(self, key):
        """The per-sample shape of a graph value as the NIR graph holds it (channels first)."""
        return self._shape(key)

    def refuse(self, layer, why):
        """Raise `NIRExportError` naming `layer` and saying `why` it has no NIR form."""
        self._refuse(layer, why)

    def _branch_scale(self, factor):
        """A residual branch's factor: a Scale node, or a diagonal Affine / 1x1 conv."""
        factor = np.array(factor, "float32")
        if self.residual_scale == "node":
            return self.nir.Scale(scale=factor)
        channels = factor.shape[0]
        per_channel = factor.reshape(channels, -1)[:, 0]  # constant over positions
        diagonal = np.diag(per_channel).astype("float32")
        bias = np.zeros(channels, "float32")
        if factor.ndim == 1:
            return self.nir.Affine(weight=diagonal, bias=bias)
        spatial = factor.shape[1:]
        kernel = diagonal.reshape(diagonal.shape + (1,) * len(spatial))
        if len(spatial) == 2:
            return self.nir.Conv2d(input_shape=spatial, weight=kernel, stride=(1, 1),
                                   padding=(0, 0), dilation=(1, 1), groups=1, bias=bias)
        return self.nir.Conv1d(input_shape=spatial[0], weight=kernel, stride=1, padding=0,
                               dilation=1, groups=1, bias=bias)

    def _sums_pool(self, layer):
        return self.pooling == "sum" and isinstance(layer, snn_layers.SpikingAveragePooling2D)

    def _average_pooling(self, layer):
        """AvgPool2d, or SumPool2d whose 1/k^2 the pool's neuron takes (`_neuron`)."""
        if layer.padding != "valid":
            self._refuse(layer, "NIR pooling pads with zeros that count in the window; "
                         "only padding='valid' exports exactly.")
        window = dict(kernel_size=np.array(layer.pool_size), stride=np.array(layer.strides),
                      padding=np.array([0, 0]))
        if not self._sums_pool(layer):
            return self.nir.AvgPool2d(**window)
        if layer.neuron is None:
            self._refuse(layer, "pooling='sum' folds 1/k^2 into the pool's neuron, and this "
                         "pool has none; export with pooling='average'.")
        return self.nir.SumPool2d(**window)

    def _dense_as_conv(self, node, kernel, bias):
        """flatten="conv": a Dense on a (C, *spatial) map as a conv whose kernel covers it."""
        source_key = node.input_keys[0]
        producer = next((n for n in self.plan.nodes if n.key == source_key), None)
        if producer is not None and isinstance(producer.layer, keras.layers.Flatten):
            source_key = producer.input_keys[0]  # the map Keras flattened (H, W, C order)
        channels, *spatial = self._shape(source_key)
        keras_shape = tuple(int(d) for d in self.shapes[source_key][1:])
        units, rank = kernel.shape[-1], len(spatial)
        if len(keras_shape) == 1:  # a (n, 1, 1) map from an earlier Dense: a 1x1 conv
            weight = kernel.T.reshape((units, channels) + (1,) * rank)
        else:  # Keras flattened (*spatial, C); the conv kernel is (units, C, *spatial)
            weight = kernel.reshape(keras_shape + (units,))
            weight = weight.transpose((rank + 1, rank) + tuple(range(rank)))
        weight = np.ascontiguousarray(weight)
        if rank == 2:
            return self.nir.Conv2d(input_shape=tuple(spatial), weight=weight, stride=(1, 1),
                                   padding=(0, 0), dilation=(1, 1), groups=1, bias=bias)
        return self.nir.Conv1d(input_shape=spatial[0], weight=weight, stride=1, padding=0,
                               dilation=1, groups=1, bias=bias)

    def _after_flatten(self, node, kernel):
        """Reorder Dense rows from Keras's (H, W, C) flattening to NIR's (C, H, W)."""
        producer = next((n for n in self.plan.nodes if n.key == node.input_keys[0]), None)
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
        # NIR holds a grouped convolution's kernel as (out, in / groups, *taps).
        # Input axes that are also output axes (depthwise: output c*M + m reads
        # channel c) leave one input per group.
        in_axes, out_axes = layer.kernel_channel_axes(kernel.ndim)
        rank = kernel.ndim - 2
        outputs = int(np.prod([kernel.shape[a] for a in out_axes]))
        per_group = int(np.prod([kernel.shape[a] for a in in_axes if a not in out_axes]))
        groups = in_shape[-1] // per_group
        weight = kernel.reshape(kernel.shape[:rank] + (per_group, outputs))
        weight = weight.transpose((rank + 1, rank) + tuple(range(rank)))  # (out, in/g, k..)
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

    def _neuron(self, layer, neuron, threshold, key, sources, leak=None, input_scale=1.0):
        """An IF/LIF node; `input_scale` is a factor its input carries (SumPool2d's k^2)."""
        reset = self._neuron_reset(layer, neuron, leak)
        leaky = leak is not None and leak < 1.0
        keras_threshold = float(np.float32(threshold))
        # A summed pool delivers k^2 times the averaged current: a threshold k^2
        # times higher fires on the same steps and resets (to 0, or by k^2 theta) alike.
        threshold = np.float32(threshold) * np.float32(input_scale)
        if leaky and self.lif_r == "one":
            # r = 1 integrates (1 - alpha) I: the membrane and its threshold shrink alike.
            threshold = threshold * np.float32(1.0 - leak)
        threshold = float(threshold)
        if reset == "subtract":
            # The subtracting target fires at v >= v_threshold, as keras_snn does.
            written, fires = np.float32(threshold), "v >= v_threshold"
        else:
            written, fires = _nir_strict_threshold(threshold), "v > v_threshold"
        shape = self._shape(key)
        ones = np.ones(shape, "float32")
        name = f"{self._name(key)}_neuron"
        metadata = {"reset": reset, "fires": fires, "keras_snn_threshold": keras_threshold}
        if leaky:
            # Forward Euler: v += dt/tau (-v + r I); r = tau/dt gives alpha v + I.
            tau = self.dt / (1.0 - leak)
            r = 1.0 if self.lif_r == "one" else tau / self.dt
            self.nodes[name] = self.nir.LIF(
                tau=ones * tau, r=ones * r, v_leak=ones * 0.0, v_threshold=ones * written,
                metadata=metadata,
            )
        else:
            # v += dt r I = v + I.
            self.nodes[name] = self.nir.IF(
                r=ones / self.dt, v_threshold=ones * written, metadata=metadata
            )
        self._connect(sources, name)
        return name

    def _neuron_reset(self, layer, neuron, leak):
        """The reset the written node performs: "zero", or "subtract" (`subtractive_if`)."""
        wanted = "subtract" if self.subtractive_if else "zero"
        exact = (
            isinstance(neuron, neurons_lib.IF) and neuron.reset == wanted
            and neuron.spike_max == 1 and neuron.initial_membrane == 0.0
            and not (self.subtractive_if and leak is not None and leak < 1.0)
        )
        if exact:
            return wanted
        if self.subtractive_if:
            why = (f"its neuron {neuron!r} is not an exact subtractive IF (subtractive_if=True "
                   "writes IF(reset='subtract', spike_max=1), no leak, initial membrane 0)")
            fix = "convert with neuron=keras_snn.neurons.IF(reset='subtract')"
        else:
            why = (f"its neuron {neuron!r} is not NIR-exact (NIR neurons reset to zero, emit "
                   "binary, non-negative spikes and start at rest)")
            fix = "convert with neuron=keras_snn.neurons.IF(reset='zero')"
        if not self.approximate:
            self._refuse(layer, f"{why}; {fix} or pass approximate=True.")
        self.notes.append(f"{layer.name}: {why}")
        return wanted


# ---------------------------------------------------------- export rules
class _NIRRule:
    """How one layer class is written: `write(builder, node, sources)` -> NIR node names.

    `follows_layout`: the rule reads values in either channel order (encoders,
    the readout and layout Permutes), so the builder does not refuse a
    channels_first input before calling it.
    """

    def __init__(self, write, follows_layout=False):
        self.write, self.follows_layout = write, follows_layout


_NIR_RULES = {}
_NIR_REFUSALS = {}


def register_nir_rule(layer_class, rule):
    """Teach `export_nir` a layer class (subclasses match too).

    The rule is called as `rule(builder, node, sources)` for every call of a
    layer of that class in the spiking network, in graph order. `node` is
    the `keras_snn.plan.PlanNode` (`.layer`, `.key`, `.input_keys`, and
    `.kind`, what its output carries), `sources` the names of the NIR nodes
    whose outputs carry its inputs. It returns
    the names of the NIR nodes whose outputs carry the layer's output (the
    `sources` themselves for a layer NIR needs no node for). It writes nodes
    with `builder.add_node(node, nir_node, sources, suffix="")`, reads
    per-sample shapes (channels first) with `builder.shape(key)`, finds the
    `nir` module as `builder.nir`, and refuses with
    `builder.refuse(layer, why)`. For a `keras_snn.layers.SynapticLayer` the
    rule writes only the synapse: the builder adds the layer's neuron (IF or
    LIF) after the nodes it returns.

    Args:
        layer_class: a `keras.layers.Layer` subclass.
        rule: the callable above.

    Returns:
        `rule`.

    Example (a custom layer that leaves values as they are needs no node):

    >>> import keras
    >>> class Tap(keras.layers.Layer):
    ...     def call(self, x):
    ...         return x
    >>> _ = register_nir_rule(Tap, lambda builder, node, sources: sources)
    """
    if not (isinstance(layer_class, type) and issubclass(layer_class, keras.layers.Layer)):
        raise TypeError(f"Expected a keras.layers.Layer subclass; received {layer_class!r}.")
    if not callable(rule):
        raise TypeError(f"`rule` must be callable (builder, node, sources); received {rule!r}.")
    _NIR_RULES[layer_class] = _NIRRule(rule)
    return rule


def _find_nir_rule(builder, layer):
    """The rule for a layer, most specific class first; refusals raise; None if no rule."""
    for cls in type(layer).__mro__:
        if cls in _NIR_REFUSALS:
            builder._refuse(layer, _NIR_REFUSALS[cls])
        if cls in _NIR_RULES:
            return _NIR_RULES[cls]
    return None


def _passes_through(builder, node, sources):
    """Encoders, readout and layout Permutes: no NIR node; track the value's order."""
    builder._follow_layout(node, sources)
    return sources


def _analog_input(builder, node, sources):
    if not node.layer.is_identity:
        builder._refuse(node.layer, "NIR's Input cannot scale or offset the input; apply the "
                        "model's input Rescaling/Normalization to the data before the model.")
    return _passes_through(builder, node, sources)


def _spiking_input(builder, node, sources):
    layer = node.layer
    builder._follow_layout(node, sources)
    return [builder._neuron(layer, layer.neuron, layer.threshold, node.key, sources)]


def _flatten(builder, node, sources):
    if builder.flatten == "conv":
        builder.map_dims[node.key] = len(builder._shape(node.input_keys[0])) - 1
        return sources  # the next Dense reads the map whole (_dense_as_conv)
    shape = builder._shape(node.input_keys[0])
    flatten = builder.nir.Flatten(input_type={"input": np.array(shape)}, start_dim=0, end_dim=-1)
    return [builder.add_node(node, flatten, sources)]


def _weighted_add(builder, node, sources):
    """A Scale node per branch (its factors); NIR sums every edge into the neuron."""
    weights = np.asarray(node.layer.branch_weights)
    names = []
    for index, input_key in enumerate(node.input_keys):
        shape = builder._shape(input_key)
        factor = np.broadcast_to(
            weights[index].reshape((-1,) + (1,) * (len(shape) - 1)), shape
        )
        names.append(builder.add_node(
            node, builder._branch_scale(factor), builder.tails[input_key], f"_scale{index}"
        ))
    return names


def _dense(builder, node, sources):
    layer = node.layer
    kernel = np.asarray(layer.kernel)
    in_shape = builder.shapes[node.input_keys[0]][1:]
    if len(in_shape) != 1:
        builder._refuse(layer, "Dense on a non-flat input has no NIR Affine form.")
    if node.input_keys[0] in builder.map_dims:
        synapse = builder._dense_as_conv(node, kernel, np.asarray(layer.bias))
    else:
        kernel = builder._after_flatten(node, kernel)
        synapse = builder.nir.Affine(weight=kernel.T.copy(), bias=np.asarray(layer.bias))
    return [builder.add_node(node, synapse, sources)]


def _convolution(builder, node, sources):
    return [builder.add_node(node, builder._conv(node, node.layer), sources)]


def _average_pooling(builder, node, sources):
    return [builder.add_node(node, builder._average_pooling(node.layer), sources)]


def _no_synapse(builder, node, sources):
    builder._refuse(node.layer, "has no NIR synapse node.")


for _cls in (snn_layers.Readout, snn_layers.EventInput, keras.layers.Permute):
    _NIR_RULES[_cls] = _NIRRule(_passes_through, follows_layout=True)
_NIR_RULES[snn_layers.AnalogInput] = _NIRRule(_analog_input, follows_layout=True)
_NIR_RULES[snn_layers.SpikingInput] = _NIRRule(_spiking_input, follows_layout=True)
register_nir_rule(keras.layers.Flatten, _flatten)
register_nir_rule(snn_layers.SpikingAdd, _weighted_add)
register_nir_rule(snn_layers.SpikingDense, _dense)
for _cls in (snn_layers.SpikingConv1D, snn_layers.SpikingConv2D,
             snn_layers.SpikingDepthwiseConv2D):
    register_nir_rule(_cls, _convolution)
register_nir_rule(snn_layers.SpikingAveragePooling2D, _average_pooling)
# Any other synaptic layer (1D and global pooling): refused after the
# channels_first check, as a synapse NIR cannot hold.
_NIR_RULES[snn_layers.SynapticLayer] = _NIRRule(_no_synapse)  # a mixin, not a Layer

_NIR_REFUSALS[snn_layers.PoissonInput] = (
    "random rate coding has no NIR node; use AnalogInput or SpikingInput."
)
for _cls in _MAX_POOLING:
    _NIR_REFUSALS[_cls] = (
        "NIR has no max-pooling node (its rate form keeps cumulative spike counts); export "
        "a model with average pooling."
    )


def _nir_version():
    from importlib import metadata

    try:
        return metadata.version("nir")
    except metadata.PackageNotFoundError:  # nir imported from a source tree
        return "unknown"
