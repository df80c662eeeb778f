"""simulate(): run a SpikingModel over a dataset and report every per-step number.

Batches stream through one compiled step that returns only sums (correct
predictions per step, operations per step and layer, spikes per layer), summed
over the batch inside the time loop, so memory is flat in the dataset size
and in T. Under a `tf.distribute`
strategy scope (MirroredStrategy on one host, MultiWorkerMirroredStrategy
across hosts) the batches are split over the replicas and the sums are
reduced, giving the same numbers as one device.
"""

import functools
import json
import weakref

import keras
import numpy as np
import tensorflow as tf

from keras_snn import metrics
from keras_snn import sub_batching
from keras_snn.spiking_model import SpikingModel


class SimulationResult:
    """What `simulate` measured; every array is indexed by step (0-based: t-1).

    Attributes:
        timesteps: number of steps simulated.
        samples: number of inputs simulated.
        accuracy: `(T,)` top-1 accuracy of the readout after each step, or
            None when no labels were given.
        synaptic_ops: `(T,)` mean synaptic operations per sample at each step
            (not cumulative).
        cumulative_ops: `(T,)` running sum of `synaptic_ops`.
        layer_ops: dict layer name -> `(T,)` mean operations per sample caused
            by the spikes arriving at that layer.
        input_macs: MACs per sample and step of the layers fed by analog input
            (direct encoding), which are not synaptic events.
        spike_rates: dict layer name -> spikes per neuron per step (a
            multi-bit spike of size k counts k; negative spikes count too).
        ann_macs: dict layer name -> MACs of one ANN forward pass over the
            layer's nonzero weights (DIET-SNN Fig. 2).
    """

    def __init__(self, timesteps, samples, accuracy, layer_ops, input_macs, spike_rates, ann_macs):
        self.timesteps = timesteps
        self.samples = samples
        self.accuracy = accuracy
        self.layer_ops = layer_ops
        ops = sum(layer_ops.values()) if layer_ops else np.zeros(timesteps)
        self.synaptic_ops = np.asarray(ops, "float64")
        self.cumulative_ops = np.cumsum(self.synaptic_ops)
        self.input_macs = float(input_macs)
        self.spike_rates = spike_rates
        self.ann_macs = ann_macs

    def _need_accuracy(self):
        if self.accuracy is None:
            raise ValueError("This result has no accuracy: pass labels `y` to simulate.")
        return self.accuracy

    def time_to_accuracy(self, threshold):
        """First step (1-based) whose accuracy reaches `threshold`; None if never."""
        return metrics.first_step_reaching(self._need_accuracy(), threshold)

    def ops_to_accuracy(self, threshold):
        """Cumulative synaptic ops per sample when `threshold` is first reached; None if never."""
        step = self.time_to_accuracy(threshold)
        return None if step is None else float(self.cumulative_ops[step - 1])

    def latency_area(self):
        """See `keras_snn.metrics.latency_area` (peak minus accuracy, summed over steps)."""
        return metrics.latency_area(self._need_accuracy())

    def power_area(self):
        """See `keras_snn.metrics.power_area` (the deficit weighted by ops per step)."""
        return metrics.power_area(self._need_accuracy(), self.synaptic_ops)

    def energy(self, e_mac=metrics.E_MAC, e_ac=metrics.E_AC, timesteps=None):
        """Energy per sample of `timesteps` steps (default all) vs one ANN pass.

        Raises:
            ValueError: if `timesteps` is not an int in [1, simulated steps].
        """
        steps = self.timesteps if timesteps is None else timesteps
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not (
            1 <= steps <= self.timesteps
        ):
            raise ValueError(
                f"`timesteps` must be an int from 1 to the {self.timesteps} steps simulated; "
                f"received {timesteps!r}. Simulate more steps to estimate a longer run."
            )
        return metrics.energy(
            self.cumulative_ops[steps - 1], self.input_macs * steps,
            sum(self.ann_macs.values()), e_mac, e_ac,
        )

    def to_dict(self):
        """Plain-Python (JSON-ready) copy of every number."""
        as_list = lambda a: None if a is None else [float(v) for v in a]  # noqa: E731
        return {
            "timesteps": self.timesteps,
            "samples": self.samples,
            "accuracy": as_list(self.accuracy),
            "synaptic_ops": as_list(self.synaptic_ops),
            "cumulative_ops": as_list(self.cumulative_ops),
            "layer_ops": {k: as_list(v) for k, v in self.layer_ops.items()},
            "input_macs": self.input_macs,
            "spike_rates": {k: float(v) for k, v in self.spike_rates.items()},
            "ann_macs": {k: float(v) for k, v in self.ann_macs.items()},
        }

    def to_json(self, path=None):
        """The `to_dict` numbers as JSON text; also written to `path` if given."""
        text = json.dumps(self.to_dict(), indent=1)
        if path:
            with open(path, "w") as stream:
                stream.write(text)
        return text

    def write_tensorboard(self, logdir, name="snn"):
        """Log the per-step curves to TensorBoard (the x axis is the timestep).

        Needs the `tensorboard` package (`pip install keras_snn[tensorboard]`).
        """
        try:
            import tensorboard  # noqa: F401  (tf.summary's implementation)
        except ImportError:
            raise ImportError(
                "write_tensorboard needs the tensorboard package: pip install tensorboard"
            ) from None
        writer = tf.summary.create_file_writer(logdir)
        with writer.as_default():
            for t in range(self.timesteps):
                if self.accuracy is not None:
                    tf.summary.scalar(f"{name}/accuracy", self.accuracy[t], step=t + 1)
                tf.summary.scalar(f"{name}/synaptic_ops", self.synaptic_ops[t], step=t + 1)
                tf.summary.scalar(f"{name}/cumulative_ops", self.cumulative_ops[t], step=t + 1)
        writer.flush()

    def plot(self, path):
        """Accuracy against step and against cumulative ops, and spike rate per layer.

        Needs matplotlib (`pip install keras_snn[examples]`).
        """
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axes = plt.subplots(1, 3, figsize=(15, 4))
        steps = np.arange(1, self.timesteps + 1)
        if self.accuracy is not None:
            axes[0].plot(steps, 100 * self.accuracy)
            spent = np.where(self.cumulative_ops > 0, self.cumulative_ops, np.nan)
            axes[1].plot(spent, 100 * self.accuracy)
            axes[1].set_xscale("log")
        for axis, label in ((axes[0], "timestep"), (axes[1], "cumulative synaptic ops / sample")):
            axis.set_xlabel(label)
            axis.set_ylabel("top-1 accuracy (%)")
        names = list(self.spike_rates)
        axes[2].bar(range(len(names)), [self.spike_rates[n] for n in names])
        axes[2].set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
        axes[2].set_ylabel("spikes / neuron / step")
        figure.tight_layout()
        figure.savefig(path, dpi=100)
        plt.close(figure)
        return path

    def __repr__(self):
        final = "" if self.accuracy is None else f", final accuracy {self.accuracy[-1]:.4f}"
        return (
            f"SimulationResult({self.samples} samples, {self.timesteps} steps{final}, "
            f"{self.cumulative_ops[-1]:.4g} synaptic ops/sample)"
        )


