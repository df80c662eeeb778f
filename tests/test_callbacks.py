"""Sparsity fine-tuning: penalties, scheduled magnitude pruning, monitoring, the tf_keras path."""

import keras
import numpy as np
import pytest
import tensorflow_model_optimization as tfmot

import keras_snn
from keras_snn.callbacks import SparsityMonitor
from keras_snn.callbacks import WeightPruning
from keras_snn.layers.weighted import has_weighted_kernel
from keras_snn.penalties import ActivationL1
from keras_snn.penalties import WeightL1

RNG = np.random.default_rng(0)
X = RNG.random((96, 6, 6, 1)).astype("float32")
Y = (X.mean(axis=(1, 2, 3)) > 0.5).astype("int64")


def model():
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((6, 6, 1)),
        keras.layers.Conv2D(8, 3, padding="same", kernel_regularizer="l2"),
        keras.layers.ReLU(),
        keras.layers.Flatten(),
        keras.layers.Dense(16, activation="relu"),
        keras.layers.Dense(2),
    ])


def compiled(m):
    m.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return m


def test_penalties_attach_to_a_copy_and_strip_back():
    original = model()
    sparse = keras_snn.add_sparsity_penalties(original, activation=0.5, weight=2.0)
    assert original.layers[1].activity_regularizer is None  # the user's model is unchanged
    assert isinstance(sparse.layers[1].activity_regularizer, ActivationL1)  # ReLU layer
    assert isinstance(sparse.layers[3].activity_regularizer, ActivationL1)  # inline relu
    assert sparse.layers[4].activity_regularizer is None  # logits
    for a, b in zip(original.get_weights(), sparse.get_weights()):
        np.testing.assert_array_equal(a, b)
    sparse(X[:4])
    assert len(sparse.losses) == 2 + 3  # two activation penalties, three kernels
    # mean-L1: the activation penalty of the Dense(16) is 0.5 * mean|a| over the batch.
    hidden = keras.Model(sparse.inputs, sparse.layers[3].output)(X[:4]).numpy()
    assert 0.5 * np.abs(hidden).mean() == pytest.approx(float(sparse.losses[1]), rel=1e-5)
    plain = keras_snn.strip_sparsity_penalties(sparse)
    assert plain.layers[1].activity_regularizer is None
    assert type(plain.layers[0].kernel_regularizer).__name__ == "L2"  # the user's own stays
    assert plain.layers[3].kernel_regularizer is None


def test_penalised_training_raises_activation_sparsity():
    base = compiled(model())
    base.fit(X, Y, epochs=20, verbose=0)
    sparse = compiled(keras_snn.add_sparsity_penalties(base, activation=5.0))
    sparse.fit(X, Y, epochs=20, verbose=0)
    before = keras_snn.measure_sparsity(base, X)["activation"]
    after = keras_snn.measure_sparsity(sparse, X)["activation"]
    assert after > before


def test_constant_sparsity_pruning_keeps_zeros_through_training_saving_and_conversion(tmp_path):
    m = compiled(model())
    pruning = WeightPruning(tfmot.sparsity.keras.ConstantSparsity(0.6, begin_step=0, frequency=1))
    m.fit(X, Y, epochs=3, batch_size=32, verbose=0, callbacks=[pruning])
    for layer in (m.layers[0], m.layers[3], m.layers[4]):
        kernel = layer.kernel.numpy()
        assert (kernel == 0).mean() == pytest.approx(np.floor(0.6 * kernel.size) / kernel.size)
        np.testing.assert_array_equal(kernel == 0, pruning.masks[layer.name] == 0)
    path = str(tmp_path / "pruned.keras")
    m.save(path)
    restored = keras.saving.load_model(path)
    assert (restored.layers[3].kernel.numpy() == 0).mean() == pytest.approx(0.6, abs=0.01)
    dense = compiled(model())
    pruned_snn = keras_snn.convert_model(m, X)
    dense_snn = keras_snn.convert_model(dense, X)
    # Zero weights leave the fan-out maps, so every layer's MACs drop by ~60%.
    pruned, full = pruned_snn.ann_macs(), dense_snn.ann_macs()  # same layer order
    for pruned_macs, full_macs in zip(pruned.values(), full.values()):
        assert pruned_macs == pytest.approx(0.4 * full_macs, rel=0.05)


def test_polynomial_schedule_reaches_final_sparsity():
    m = compiled(model())
    schedule = tfmot.sparsity.keras.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=8, frequency=2)
    pruning = WeightPruning(schedule, layers=[m.layers[3].name])
    m.fit(X, Y, epochs=4, batch_size=32, verbose=0, callbacks=[pruning])  # 12 steps
    assert (m.layers[3].kernel.numpy() == 0).mean() == pytest.approx(0.8, abs=0.01)
    assert (m.layers[0].kernel.numpy() == 0).mean() == 0.0  # not selected
    with pytest.raises(ValueError, match="nowhere"):
        compiled(model()).fit(X, Y, verbose=0, callbacks=[WeightPruning(schedule, ["nowhere"])])
    with pytest.raises(TypeError, match="PruningSchedule"):
        WeightPruning(0.5)


