"""Per-timestep metrics: anytime accuracy, thresholds, areas, energy, sparsity.

The pure functions here work on the per-step curves a simulation produces
("Spike-Based Anytime Perception", Dutson, Li, Gupta, supplementary Tables
E-G); `StepAccuracy` is a Keras metric for `SpikingModel.compile(metrics=[...])`.
"""

import keras
import numpy as np

# 45 nm CMOS energies per 32-bit float operation (Horowitz, ISSCC 2014), the
# usual defaults in the SNN literature.
E_MAC = 4.6e-12
E_AC = 0.9e-12


def first_step_reaching(accuracy, threshold):
    """1-based first step whose accuracy is >= threshold, or None if never."""
    hits = np.flatnonzero(np.asarray(accuracy) >= threshold)
    return int(hits[0]) + 1 if hits.size else None


def latency_area(accuracy):
    """Area between the peak accuracy and accuracy(t), summed over steps.

    `sum_t (max_k acc(k) - acc(t))`, in accuracy x steps. 0 means the first
    step is already as good as it gets; smaller is better.
    """
    accuracy = np.asarray(accuracy, "float64")
    return float(np.sum(accuracy.max() - accuracy))


def power_area(accuracy, synaptic_ops):
    """Area between the peak accuracy and accuracy over cumulative operations.

    `sum_t (max_k acc(k) - acc(t)) * ops(t)`: the accuracy deficit weighted by
    the operations spent while it lasted (accuracy x operations per sample).
    """
    accuracy = np.asarray(accuracy, "float64")
    return float(np.sum((accuracy.max() - accuracy) * np.asarray(synaptic_ops, "float64")))


def energy(synaptic_ops, input_macs, ann_macs, e_mac=E_MAC, e_ac=E_AC):
    """Energy estimate per sample (joules): SNN accumulates vs ANN MACs.

    Args:
        synaptic_ops: total synaptic operations of the run (one accumulate each).
        input_macs: total MACs of layers fed by analog input over the run.
        ann_macs: MACs of one ANN forward pass.
        e_mac, e_ac: energy of one multiply-accumulate and one accumulate.

    Returns:
        dict with "snn", "ann" (joules) and "ratio" (ann / snn).
    """
    snn = float(synaptic_ops) * e_ac + float(input_macs) * e_mac
    ann = float(ann_macs) * e_mac
    return {"snn": snn, "ann": ann, "ratio": ann / snn if snn else float("inf")}


def combined_sparsity(activation_sparsity, weight_sparsity):
    """S_c = 1 - (1 - S_a)(1 - S_w) (Spike-Based Anytime Perception, Table G)."""
    return 1.0 - (1.0 - activation_sparsity) * (1.0 - weight_sparsity)


def sparse_labels(y_true, classes):
    """Integer labels `(batch,)` (int32) from integer `(batch,)`/`(batch, 1)` or one-hot labels.

    `classes` is the readout's last dimension: a `(batch, classes)` label
    tensor with more than one class is one-hot and is reduced by argmax.

    Example:

    >>> import numpy as np
    >>> np.asarray(sparse_labels(np.array([[0, 1], [1, 0]]), classes=2)).tolist()
    [1, 0]
    >>> np.asarray(sparse_labels(np.array([[3], [4]]), classes=10)).tolist()
    [3, 4]
    """
    y_true = keras.ops.convert_to_tensor(y_true)
    if len(y_true.shape) >= 2 and y_true.shape[-1] == classes and classes > 1:
        y_true = keras.ops.argmax(y_true, axis=-1)
    return keras.ops.reshape(keras.ops.cast(y_true, "int32"), (-1,))