def simulate(snn, x, y=None, *, timesteps=None, batch_size=256, verbose="auto"):
    """Simulate `snn` on a dataset and measure accuracy and cost at every step.

    Each batch runs through one compiled step that keeps only sums over the
    batch (correct predictions and operations per layer at every step, spikes
    per layer), so memory depends on the network and the batch, not on T or
    the dataset size. A batch larger than the model's `sub_batch_size` (by
    default set from the network's size, `keras_snn.sub_batching`) runs as
    several calls of the step, whose sums are added. The step is compiled
    once per model, `timesteps` and strategy, and reused by later calls.
    Inside a `tf.distribute` strategy's scope (MirroredStrategy, or
    MultiWorkerMirroredStrategy with the same data on every worker) the
    batches are split over the replicas (not into sub-batches) and the sums
    reduced: every worker gets the numbers one device would.

    Args:
        snn: a non-stateful `keras_snn.SpikingModel`.
        x: inputs (array) or a `tf.data.Dataset` of `(x, y)` or `x` batches.
        y: labels for array input, integer `(N,)`/`(N, 1)` or one-hot `(N, C)`.
        timesteps: steps to simulate (default: the model's).
        batch_size: batch size for array input.
        verbose: 0 silent, 1 a Keras progress bar; "auto" = 1.

    Returns:
        A `SimulationResult`.

    Raises:
        ValueError: for a stateful model, a bad `batch_size` or `verbose`,
            empty input, inputs of the wrong shape or not numeric, array
            inputs holding NaN or infinity (their readout is NaN, see
            `SpikingModel`, so no accuracy exists for them), or labels that do
            not match: not numeric, not whole numbers, outside [0, classes),
            one-hot rows of another width, or another count than the inputs.
            A tf.data.Dataset is checked for shape and dtype ahead; its
            non-finite samples and out-of-range labels are counted while it
            is read and refused after the run.

    Example:

    >>> import keras, numpy as np, keras_snn
    >>> ann = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
    ...                         keras.layers.Dense(3)])
    >>> x, y = np.random.rand(32, 4).astype("float32"), np.zeros(32, int)
    >>> result = simulate(keras_snn.convert_model(ann, x, timesteps=10), x, y, verbose=0)
    >>> result.accuracy.shape, result.synaptic_ops.shape
    ((10,), (10,))
    """
    if not isinstance(snn, SpikingModel):
        raise TypeError(
            f"simulate expects a keras_snn.SpikingModel (see convert_model); received "
            f"{type(snn).__name__}."
        )
    if getattr(snn, "stateful", False):
        raise ValueError(
            "simulate runs independent batches; use a SpikingModel with stateful=False."
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or (
        batch_size < 1
    ):
        raise ValueError(f"`batch_size` must be an int >= 1; received {batch_size!r}.")
    if verbose not in (0, 1, 2, "auto", False, True):
        raise ValueError(f"`verbose` must be 0, 1, 2 or 'auto'; received {verbose!r}.")
    classes = _readout_classes(snn)
    dataset, has_labels, batches = _as_dataset(
        x, y, batch_size, classes=classes, check_shape=snn._check_input_shape
    )
    spec = dataset.element_spec[0] if has_labels else dataset.element_spec
    steps = snn.timesteps_for(spec.shape, timesteps)
    strategy = tf.distribute.get_strategy()
    distributed = tf.distribute.has_strategy()
    step = _compiled_step(snn, steps, has_labels, classes, strategy)
    if has_labels:  # one label form for the compiled step: int32 (batch,)
        dataset = dataset.map(lambda inputs, labels: (inputs, _int_labels(labels, classes)))
    if distributed:
        dataset = strategy.experimental_distribute_dataset(dataset)
    progress = keras.utils.Progbar(batches) if verbose not in (0, False) else None
    calls = None  # the batches' loop calls, timed by autotune (one device only)
    totals = None
    for index, batch in enumerate(dataset):
        inputs, labels = batch if has_labels else (batch, tf.zeros([0], tf.int32))
        if distributed:
            # One local replica per worker (MultiWorkerMirroredStrategy) returns
            # plain tensors, several return PerReplica values: reduce every leaf
            # either way (the reduction also sums across workers).
            per_replica = strategy.run(step, args=(inputs, labels))
            sums = tf.nest.map_structure(
                lambda value: strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None),
                per_replica,
            )
            sums = _numpy(sums)
        else:
            rows = int(inputs.shape[0])
            if calls is None:
                # A large batch runs as several loop calls (keras_snn.sub_batching),
                # the units on which the loop variants are timed (keras_snn.autotune).
                calls = sub_batching.BatchCalls(snn, "simulate", rows, steps, inputs, batches)

            def run(model, start, stop, inputs=inputs, labels=labels):
                step = _compiled_step(model, steps, has_labels, classes, strategy)
                return _numpy(
                    step(inputs[start:stop], labels[start:stop] if has_labels else labels)
                )

            sums = functools.reduce(_added, calls.run(rows, run), None)
        totals = _added(totals, sums)
        if progress is not None:
            progress.update(index + 1)
    if totals is None or totals["samples"] == 0:
        raise ValueError("simulate received no samples (empty input).")
    _check_dataset_totals(totals, classes)
    samples = totals["samples"]
    plan = snn.plan
    record_neurons = snn.neuron_counts()
    return SimulationResult(
        timesteps=steps,
        samples=int(samples),
        accuracy=totals["correct"] / samples if has_labels else None,
        layer_ops={
            node.key: totals["ops"][:, i] / samples for i, node in enumerate(plan.op_nodes)
        },
        input_macs=snn.input_macs(),
        spike_rates={
            node.key: totals["spikes"][i] / (samples * steps * record_neurons[node.key])
            for i, node in enumerate(plan.spiking_nodes)
        },
        ann_macs=snn.ann_macs(),
    )


