"""Reading Keras layer graphs: functional, Sequential, nested, shared layers."""

import keras
import pytest

from keras_snn.graph import layer_graph


def test_functional_graph_is_topological_with_shared_layer_calls():
    inputs = keras.Input((4,))
    shared = keras.layers.Dense(4, name="shared")
    a = shared(inputs)
    b = shared(a)
    out = keras.layers.Add(name="add")([a, b])
    graph = layer_graph(keras.Model(inputs, out))
    keys = [node.key for node in graph.nodes]
    assert keys == ["shared", "shared#1", "add"]
    assert graph.nodes[2].input_keys == ["shared", "shared#1"]
    assert graph.output_keys == ["add"] and len(graph.input_keys) == 1
    assert [n.key for n in graph.consumers("shared")] == ["shared#1", "add"]


def test_nested_models_flatten():
    inner = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3, name="d1"), keras.layers.Dense(2, name="d2")],
        name="inner",
    )
    inputs = keras.Input((4,))
    out = keras.layers.Dense(1, name="top")(inner(inputs))
    model = keras.Model(inputs, out)
    assert [n.key for n in layer_graph(model).nodes] == ["inner", "top"]
    flat = layer_graph(model, flatten=True)
    assert [n.key for n in flat.nodes] == ["inner/d1", "inner/d2", "top"]
    assert flat.nodes[0].input_keys == flat.input_keys
    assert flat.nodes[2].input_keys == ["inner/d2"]


def test_unbuilt_and_subclassed_models_are_refused():
    with pytest.raises(ValueError, match="not built"):
        layer_graph(keras.Sequential([keras.layers.Dense(2)]))

    class Custom(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(2)

        def call(self, x):
            return self.dense(x)

    model = Custom()
    model(keras.ops.ones((1, 3)))
    with pytest.raises(ValueError, match="subclassed"):
        layer_graph(model)
