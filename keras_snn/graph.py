"""Read the layer graph of a built Keras model as a list of nodes.

Both `SpikingModel` (which runs a spiking graph step by step) and the
converter (which walks an ANN) need the same thing: every layer call in
topological order with the keys of the tensors it consumes. This module reads
it from the model's serialized functional config (`inbound_nodes`, a public
and stable format) rather than from Keras internals.
"""

import collections

import keras

Node = collections.namedtuple("Node", ["key", "layer", "input_keys"])
Node.__doc__ = """One call of a layer: its output key, the layer, and its input keys.

`input_keys` is a list (one entry per input tensor, in call order). Keys are
the layer name for a layer's first call and `name#k` for its k-th call.
"""


class LayerGraph(collections.namedtuple("LayerGraph", ["nodes", "input_keys", "output_keys"])):
    """Topologically ordered `Node`s plus the model's input and output keys."""

    def consumers(self, key):
        """Nodes that take tensor `key` as an input."""
        return [node for node in self.nodes if key in node.input_keys]


def _node_key(layer_name, node_index, tensor_index=0):
    if tensor_index:
        raise ValueError(
            f"Layer '{layer_name}' has several outputs; keras_snn supports "
            "single-output layers only."
        )
    return layer_name if node_index == 0 else f"{layer_name}#{node_index}"


def _collect_histories(structure, found):
    """Every `keras_history` of the KerasTensors nested in call args/kwargs."""
    if isinstance(structure, dict):
        if structure.get("class_name") == "__keras_tensor__":
            found.append(structure["config"]["keras_history"])
        else:
            for value in structure.values():
                _collect_histories(value, found)
    elif isinstance(structure, (list, tuple)):
        for value in structure:
            _collect_histories(value, found)
    return found


def _as_history_list(entries):
    # A single input or output is stored flat (`[name, 0, 0]`), several as a list.
    if entries and isinstance(entries[0], str):
        return [entries]
    return list(entries)


def _topological(nodes, input_keys):
    done, ordered, pending = set(input_keys), [], list(nodes)
    while pending:
        ready = [node for node in pending if all(k in done for k in node.input_keys)]
        if not ready:
            names = ", ".join(node.key for node in pending)
            raise ValueError(f"The model graph has unreachable or cyclic layers: {names}.")
        for node in ready:
            ordered.append(node)
            done.add(node.key)
        pending = [node for node in pending if node.key not in done]
    return ordered


def layer_graph(model, flatten=False):
    """The `LayerGraph` of a built Keras 3 functional or Sequential model.

    Input layers are not nodes: their keys appear as `input_keys`. With
    `flatten=True`, nested models are replaced by their own layers (keys
    prefixed with `outer_key/`), so the result holds no models.

    Raises:
        ValueError: when the model is not built or is not functional/Sequential.
    """
    if not model.built:
        raise ValueError(
            f"Model '{model.name}' is not built: call it on data or give it an Input first."
        )
    graph = _read_graph(model)
    return _flatten(graph) if flatten else graph


def _read_graph(model):
    if isinstance(model, keras.Sequential):
        return _sequential_graph(model)
    config = model.get_config()
    if "layers" not in config or "input_layers" not in config:
        raise ValueError(
            f"Model '{model.name}' ({type(model).__name__}) is a subclassed model; "
            "keras_snn reads functional and Sequential models only."
        )
    nodes, input_keys = [], []
    for layer_config in config["layers"]:
        name = layer_config["name"]
        if layer_config["class_name"] == "InputLayer":
            continue
        layer = model.get_layer(name)
        for index, call in enumerate(layer_config["inbound_nodes"]):
            histories = _collect_histories([call.get("args", []), call.get("kwargs", {})], [])
            keys = [_node_key(*history) for history in histories]
            nodes.append(Node(_node_key(name, index), layer, keys))
    input_keys = [_node_key(*h) for h in _as_history_list(config["input_layers"])]
    output_keys = [_node_key(*h) for h in _as_history_list(config["output_layers"])]
    return LayerGraph(_topological(nodes, input_keys), input_keys, output_keys)


def _sequential_graph(model):
    nodes, previous = [], "input"
    for layer in model.layers:
        nodes.append(Node(layer.name, layer, [previous]))
        previous = layer.name
    return LayerGraph(nodes, ["input"], [previous])


def _flatten(graph):
    nodes, alias = [], {}
    for node in graph.nodes:
        inputs = [alias.get(key, key) for key in node.input_keys]
        if not isinstance(node.layer, keras.Model):
            nodes.append(Node(node.key, node.layer, inputs))
            continue
        inner = layer_graph(node.layer, flatten=True)
        if len(inner.input_keys) != len(inputs) or len(inner.output_keys) != 1:
            raise ValueError(
                f"Nested model '{node.layer.name}' must have as many inputs as it is "
                "called with and a single output."
            )
        prefix = node.key + "/"
        rename = dict(zip(inner.input_keys, inputs))
        for inner_node in inner.nodes:
            keys = [rename.get(key, prefix + key) for key in inner_node.input_keys]
            nodes.append(Node(prefix + inner_node.key, inner_node.layer, keys))
        output = inner.output_keys[0]
        alias[node.key] = rename.get(output, prefix + output)
    outputs = [alias.get(key, key) for key in graph.output_keys]
    return LayerGraph(nodes, graph.input_keys, outputs)
