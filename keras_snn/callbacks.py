"""Callbacks for `model.fit`: magnitude pruning on a schedule, sparsity monitoring.

Weight pruning keeps one mask per kernel in the callback (not in the model):
at every pruning step of a tensorflow-model-optimization schedule it prunes
the smallest-magnitude weights of each kernel to the scheduled sparsity, and
after every training batch it multiplies the kernels by their masks, so pruned
weights stay exactly zero through training, saving and conversion. The model
stays a plain Keras model: there is no wrapper to strip afterwards.
(tfmot's own `prune_low_magnitude` accepts only tf_keras models; its
schedules work with any model.)
"""

import keras
import numpy as np

from keras_snn.graph import layer_graph
from keras_snn.sparsity import WEIGHTED_LAYERS
from keras_snn.sparsity import measure_sparsity

class WeightPruning(keras.callbacks.Callback):
    """Magnitude pruning of Dense/Conv kernels driven by a tfmot schedule.

    Args:
        schedule: a `tensorflow_model_optimization.sparsity.keras`
            `PruningSchedule` (e.g. `PolynomialDecay(0.0, 0.8, 0, 1000)` or
            `ConstantSparsity(0.5, 0)`), called with the optimizer's step.
        layers: names of the layers to prune (default: every Dense/Conv).

    Attributes:
        masks: dict layer name -> NumPy 0/1 mask of the kernel's shape.

    Example:

    >>> import keras, numpy as np
    >>> import tensorflow_model_optimization as tfmot
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), keras.layers.Dense(2)])
    >>> model.compile("sgd", "mse")
    >>> pruning = WeightPruning(tfmot.sparsity.keras.ConstantSparsity(0.5, 0, frequency=1))
    >>> _ = model.fit(np.ones((8, 4)), np.ones((8, 2)), verbose=0, callbacks=[pruning])
    >>> float((model.layers[0].kernel.numpy() == 0).mean())
    0.5
    """

    def __init__(self, schedule, layers=None):
        super().__init__()
        if not callable(schedule):
            raise TypeError(
                "`schedule` must be a tfmot PruningSchedule (callable step -> "
                f"(should_prune, sparsity)); received {type(schedule).__name__}."
            )
        self.schedule = schedule
        self.layer_names = None if layers is None else list(layers)
        self.masks = {}

    def _layers(self):
        graph = layer_graph(self.model, flatten=True)
        # A layer called twice appears once.
        chosen = list({
            id(node.layer): node.layer
            for node in graph.nodes if isinstance(node.layer, WEIGHTED_LAYERS)
        }.values())
        if self.layer_names is not None:
            by_name = {layer.name: layer for layer in chosen}
            missing = [name for name in self.layer_names if name not in by_name]
            if missing:
                raise ValueError(
                    f"WeightPruning: {missing} are not Dense/Conv layers of '{self.model.name}'."
                )
            chosen = [by_name[name] for name in self.layer_names]
        return chosen

    def on_train_begin(self, logs=None):
        for layer in self._layers():
            kernel = layer.kernel.numpy()
            self.masks.setdefault(layer.name, (kernel != 0).astype(kernel.dtype))

    def on_train_batch_end(self, batch, logs=None):
        should_prune, sparsity = self.schedule(int(self.model.optimizer.iterations.numpy()))
        layers = self._layers()
        if bool(should_prune):
            for layer in layers:
                self.masks[layer.name] = _magnitude_mask(layer.kernel.numpy(), float(sparsity))
        self.apply_masks(layers)

    def apply_masks(self, layers=None):
        """Zero the pruned weights of every masked kernel."""
        for layer in layers or self._layers():
            if layer.name in self.masks:
                kernel = layer.kernel
                kernel.assign(kernel.numpy() * self.masks[layer.name])


def _magnitude_mask(kernel, sparsity):
    """0 for the `sparsity` fraction of smallest-magnitude weights, 1 elsewhere."""
    count = int(np.floor(sparsity * kernel.size))
    mask = np.ones(kernel.size, kernel.dtype)
    if count > 0:
        order = np.argsort(np.abs(kernel).reshape(-1), kind="stable")
        mask[order[:count]] = 0
    return mask.reshape(kernel.shape)


class SparsityMonitor(keras.callbacks.Callback):
    """Log S_a, S_w and S_c (and optionally SNN operations) after each epoch.

    The values land in the epoch logs (so in `History` and in any logger
    after this callback) as "S_a", "S_w", "S_c" and, with `snn_timesteps`,
    "snn_ops": the cumulative synaptic ops per sample of the model converted
    with `convert_model(model, x)` and simulated for that many steps on `x`.

    Args:
        x: validation inputs (a few hundred are enough).
        snn_timesteps: simulate the converted SNN for this many steps (None: skip).
        every: measure every this many epochs.

    Example:

    >>> import keras, numpy as np
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
    ...                           keras.layers.Dense(2)])
    >>> model.compile("sgd", "mse")
    >>> history = model.fit(np.ones((8, 4)), np.ones((8, 2)), verbose=0,
    ...                     callbacks=[SparsityMonitor(np.ones((8, 4)))])
    >>> sorted(k for k in history.history if k.startswith("S_"))
    ['S_a', 'S_c', 'S_w']
    """

    def __init__(self, x, snn_timesteps=None, every=1):
        super().__init__()
        self.x = x
        self.snn_timesteps = snn_timesteps
        self.every = int(every)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or (epoch + 1) % self.every:
            return
        sparsity = measure_sparsity(self.model, self.x)
        logs.update(S_a=sparsity["activation"], S_w=sparsity["weight"], S_c=sparsity["combined"])
        if self.snn_timesteps:
            from keras_snn.conversion import convert_model
            from keras_snn.evaluation import simulate

            snn = convert_model(self.model, self.x, timesteps=self.snn_timesteps)
            logs["snn_ops"] = float(simulate(snn, self.x, verbose=0).cumulative_ops[-1])
