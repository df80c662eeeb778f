"""What flows on each connection of a spiking network, worked out once.

Every value in a spiking network is one of three kinds (`Carries`), and the
kind decides how a step runs and what it costs:

- SPIKES: events. A synaptic layer receiving them does one accumulate per
  event and nonzero outgoing synapse (counted as synaptic operations), and may
  compute its weight products in a narrow dtype (spikes are small integers;
  not the graded events of an average pooling without neuron, its window
  means, which are counted as events too).
- ANALOG: input data (the `AnalogInput` encoder's output). A synaptic layer
  receiving it does multiply-accumulates, reported as input MACs; when the
  input is static its current is computed once per call, outside the loop.
- CURRENT: the output of a synaptic layer without neuron that is not an
  average of spikes (the readout layer, or a linear tail before a head). Its
  synaptic work was counted where the spikes arrived; no spiking layer may
  receive it.

`Carries.after_synapse` and `Carries.passed_on` are the two rules; the
converter (checking an ANN before building), the `Plan` of a `SpikingModel`
(the time loop and its cost accounting) and the NIR exporter all read kinds
from here.
"""

import enum

import keras

from keras_snn.graph import layer_graph
from keras_snn.layers.base import SpikingLayer
from keras_snn.layers.base import SynapticLayer
from keras_snn.layers.passthrough import is_passthrough
from keras_snn.layers.passthrough import passthrough_layer_names
from keras_snn.layers.readout import Readout


class Carries(enum.Enum):
    """The kind of value on a connection: spike events, analog input or a current."""

    SPIKES = "spikes"
    ANALOG = "analog"
    CURRENT = "current"

    @classmethod
    def after_synapse(cls, input_kinds, emits_spikes, averages=False):
        """The output kind of a synaptic layer (weights, then maybe a neuron).

        A neuron makes spikes; without one, an average (pooling) passes on
        what it receives (the mean of spikes is a graded spike event), and
        for any other map analog stays analog (a linear map of the input) and
        anything reached by spikes is a current.
        """
        if emits_spikes:
            return cls.SPIKES
        if averages:
            return cls.passed_on(input_kinds)
        return cls.ANALOG if set(input_kinds) == {cls.ANALOG} else cls.CURRENT

    @classmethod
    def passed_on(cls, input_kinds):
        """The output kind of a shape or pooling layer: what it receives.

        Mixed inputs (e.g. a Concatenate of spikes and a current) are a
        current: nothing downstream may treat them as events.
        """
        kinds = set(input_kinds)
        return kinds.pop() if len(kinds) == 1 else cls.CURRENT


class PlanNode:
    """How one layer call runs: its kind and what its inputs and output carry.

    Attributes:
        key, layer, input_keys: the graph node (see `keras_snn.graph`).
        input_kinds: `Carries` of each input; kind: `Carries` of the output.
        static: the output is the same at every step (computed once per call).
        static_current: the layer's synaptic current is time-invariant, so
            only its neuron runs inside the loop.
        synaptic: the layer has weights (a `SynapticLayer`).
        counts_ops: synaptic and fed by spikes: its input events are counted.
        spike_products: every input is integer-valued spikes, so the weight
            products may run in a narrow dtype (exact on them); graded
            events (window means) are not.
        binary: the output spikes are 0 or 1 (their own event mask);
            input_binary: the same for each input.
        unit: the output spikes are -1, 0 or 1 (`|s|` is the event mask and
            the spike magnitude at once); input_unit: the same for each input.
        input_graded: per input, whether its spikes may be fractions (the
            window means of a pooling without neuron).
    """

    def __init__(self, node, input_kinds, kind, static, static_current, binary, input_binary,
                 unit, input_unit, input_graded):
        self.key = node.key
        self.layer = node.layer
        self.input_keys = node.input_keys
        self.input_kinds = input_kinds
        self.kind = kind
        self.static = static
        self.static_current = static_current
        self.synaptic = isinstance(node.layer, SynapticLayer)
        self.counts_ops = self.synaptic and Carries.SPIKES in input_kinds
        self.spike_products = (
            self.synaptic and set(input_kinds) == {Carries.SPIKES} and not any(input_graded)
        )
        self.binary = binary
        self.input_binary = input_binary
        self.unit = unit
        self.input_unit = input_unit
        self.input_graded = input_graded

    def gather(self, values):
        """This node's inputs from a dict key -> value (one value or a list)."""
        inputs = [values[key] for key in self.input_keys]
        return inputs if len(inputs) > 1 else inputs[0]


