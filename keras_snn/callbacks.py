"""Callbacks for `model.fit`: magnitude pruning on a schedule, sparsity monitoring.

Weight pruning keeps one mask per kernel in the callback (not in the model),
as a variable next to the kernel: at every pruning step of a
tensorflow-model-optimization schedule it prunes the smallest-magnitude
weights of each kernel to the scheduled sparsity, and after every training
batch it multiplies the kernels by their masks, so pruned weights stay exactly
zero through training, saving and conversion. Both run as one compiled
TensorFlow function on the variables (schedule, mask update and masking in
the graph, as tfmot's pruning wrapper does), so a batch costs no copy of the
kernels to the host. The model stays a plain Keras model: there is no wrapper
to strip afterwards. (tfmot's own `prune_low_magnitude` accepts only tf_keras
models; its schedules work with any model.)
"""

import keras
import tensorflow as tf

from keras_snn.graph import layer_graph
from keras_snn.layers.weighted import has_weighted_kernel
from keras_snn.layers.weighted import weighted_kernel
from keras_snn.sparsity import measure_sparsity


class WeightPruning(keras.callbacks.Callback):
    """Magnitude pruning of Dense/Conv kernels driven by a tfmot schedule.

    At every step where the schedule says to prune, each kernel's mask keeps
    all but the `floor(sparsity * size)` smallest-magnitude weights (ties:
    the lower index is pruned first); after every batch each kernel is
    multiplied by its mask. Weights already zero when training begins start
    masked. The schedule is evaluated inside a `tf.function` on the
    optimizer's int64 step, as tfmot evaluates it.

    Args:
        schedule: a `tensorflow_model_optimization.sparsity.keras`
            `PruningSchedule` (e.g. `PolynomialDecay(0.0, 0.8, 0, 1000)` or
            `ConstantSparsity(0.5, 0)`), called with the optimizer's step.
        layers: names of the layers to prune (default: every Dense/Conv).

    Attributes:
        mask_variables: dict layer name -> non-trainable `tf.Variable` 0/1
            mask of the kernel's shape and dtype (1 = kept).
        masks: dict layer name -> NumPy copy of that mask.

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
        self.mask_variables = {}
        self._pruned_layers = []
        self._step = None

    @property
    def masks(self):
        """Dict layer name -> NumPy copy of the 0/1 mask (a snapshot)."""
        return {name: mask.numpy() for name, mask in self.mask_variables.items()}

    def _layers(self):
        graph = layer_graph(self.model, flatten=True)
        # A layer called twice appears once.
        chosen = list({
            id(node.layer): node.layer
            for node in graph.nodes if has_weighted_kernel(node.layer)
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
        # The graph is read once per fit, not per batch.
        self._pruned_layers = self._layers()
        for layer in self._pruned_layers:
            if layer.name not in self.mask_variables:
                kernel = tf.convert_to_tensor(weighted_kernel(layer))
                self.mask_variables[layer.name] = tf.Variable(
                    tf.cast(tf.not_equal(kernel, 0), kernel.dtype),
                    trainable=False, name=f"{layer.name}_pruning_mask",
                )
        self._step = tf.function(self._prune_and_mask)

    def on_train_batch_end(self, batch, logs=None):
        self._step()

    def _prune_and_mask(self):
        """One batch: update the masks if the schedule prunes now, then mask the kernels."""
        should_prune, sparsity = self.schedule(self.model.optimizer.iterations)
        pairs = [
            (weighted_kernel(layer), self.mask_variables[layer.name])
            for layer in self._pruned_layers
        ]

        def update_masks():
            for kernel, mask in pairs:
                mask.assign(_magnitude_mask(tf.convert_to_tensor(kernel), sparsity))
            return tf.constant(True)

        def keep_masks():
            return tf.constant(False)

        with tf.control_dependencies([tf.cond(should_prune, update_masks, keep_masks)]):
            for kernel, mask in pairs:
                kernel.assign(tf.convert_to_tensor(kernel) * mask)

    def apply_masks(self, layers=None):
        """Zero the pruned weights of every masked kernel."""
        for layer in layers or self._layers():
            if layer.name in self.mask_variables:
                kernel = weighted_kernel(layer)
                kernel.assign(tf.convert_to_tensor(kernel) * self.mask_variables[layer.name])


def _magnitude_mask(kernel, sparsity):
    """0 for the `sparsity` fraction of smallest-magnitude weights, 1 elsewhere.

    `floor(sparsity * size)` weights are pruned, the smallest magnitudes
    first and, among equal magnitudes, the lower flat index first (what a
    stable argsort gives). One sort of the magnitudes finds the cut value;
    the weights below it and the first few equal to it are pruned. Works on
    tensors, inside or outside a `tf.function`.
    """
    magnitudes = tf.reshape(tf.abs(kernel), [-1])
    size = tf.cast(tf.size(magnitudes), tf.float64)
    count = tf.cast(tf.floor(tf.cast(sparsity, tf.float64) * size), tf.int32)
    # +inf at the end keeps the gather valid for an empty kernel.
    ordered = tf.concat([tf.sort(magnitudes), [float("inf")]], axis=0)
    cut = ordered[tf.maximum(count - 1, 0)]
    below = magnitudes < cut
    at_cut = tf.equal(magnitudes, cut)
    ties_to_prune = count - tf.reduce_sum(tf.cast(below, tf.int32))  # 0 when count is 0
    pruned = below | (at_cut & (tf.cumsum(tf.cast(at_cut, tf.int32)) <= ties_to_prune))
    return tf.reshape(tf.cast(~pruned, kernel.dtype), tf.shape(kernel))


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
