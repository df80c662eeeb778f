"""Per-batch cost of WeightPruning: masks in the graph vs the host copy it replaced (issue 19).

Times `on_train_batch_end` alone (a masking step and a pruning step) and whole
`fit` batches, for the current `keras_snn.callbacks.WeightPruning` and for
`HostPruning`, a verbatim copy of the implementation before issue 19 (every
batch: re-read the layer graph, copy each kernel to NumPy, argsort there on a
pruning step, assign the masked kernel back). Synthetic data; the model is
the papers' Conv MNIST net (`keras_snn.applications`).

    python benchmarks/pruning_overhead.py --repeats 200
"""

import os
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402

from benchmarks import common  # noqa: E402
from keras_snn import applications  # noqa: E402
from keras_snn.callbacks import WeightPruning  # noqa: E402
from keras_snn.graph import layer_graph  # noqa: E402
from keras_snn.layers.weighted import has_weighted_kernel  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("repeats", 200, "Callback calls timed per case.")
flags.DEFINE_integer("batches", 100, "Batches per timed fit epoch.")
flags.DEFINE_integer("batch_size", 64, "Training batch size.")


class HostPruning(keras.callbacks.Callback):
    """WeightPruning as it was before issue 19 (host copies every batch)."""

    def __init__(self, schedule):
        super().__init__()
        self.schedule, self.masks = schedule, {}

    def _layers(self):
        graph = layer_graph(self.model, flatten=True)
        return list({
            id(node.layer): node.layer
            for node in graph.nodes if has_weighted_kernel(node.layer)
        }.values())

    def on_train_begin(self, logs=None):
        for layer in self._layers():
            kernel = layer.kernel.numpy()
            self.masks.setdefault(layer.name, (kernel != 0).astype(kernel.dtype))

    def on_train_batch_end(self, batch, logs=None):
        should_prune, sparsity = self.schedule(int(self.model.optimizer.iterations.numpy()))
        layers = self._layers()
        if bool(should_prune):
            for layer in layers:
                kernel = layer.kernel.numpy()
                count = int(np.floor(float(sparsity) * kernel.size))
                mask = np.ones(kernel.size, kernel.dtype)
                if count > 0:
                    order = np.argsort(np.abs(kernel).reshape(-1), kind="stable")
                    mask[order[:count]] = 0
                self.masks[layer.name] = mask.reshape(kernel.shape)
        for layer in layers:
            layer.kernel.assign(layer.kernel.numpy() * self.masks[layer.name])


def make_model():
    keras.utils.set_random_seed(0)
    model = applications.conv_mnist()
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def time_callback(make_callback, prune):
    """Milliseconds per on_train_batch_end call; `prune` makes every call a pruning step."""
    model = make_model()
    model.fit(np.zeros((8, 28, 28, 1), "float32"), np.zeros(8, "int64"), verbose=0)
    frequency = 1 if prune else 10**9
    callback = make_callback(tfmot.sparsity.keras.ConstantSparsity(0.5, 0, frequency=frequency))
    callback.set_model(model)
    callback.on_train_begin()
    callback.on_train_batch_end(0)  # trace / warm up
    start = time.perf_counter()
    for batch in range(FLAGS.repeats):
        callback.on_train_batch_end(batch)
    return 1e3 * (time.perf_counter() - start) / FLAGS.repeats


def time_fit(make_callback):
    """Milliseconds per training batch of one epoch (after a warm-up epoch)."""
    rng = np.random.default_rng(0)
    x = rng.random((FLAGS.batches * FLAGS.batch_size, 28, 28, 1)).astype("float32")
    y = rng.integers(0, 10, len(x))
    model = make_model()
    schedule = tfmot.sparsity.keras.PolynomialDecay(0.0, 0.8, 0, 10 * FLAGS.batches, frequency=10)
    callbacks = [] if make_callback is None else [make_callback(schedule)]
    model.fit(x, y, batch_size=FLAGS.batch_size, epochs=1, verbose=0, callbacks=callbacks)
    start = time.perf_counter()
    model.fit(x, y, batch_size=FLAGS.batch_size, epochs=1, verbose=0, callbacks=callbacks)
    return 1e3 * (time.perf_counter() - start) / FLAGS.batches


def main(argv):
    del argv
    weights = sum(
        layer.kernel.shape.num_elements() for layer in make_model().layers
        if has_weighted_kernel(layer)
    )
    print(common.machine())
    print(f"Conv MNIST net, {weights} kernel weights, batch {FLAGS.batch_size}")
    print(f"{'case':38s} {'host (before)':>14s} {'in-graph':>10s}")
    for prune in (False, True):
        host = time_callback(HostPruning, prune)
        graph = time_callback(WeightPruning, prune)
        name = "callback, pruning step" if prune else "callback, masking step"
        print(f"{name + ' (ms/call)':38s} {host:14.3f} {graph:10.3f}")
    plain = time_fit(None)
    host = time_fit(HostPruning)
    graph = time_fit(WeightPruning)
    print(f"{'fit (ms/batch; no callback: ' + f'{plain:.2f})':38s} {host:14.2f} {graph:10.2f}")
    print(f"{'fit overhead over no callback (ms/batch)':38s} {host - plain:14.2f} {graph - plain:10.2f}")


if __name__ == "__main__":
    app.run(main)