class HostPruning(keras.callbacks.Callback):
    """The host-side WeightPruning this package had before masks moved into the graph.

    Kept as the reference: per batch it copied every kernel to NumPy, argsorted
    the magnitudes there and assigned the masked kernel back.
    """

    def __init__(self, schedule):
        super().__init__()
        self.schedule, self.masks = schedule, {}

    def _layers(self):
        return [l for l in self.model.layers if has_weighted_kernel(l)]

    def on_train_begin(self, logs=None):
        for layer in self._layers():
            kernel = layer.kernel.numpy()
            self.masks.setdefault(layer.name, (kernel != 0).astype(kernel.dtype))

    def on_train_batch_end(self, batch, logs=None):
        should_prune, sparsity = self.schedule(int(self.model.optimizer.iterations.numpy()))
        for layer in self._layers():
            kernel = layer.kernel.numpy()
            if bool(should_prune):
                count = int(np.floor(float(sparsity) * kernel.size))
                mask = np.ones(kernel.size, kernel.dtype)
                order = np.argsort(np.abs(kernel).reshape(-1), kind="stable")
                mask[order[:count]] = 0
                self.masks[layer.name] = mask.reshape(kernel.shape)
            layer.kernel.assign(kernel * self.masks[layer.name])


@pytest.mark.parametrize(
    "schedule",
    [
        tfmot.sparsity.keras.PolynomialDecay(0.1, 0.85, begin_step=1, end_step=9, frequency=2),
        tfmot.sparsity.keras.ConstantSparsity(0.55, begin_step=2, end_step=7, frequency=1),
    ],
    ids=["polynomial", "constant"],
)
def test_in_graph_pruning_matches_the_host_implementation(schedule):
    results = []
    for callback in (WeightPruning(schedule), HostPruning(schedule)):
        m = compiled(model())
        first = m.layers[3].kernel.numpy()
        first[:2] = 0.0  # zeros before training stay masked
        m.layers[3].kernel.assign(first)
        m.fit(X, Y, epochs=4, batch_size=32, shuffle=False, verbose=0, callbacks=[callback])
        results.append((m.get_weights(), callback.masks))
    (graph_weights, graph_masks), (host_weights, host_masks) = results
    for got, expected in zip(graph_weights, host_weights):
        np.testing.assert_array_equal(got, expected)
    assert len(graph_masks) == len(host_masks) == 3  # keyed by each model's layer names
    for got, expected in zip(graph_masks.values(), host_masks.values()):
        np.testing.assert_array_equal(got, expected)
    assert 0.5 < (graph_weights[2] == 0).mean() < 0.9  # the Dense(16) kernel was pruned


def test_magnitude_mask_breaks_ties_by_index_like_a_stable_sort():
    from keras_snn.callbacks import _magnitude_mask

    kernel = np.array([[0.5, -0.1, 0.1], [0.0, 0.1, -0.5]], "float32")
    mask = _magnitude_mask(kernel, 0.5).numpy()  # prune 3: 0.0, then the first two 0.1s
    np.testing.assert_array_equal(mask, [[1, 0, 0], [0, 1, 1]])
    assert _magnitude_mask(kernel, 0.0).numpy().all()
    assert not _magnitude_mask(kernel, 1.0).numpy().any()
    # Many ties (weights rounded to one decimal) at several sparsities: a stable argsort's choice.
    rounded = np.round(np.random.default_rng(3).normal(size=(40, 30)), 1).astype("float32")
    for sparsity in (0.05, 0.3, 0.77, 0.999):
        # Schedules return float32 sparsities, and the old code floored float32 * size too.
        count = int(np.floor(float(np.float32(sparsity)) * rounded.size))
        expected = np.ones(rounded.size, "float32")
        expected[np.argsort(np.abs(rounded).reshape(-1), kind="stable")[:count]] = 0
        np.testing.assert_array_equal(_magnitude_mask(rounded, sparsity), expected.reshape(40, 30))
    assert _magnitude_mask(np.zeros((0, 3), "float32"), 0.5).shape == (0, 3)


def test_monitor_logs_sparsity_and_snn_ops_in_history():
    m = compiled(model())
    history = m.fit(X, Y, epochs=2, verbose=0, callbacks=[SparsityMonitor(X[:32], snn_timesteps=4)])
    for key in ("S_a", "S_w", "S_c", "snn_ops"):
        assert len(history.history[key]) == 2
    s_a, s_w, s_c = (history.history[k][-1] for k in ("S_a", "S_w", "S_c"))
    assert s_c == pytest.approx(1 - (1 - s_a) * (1 - s_w))


def test_tf_keras_pruned_and_stripped_model_converts_with_fewer_ops():
    tf_keras = pytest.importorskip("tf_keras")
    tf_keras.utils.set_random_seed(0)
    k2 = tf_keras.Sequential([
        tf_keras.layers.InputLayer((6, 6, 1)),
        tf_keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
        tf_keras.layers.Flatten(),
        tf_keras.layers.Dense(2),
    ])
    unpruned = keras_snn.convert_model(k2, X, timesteps=8)
    wrapped = tfmot.sparsity.keras.prune_low_magnitude(
        k2, pruning_schedule=tfmot.sparsity.keras.ConstantSparsity(0.7, 0, frequency=1)
    )
    wrapped.compile("adam", tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    wrapped.fit(X, Y, epochs=2, verbose=0, callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
    stripped = tfmot.sparsity.keras.strip_pruning(wrapped)
    snn = keras_snn.convert_model(stripped, X, timesteps=8)
    assert sum(snn.ann_macs().values()) < 0.35 * sum(unpruned.ann_macs().values())
    pruned_ops = keras_snn.simulate(snn, X, verbose=0).cumulative_ops[-1]
    dense_ops = keras_snn.simulate(unpruned, X, verbose=0).cumulative_ops[-1]
    assert pruned_ops < dense_ops


def test_penalty_arguments_are_checked():
    with pytest.raises(ValueError, match="strength"):
        ActivationL1(-1.0)
    assert WeightL1.from_config(WeightL1(2.0).get_config()).strength == 2.0
