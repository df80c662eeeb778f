"""What `SpikingModel.compile` accepts: losses and metrics on the per-step readout.

A SpikingModel outputs the readout after every step, `(batch, T, classes)`.
Keras's built-in losses and metrics expect `(batch, classes)` and would
silently compare the wrong axes, so they are refused by name. `SynapticOps`
metrics take operation counts instead of the readout: they are kept out of
Keras's compiled metrics and fed by the model's `compute_metrics`
(`OpsMetrics`).
"""

import inspect
import threading

import tensorflow as tf

from keras_snn.metrics import SynapticOps


class OpsMetrics:
    """The compiled `SynapticOps` metrics and the counts of the current step.

    A plain object, so Keras's attribute tracking does not keep the metrics
    after a recompile. The counts go from `call` to `compute_metrics` of the
    same train/test step through a thread-local slot: MirroredStrategy runs
    each replica's step in its own thread.
    """

    def __init__(self, metrics, weighted_metrics):
        def ops_metrics(argument):
            return [m for m in tf.nest.flatten(argument) if isinstance(m, SynapticOps)]

        self.metrics_argument = metrics
        self.weighted_argument = weighted_metrics
        self.plain = ops_metrics(metrics)
        self.weighted = ops_metrics(weighted_metrics)
        self.all = tuple(self.plain + self.weighted)
        self._slot = threading.local()

    def put_ops(self, ops):
        self._slot.ops = ops

    def take_ops(self):
        ops = getattr(self._slot, "ops", None)
        self._slot.ops = None
        return ops


def without_ops_metrics(argument):
    """A metrics argument (list, dict of lists, None) without its SynapticOps."""
    if isinstance(argument, dict):
        return {key: without_ops_metrics(value) for key, value in argument.items()}
    if isinstance(argument, (list, tuple)):
        return type(argument)(
            without_ops_metrics(m) for m in argument if not isinstance(m, SynapticOps)
        )
    return argument


def _is_keras_builtin(obj, namespace):
    """Whether a loss/metric (object, class, function or name) is Keras's own."""
    if isinstance(obj, str):
        if obj in ("accuracy", "acc", "crossentropy", "ce"):
            return True  # names Keras resolves only once it sees the labels
        try:
            obj = namespace.get(obj)
        except (ValueError, TypeError):
            return False  # Keras reports unknown names itself
    # A wrapped function (LossFunctionWrapper, MeanMetricWrapper) is judged by the function.
    obj = getattr(obj, "fn", None) or getattr(obj, "_fn", None) or obj
    owner = obj if isinstance(obj, type) or inspect.isroutine(obj) else type(obj)
    module = getattr(owner, "__module__", None) or ""
    return module == "keras" or module.startswith("keras.")


def refuse_keras_objectives(objectives, argument, namespace):
    for obj in tf.nest.flatten(objectives):
        if obj is None or not _is_keras_builtin(obj, namespace):
            continue
        name = obj if isinstance(obj, str) else getattr(obj, "name", getattr(
            obj, "__name__", type(obj).__name__))
        what = "loss" if argument == "loss" else "metric"
        raise ValueError(
            f"`{argument}`: Keras's {what} {name!r} expects predictions of shape "
            "(batch, classes), but a SpikingModel outputs the readout after every step, "
            "(batch, T, classes). Use keras_snn.losses.ReadoutCrossentropy() (final step; "
            "step=k or step='all' for others), keras_snn.metrics.StepAccuracy() and "
            "keras_snn.metrics.SynapticOps(), or a custom loss/metric that reads "
            "(batch, T, classes)."
        )