@keras.saving.register_keras_serializable(package="keras_snn")
class StepAccuracy(keras.metrics.Metric):
    """Top-1 accuracy of a SpikingModel's readout after a chosen step.

    `y_pred` is the model output `(batch, T, classes)`; `y_true` integer labels
    `(batch,)`/`(batch, 1)` or one-hot `(batch, classes)`.

    Args:
        step: 1-based step to read (negative counts from the end; -1 = final).
        name: metric name (default "accuracy_at_<step>" or "final_accuracy").

    Example:

    >>> import numpy as np
    >>> metric = StepAccuracy(step=2)
    >>> readout = np.array([[[0.0, 1.0], [1.0, 0.0]]], "float32")  # (1, 2, 2)
    >>> metric.update_state(np.array([0]), readout)
    >>> float(metric.result())
    1.0
    """

    def __init__(self, step=-1, name=None, **kwargs):
        if not isinstance(step, int) or step == 0:
            raise ValueError(f"`step` must be a nonzero int (1-based, -1 = last); received {step!r}.")
        name = name or ("final_accuracy" if step == -1 else f"accuracy_at_{step}")
        super().__init__(name=name, **kwargs)
        self.step = step
        self.correct = self.add_variable(shape=(), initializer="zeros", name="correct")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        index = self.step - 1 if self.step > 0 else self.step
        logits = y_pred[:, index]
        y_true = sparse_labels(y_true, logits.shape[-1])
        hits = keras.ops.cast(
            keras.ops.equal(keras.ops.cast(keras.ops.argmax(logits, axis=-1), "int32"), y_true),
            self.dtype,
        )
        weights = keras.ops.ones_like(hits) if sample_weight is None else keras.ops.cast(
            keras.ops.reshape(sample_weight, (-1,)), self.dtype
        )
        self.correct.assign_add(keras.ops.sum(hits * weights))
        self.count.assign_add(keras.ops.sum(weights))

    def result(self):
        return keras.ops.divide_no_nan(self.correct, self.count)

    def reset_state(self):
        self.correct.assign(0.0)
        self.count.assign(0.0)

    def get_config(self):
        return {**super().get_config(), "step": self.step}


@keras.saving.register_keras_serializable(package="keras_snn")
class SynapticOps(keras.metrics.Metric):
    """Mean synaptic operations per sample, for `SpikingModel.compile(metrics=[...])`.

    The readout carries no operation counts, so a `SpikingModel` compiled with
    this metric (in a list or a dict, in `metrics` or `weighted_metrics`)
    counts operations in every forward pass and, in its `compute_metrics`
    (the step of `fit` and `evaluate` where Keras updates metrics), calls
    `update_state(y_true, ops, sample_weight)` with that batch's counts. So
    `fit` (training batches, with their dropout) and `evaluate` report the
    real counts; the metric is reset, reported and saved with the compile
    state like any compiled metric, and compiling without it stops the
    counting.

    Args:
        step: 1-based step whose operations are reported (negative counts from
            the end), or None for the total over all steps (cumulative ops).
        name: metric name (default "synaptic_ops" or "synaptic_ops_at_<step>").

    Example:

    >>> import numpy as np
    >>> metric = SynapticOps()
    >>> ops = np.array([[1.0, 2.0], [3.0, 4.0]], "float32")  # (batch, T)
    >>> metric.update_state(None, ops)
    >>> float(metric.result())  # mean over samples of the total over steps
    5.0
    """

    def __init__(self, step=None, name=None, **kwargs):
        if step is not None and (not isinstance(step, int) or step == 0):
            raise ValueError(f"`step` must be None or a nonzero int; received {step!r}.")
        name = name or ("synaptic_ops" if step is None else f"synaptic_ops_at_{step}")
        super().__init__(name=name, **kwargs)
        self.step = step
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        """Add a batch of operation counts.

        Args:
            y_true: unused (the counts need no labels).
            y_pred: the operations per sample and step, `(batch, T)`, as
                `SpikingModel(x, return_ops=True)` returns them.
            sample_weight: optional `(batch,)` weights of the samples.
        """
        ops = keras.ops.convert_to_tensor(y_pred, self.dtype)
        if len(ops.shape) != 2:
            raise ValueError(
                f"SynapticOps '{self.name}' takes operation counts of shape (batch, T); "
                f"received shape {tuple(ops.shape)}. Compile it into a SpikingModel, which "
                "passes its counts, or pass snn(x, return_ops=True)[1]."
            )
        if self.step is None:
            per_sample = keras.ops.sum(ops, axis=1)
        else:
            per_sample = ops[:, self.step - 1 if self.step > 0 else self.step]
        if sample_weight is None:
            weights = keras.ops.ones_like(per_sample)
        else:
            weights = keras.ops.reshape(
                keras.ops.convert_to_tensor(sample_weight, self.dtype), (-1,)
            )
        self.total.assign_add(keras.ops.sum(per_sample * weights))
        self.count.assign_add(keras.ops.sum(weights))

    def result(self):
        return keras.ops.divide_no_nan(self.total, self.count)

    def reset_state(self):
        self.total.assign(0.0)
        self.count.assign(0.0)

    def get_config(self):
        return {**super().get_config(), "step": self.step}