class Plan:
    """A spiking network read once: node order, kinds, shapes, recorded layers.

    Checks that the network can be simulated (one input, encoders right after
    it, only keras_snn and shape layers, a `Readout` as output) and raises a
    ValueError naming the layer otherwise.

    Attributes:
        nodes: every `PlanNode` in execution order.
        dynamic: the nodes that run inside the time loop (not static).
        op_nodes: the nodes whose input events are counted as operations.
        spiking_nodes: the layers whose spikes are recorded (encoders
            included, shape layers not).
        input_key, output_key, frame_shape: the network's input and output.
        sequence_input: the input is a `(batch, T, *frame)` event stream.
        output_shapes: dict key -> per-step output shape (batch None).

    Example:

    >>> import keras
    >>> from keras_snn import layers
    >>> inputs = keras.Input((4,))
    >>> x = layers.SpikingDense(8)(layers.AnalogInput()(inputs))
    >>> x = layers.SpikingDense(3, neuron=None)(x)
    >>> plan = Plan(keras.Model(inputs, layers.Readout()(x)))
    >>> [node.kind.value for node in plan.nodes]
    ['analog', 'spikes', 'current', 'current']
    """

    def __init__(self, network):
        graph = layer_graph(network)
        if len(graph.input_keys) != 1 or len(graph.output_keys) != 1:
            raise ValueError(
                f"A SpikingModel network has one input and one output; '{network.name}' "
                f"has {len(graph.input_keys)} inputs and {len(graph.output_keys)} outputs."
            )
        self.input_key = graph.input_keys[0]
        self.output_key = graph.output_keys[0]
        self._check_layers(graph)
        encoders = [node.layer for node in graph.consumers(self.input_key)]
        self.sequence_input = encoders[0].consumes_sequence
        if any(encoder.consumes_sequence != self.sequence_input for encoder in encoders):
            raise ValueError(
                "All encoders of one network must agree on static or sequence "
                f"(EventInput) input; found {[type(e).__name__ for e in encoders]}."
            )
        self.nodes = self._classify(graph)
        by_key = {node.key: node for node in self.nodes}
        if not isinstance(by_key[self.output_key].layer, Readout):
            raise ValueError(
                f"The network's output must come from a keras_snn.layers.Readout; "
                f"'{self.output_key}' is a {type(by_key[self.output_key].layer).__name__}. "
                "Add Readout() after the final (usually neuron=None) layer."
            )
        self.dynamic = [node for node in self.nodes if not node.static]
        self.op_nodes = [node for node in self.nodes if node.counts_ops]
        self.spiking_nodes = [  # a pooling without neuron passes events on, fires none
            node for node in self.nodes
            if node.kind is Carries.SPIKES and isinstance(node.layer, SpikingLayer)
            and node.layer.emits_spikes
        ]
        self.frame_shape = tuple(network.inputs[0].shape[1:])
        self.output_shapes = self._output_shapes()

    def _output_shapes(self):
        shapes = {self.input_key: (None,) + self.frame_shape}
        for node in self.nodes:
            inputs = [shapes[key] for key in node.input_keys]
            shape = node.layer.compute_output_shape(inputs if len(inputs) > 1 else inputs[0])
            shapes[node.key] = tuple(shape)
        return shapes

    def neurons(self, key):
        """Number of neurons (output elements per sample) of a node."""
        count = 1
        for dim in self.output_shapes[key][1:]:
            count *= dim
        return count

    def _check_layers(self, graph):
        for node in graph.nodes:
            layer = node.layer
            reads_input = self.input_key in node.input_keys
            if isinstance(layer, SpikingLayer):
                if layer.is_encoder and node.input_keys != [self.input_key]:
                    raise ValueError(
                        f"Encoder '{layer.name}' ({type(layer).__name__}) must read the "
                        "network input directly."
                    )
                if reads_input and not layer.is_encoder:
                    raise ValueError(
                        f"Layer '{layer.name}' ({type(layer).__name__}) reads the network "
                        "input directly; put an encoder (AnalogInput, SpikingInput, "
                        "PoissonInput or EventInput) between them."
                    )
            elif isinstance(layer, keras.Model):
                raise ValueError(
                    f"Layer '{layer.name}' is a nested model; a SpikingModel network must "
                    "be flat (keras_snn.convert_model flattens nested ANNs)."
                )
            elif not is_passthrough(layer):
                raise ValueError(
                    f"Layer '{layer.name}' ({type(layer).__name__}) has no spiking form. "
                    "A spiking network holds keras_snn layers and these shape layers: "
                    f"{', '.join(passthrough_layer_names())}."
                )
            elif reads_input:
                raise ValueError(
                    f"Layer '{layer.name}' reads the network input directly; the input "
                    "must go through an encoder first."
                )

    def _classify(self, graph):
        # Event frames may hold counts, so a sequence input is not binary.
        binary = {self.input_key: False}
        unit = {self.input_key: False}
        graded = {self.input_key: False}  # spikes that may be fractions (window means)
        kinds = {self.input_key: Carries.SPIKES if self.sequence_input else Carries.ANALOG}
        static = {self.input_key: not self.sequence_input}
        plan = []
        for node in graph.nodes:
            layer = node.layer
            in_kinds = [kinds[key] for key in node.input_keys]
            in_static = all(static[key] for key in node.input_keys)
            if isinstance(layer, SynapticLayer):
                kind = Carries.after_synapse(in_kinds, layer.emits_spikes, layer.averages_inputs)
                out_static, current_static = False, in_static
            elif isinstance(layer, SpikingLayer):  # encoders, readout
                if layer.emits_spikes:
                    kind = Carries.SPIKES
                else:
                    kind = Carries.ANALOG if layer.is_encoder else Carries.CURRENT
                out_static, current_static = layer.time_invariant and in_static, False
            else:  # a shape layer moves whatever it receives
                kind = Carries.passed_on(in_kinds)
                out_static, current_static = in_static, False
            kinds[node.key], static[node.key] = kind, out_static
            graded_input = any(graded[key] for key in node.input_keys)
            if isinstance(layer, SpikingLayer):
                is_binary = kind is Carries.SPIKES and layer.emits_binary_spikes
                neuron = getattr(layer, "neuron", None)
                is_unit = is_binary or (
                    kind is Carries.SPIKES and neuron is not None and neuron.largest_spike == 1
                )
                # Without a neuron the spikes out are means (or maxima) of those in.
                is_graded = kind is Carries.SPIKES and neuron is None and (
                    getattr(layer, "averages_inputs", False) or graded_input)
            else:
                is_binary = all(binary[key] for key in node.input_keys)
                is_unit = all(unit[key] for key in node.input_keys)
                is_graded = graded_input
            binary[node.key], unit[node.key] = is_binary, is_unit
            graded[node.key] = is_graded
            plan.append(PlanNode(
                node, in_kinds, kind, out_static, current_static, is_binary,
                [binary[key] for key in node.input_keys], is_unit,
                [unit[key] for key in node.input_keys],
                [graded[key] for key in node.input_keys],
            ))
        return plan