def _numpy(sums):
    return tf.nest.map_structure(lambda t: t.numpy(), sums)


def _added(totals, sums):
    """`totals + sums` leaf by leaf; `sums` when there are no totals yet."""
    return sums if totals is None else tf.nest.map_structure(np.add, totals, sums)


# Compiled batch steps, per model: (timesteps, labels?, strategy) -> tf.function.
# Weak keys, and the steps hold the model weakly, so a model's steps go with it.
_COMPILED_STEPS = weakref.WeakKeyDictionary()


def _compiled_step(snn, steps, has_labels, classes, strategy):
    """One batch's sums (O(T x layers)), compiled once per model and settings.

    tf.function retraces only for a new input signature (and relaxes the
    batch dimension after the first other size), so repeated `simulate` calls
    reuse the graph instead of tracing a new function each time.
    """
    cache = _COMPILED_STEPS.setdefault(snn, {})
    key = (steps, has_labels, id(strategy))
    if key not in cache:
        model = weakref.ref(snn)

        @tf.function(reduce_retracing=True)
        def batch_sums(inputs, labels):  # labels: int32 (batch,)
            inputs = tf.convert_to_tensor(inputs)
            flat = tf.reshape(inputs, [tf.shape(inputs)[0], -1])
            finite = tf.reduce_all(tf.math.is_finite(tf.cast(flat, tf.float32)), axis=1)
            sums = {
                "samples": tf.cast(tf.shape(inputs)[0], tf.float64),
                # Dataset input is not checked ahead (it is read lazily).
                "nonfinite": tf.reduce_sum(tf.cast(tf.logical_not(finite), tf.float64)),
            }
            if has_labels:
                outside = tf.logical_or(labels < 0, labels >= classes)
                sums["bad_labels"] = tf.reduce_sum(tf.cast(outside, tf.float64))
            result = model()._execute(
                inputs, steps, record="totals", labels=labels if has_labels else None
            )
            sums["ops"] = result["layer_ops"]
            sums["spikes"] = result["spike_counts"]
            if has_labels:
                sums["correct"] = result["correct"]
            return sums

        cache[key] = batch_sums
    return cache[key]


def _int_labels(labels, classes):
    return tf.cast(metrics.sparse_labels(labels, classes), tf.int32)


def _check_dataset_totals(totals, classes):
    """Refuse what a lazily read dataset turned out to hold (arrays are checked ahead)."""
    if totals["nonfinite"]:
        raise ValueError(
            f"The dataset held {int(totals['nonfinite'])} samples with non-finite values "
            "(NaN or infinity); the model's readout for them is NaN, so no accuracy can be "
            "measured on them. Remove or replace them."
        )
    if totals.get("bad_labels"):
        raise ValueError(
            f"The dataset held {int(totals['bad_labels'])} labels outside [0, {classes}) "
            f"for a readout of {classes} classes."
        )


def _readout_classes(snn):
    """The readout's last dimension (the number of classes), or None if unknown."""
    frame = snn.plan.frame_shape
    steps = (None,) if snn.expects_sequence else ()
    shape = snn.compute_output_shape((None,) + steps + tuple(frame), timesteps=1)
    return shape[-1]


def _as_dataset(x, y, batch_size, classes=None, check_shape=None):
    """(dataset, has_labels, number of batches or None).

    Array inputs are checked here (numeric, finite, shaped as `check_shape`
    accepts, which raises otherwise) and so are array labels
    (numeric, one per sample, integers in [0, classes) or one-hot rows of
    `classes`). A dataset's elements are read lazily, so only their types
    are checked.
    """
    if isinstance(x, tf.data.Dataset):
        if y is not None:
            raise ValueError("Pass labels inside the tf.data.Dataset, not as `y`.")
        spec = x.element_spec
        has_labels = isinstance(spec, tuple) and len(spec) >= 2
        for name, part in zip(("inputs", "labels"), spec if isinstance(spec, tuple) else (spec,)):
            _check_numeric_spec(part, name)
        if check_shape is not None:
            check_shape(tf.TensorShape(spec[0].shape if has_labels else spec.shape))
        if has_labels and len(spec) > 2:
            x = x.map(lambda *element: element[:2])
        cardinality = int(x.cardinality())
        return x, has_labels, cardinality if cardinality > 0 else None
    x = _numeric_array(x, "x")
    if x.ndim == 0 or x.shape[0] == 0:
        raise ValueError(f"simulate received no samples: x has shape {x.shape}.")
    if check_shape is not None:
        check_shape((None,) + x.shape[1:])
    bad = x.size - int(np.count_nonzero(np.isfinite(x)))
    if bad:
        raise ValueError(
            f"x holds {bad} non-finite values (NaN or infinity); the model's readout for "
            "those samples is NaN, so no accuracy can be measured on them. Remove or "
            "replace them."
        )
    x = x.astype("float32", copy=False)
    if y is None:
        dataset = tf.data.Dataset.from_tensor_slices(x)
    else:
        y = _check_labels(_numeric_array(y, "y"), x.shape[0], classes)
        dataset = tf.data.Dataset.from_tensor_slices((x, y))
    return dataset.batch(batch_size), y is not None, -(-x.shape[0] // batch_size)


def _numeric_array(value, name):
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as error:  # ragged nested lists
        raise ValueError(f"`{name}` is not a regular numeric array ({error}).") from None
    if array.dtype.kind not in "biuf":
        raise ValueError(
            f"`{name}` must be numeric; received dtype {array.dtype} (shape {array.shape})."
            + (" Map class names to integer labels first." if name == "y" else "")
        )
    return array


def _check_numeric_spec(spec, name):
    for part in tf.nest.flatten(spec):
        dtype = getattr(part, "dtype", None)
        if dtype is not None and not (dtype.is_floating or dtype.is_integer or dtype.is_bool):
            raise ValueError(f"The dataset's {name} must be numeric; received dtype {dtype.name}.")


def _check_labels(y, samples, classes):
    """Integer labels in [0, classes) or one-hot rows; returns y (int64 or float)."""
    if y.ndim == 0 or y.shape[0] != samples:
        raise ValueError(
            f"x has {samples} samples but y has {y.shape[0] if y.ndim else 0} labels."
        )
    one_hot = y.ndim == 2 and y.shape[1] > 1
    if one_hot:
        if classes is not None and y.shape[1] != classes:
            raise ValueError(
                f"One-hot labels y have {y.shape[1]} columns but the model reads out "
                f"{classes} classes."
            )
        return y
    if y.ndim > 2:
        raise ValueError(
            f"y must be integer labels (N,) or (N, 1), or one-hot (N, classes); received "
            f"shape {y.shape}."
        )
    if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
        raise ValueError("Integer labels y hold values that are not whole numbers.")
    low, high = (y.min(), y.max()) if y.size else (0, 0)
    if low < 0 or (classes is not None and high >= classes):
        raise ValueError(
            f"Labels y must be in [0, {classes}) for a readout of {classes} classes; "
            f"received values from {low:g} to {high:g}."
        )
    return y.astype("int64")
