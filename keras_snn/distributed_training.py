"""Training and evaluation under tf.distribute.MultiWorkerMirroredStrategy.

`keras.Model.fit` and `evaluate` (Keras 3.15, TF 2.21) fail under
MultiWorkerMirroredStrategy: they reduce the first input batch and the
per-replica logs with calls that cannot take a worker's single local replica
("Attempt to convert a value (PerReplica ...) to a Tensor"; an open Keras
issue, keras-team/keras#20585). Under MirroredStrategy (one process, several
devices) Keras's own fit and evaluate work and are used as they are.

`SpikingModel.fit` and `evaluate` therefore hand MultiWorkerMirroredStrategy
runs to `fit_multi_worker` and `evaluate_multi_worker`, loops of their own
around Keras's own pieces: the model's `train_step`/`test_step` runs on every
replica through `strategy.run` (so the compiled loss, metrics, loss scaling
and the optimizer's all-reduce of the gradients are Keras's), the logs are
the compiled metrics read in the cross-replica context (summed over all
workers), and the callbacks are a `keras.callbacks.CallbackList`, as in
`fit`. Each global batch is split over the workers, so the result equals one
process trained on the same global batches (to float rounding).

Every worker runs the same script, with `TF_CONFIG` naming the cluster and
its own index; nothing else changes from one-process training:

    strategy = tf.distribute.MultiWorkerMirroredStrategy()  # reads TF_CONFIG
    with strategy.scope():
        snn = keras_snn.convert_model(ann, x_calibration)  # same ceilings on every worker
        snn.compile("adam", keras_snn.losses.ReadoutCrossentropy(),
                    metrics=[keras_snn.metrics.StepAccuracy()])
    snn.fit(x_train, y_train, batch_size=256, epochs=3)  # 256: the global batch
"""

import keras
import numpy as np
import tensorflow as tf


def is_multi_worker(strategy):
    """Whether `strategy` is a MultiWorkerMirroredStrategy (Keras's fit fails under it).

    Example:

    >>> import tensorflow as tf
    >>> is_multi_worker(tf.distribute.get_strategy())  # the default strategy
    False
    """
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def fit_multi_worker(
    model,
    x=None,
    y=None,
    batch_size=None,
    epochs=1,
    verbose="auto",
    callbacks=None,
    validation_split=0.0,
    validation_data=None,
    shuffle=True,
    class_weight=None,
    sample_weight=None,
    initial_epoch=0,
    steps_per_epoch=None,
    validation_steps=None,
    validation_batch_size=None,
    validation_freq=1,
):
    """Train `model` with `fit`'s arguments under its MultiWorkerMirroredStrategy.

    Called by `SpikingModel.fit` when the model was built in a
    `tf.distribute.MultiWorkerMirroredStrategy` scope (or fit is called in
    one); every worker runs the same script and calls `fit` with the same
    data. A global batch of `batch_size` samples (or each element of a
    batched `tf.data.Dataset`) is split over all workers' replicas; each
    replica computes the compiled loss on its share, scaled by 1 / replicas
    as Keras does, and the optimizer sums the gradients over all replicas
    before one update on every worker. With global batches that divide
    evenly over the replicas this is the gradient of the global batch's mean
    loss, so the weights equal a one-process `fit` with the same global
    batches, to float rounding. (An uneven last batch weighs each replica's
    mean equally, as Keras's own `fit` does under MirroredStrategy.)

    Args:
        model: a compiled `keras.Model` (normally a `SpikingModel`) created
            in the strategy's scope.
        x: a NumPy array or tensor of inputs, or a `tf.data.Dataset` of
            batched `(x, y)` or `(x, y, sample_weight)`.
        y: labels for array `x` (None for a dataset).
        batch_size: global batch size for array input (default 32); not
            with a dataset, which is batched already.
        epochs, initial_epoch: as in `keras.Model.fit`.
        verbose: "auto" or 1 (progress bar), 2 (one line per epoch), 0.
        callbacks: Keras callbacks, run on every worker with the same logs
            (summed over all workers), so a callback that stops training
            (`EarlyStopping`) stops every worker at the same epoch.
        validation_split, validation_data, validation_steps,
            validation_batch_size, validation_freq: as in `fit`; validation
            runs `evaluate_multi_worker` and adds `val_` logs.
        shuffle: shuffle array input every epoch, in the same order on every
            worker (the seed is agreed on through the strategy).
        class_weight: not supported (a ValueError); pass `sample_weight`.
        sample_weight: per-sample weights for array input.
        steps_per_epoch: batches per epoch (default: the whole data). With
            it the data is read on across epochs, as in `fit`.

    Returns:
        A `keras.callbacks.History`, with the same keys as `fit`'s.

    Raises:
        ValueError: for `class_weight`, `y`, `sample_weight` or `batch_size`
            with a dataset, `validation_split` with a dataset, and an
            uncompiled model.
        TypeError: for inputs that are neither arrays nor a tf.data.Dataset.

    Example:

    >>> import keras, numpy as np, keras_snn
    >>> ann = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> snn = keras_snn.convert_model(ann, np.ones((8, 4)), timesteps=4)
    >>> snn.compile("sgd", keras_snn.losses.ReadoutCrossentropy())
    >>> fit_multi_worker(snn, np.ones((8, 4)), np.zeros(8), class_weight={0: 2.0})
    Traceback (most recent call last):
    ...
    ValueError: `class_weight` is not supported under MultiWorkerMirroredStrategy ...
    """
    _check_compiled(model, "fit")
    if class_weight is not None:
        raise ValueError(
            "`class_weight` is not supported under MultiWorkerMirroredStrategy (Keras's own "
            "fit fails there, keras-team/keras#20585, so keras_snn runs its own loop); pass "
            "per-sample weights as `sample_weight` (e.g. class_weight[y] for each sample)."
        )
    strategy = model.distribute_strategy
    if validation_split and validation_data is None:
        x, y, sample_weight, validation_data = _split_validation(
            x, y, sample_weight, validation_split
        )
    data = _GlobalBatches(x, y, sample_weight, batch_size, shuffle, strategy)
    if steps_per_epoch:  # read on across epochs, as fit does
        iterator = iter(strategy.experimental_distribute_dataset(data.from_epoch(initial_epoch)))
    _build_optimizer(model, strategy)
    train_function = None

    if verbose == "auto":
        verbose = 1
    callback_list = keras.callbacks.CallbackList(
        callbacks, add_history=True, add_progbar=verbose != 0, model=model,
        verbose=verbose, epochs=epochs, steps=steps_per_epoch or data.steps,
    )
    model.stop_training = False
    callback_list.on_train_begin()
    logs = {}
    validation = None  # an _Evaluation, made at the first validation
    for epoch in range(initial_epoch, epochs):
        model.reset_metrics()
        callback_list.on_epoch_begin(epoch)
        if steps_per_epoch:
            epoch_iterator = iterator
        else:
            epoch_iterator = iter(strategy.experimental_distribute_dataset(data.epoch(epoch)))
        if train_function is None:  # every epoch's batches have the same element spec
            train_function = _step_function(model.train_step, model, strategy, epoch_iterator)
        step = 0
        while steps_per_epoch is None or step < steps_per_epoch:
            batch = epoch_iterator.get_next_as_optional()
            if not batch.has_value():
                if steps_per_epoch and step == 0:
                    raise ValueError(
                        f"The data ran out before epoch {epoch + 1}: with steps_per_epoch="
                        f"{steps_per_epoch}, pass a dataset that repeats (dataset.repeat())."
                    )
                break
            callback_list.on_train_batch_begin(step)
            logs = train_function(batch.get_value())
            callback_list.on_train_batch_end(step, logs)
            step += 1
            if model.stop_training:
                break
        epoch_logs = dict(logs)
        if validation_data is not None and _should_validate(epoch, validation_freq):
            val_x, val_y, val_weight = keras.utils.unpack_x_y_sample_weight(
                validation_data if isinstance(validation_data, tuple) else (validation_data,)
            )
            if validation is None:
                val_data = _GlobalBatches(
                    val_x, val_y, val_weight, validation_batch_size or batch_size, False, strategy
                )
                validation = _Evaluation(model, strategy, val_data)
            val_logs = validation.run(validation_steps, callback_list)
            epoch_logs.update({f"val_{name}": value for name, value in val_logs.items()})
        callback_list.on_epoch_end(epoch, epoch_logs)
        if model.stop_training:
            break
    callback_list.on_train_end(logs=logs)
    return model.history


def evaluate_multi_worker(
    model,
    x=None,
    y=None,
    batch_size=None,
    verbose="auto",
    sample_weight=None,
    steps=None,
    callbacks=None,
    return_dict=False,
):
    """`keras.Model.evaluate` under the model's MultiWorkerMirroredStrategy.

    Every worker calls it with the same data; each global batch is split
    over the replicas and the compiled metrics are summed over all of them,
    so every worker returns the scores of the whole data, equal to one
    process's `evaluate` (to float rounding).

    Args:
        model: a compiled `keras.Model` created in the strategy's scope.
        x, y, sample_weight: arrays, or a batched `tf.data.Dataset` as `x`.
        batch_size: global batch size for array input (default 32).
        verbose: "auto" or 1 (progress bar), 0 (silent).
        steps: batches to evaluate (default: all).
        callbacks: Keras callbacks (their `on_test_*` hooks run), or a
            `keras.callbacks.CallbackList`.
        return_dict: return `{name: value}` instead of a list (or a scalar
            when there is one score), as `evaluate` does.

    Returns:
        The scores, in `evaluate`'s form.
    """
    _check_compiled(model, "evaluate")
    strategy = model.distribute_strategy
    data = _GlobalBatches(x, y, sample_weight, batch_size, False, strategy)
    if verbose == "auto":
        verbose = 1
    if not isinstance(callbacks, keras.callbacks.CallbackList):
        callbacks = keras.callbacks.CallbackList(
            callbacks, add_progbar=verbose != 0, model=model, verbose=verbose, epochs=1,
            steps=steps or data.steps,
        )
    logs = _Evaluation(model, strategy, data).run(steps, callbacks)
    if return_dict:
        return logs
    return _in_metric_order(model, logs)


class _Evaluation:
    """`test_step` on every replica over some data, compiled once, run as often as needed."""

    def __init__(self, model, strategy, data):
        self._model = model
        self._dataset = strategy.experimental_distribute_dataset(data.epoch(0))
        self._function = _step_function(model.test_step, model, strategy, iter(self._dataset))

    def run(self, steps, callbacks):
        """The scores over the data (at most `steps` batches), with the `on_test_*` hooks."""
        model = self._model
        model.stop_evaluating = False
        callbacks.on_test_begin()
        model.reset_metrics()
        logs = {}
        iterator = iter(self._dataset)
        step = 0
        while steps is None or step < steps:
            batch = iterator.get_next_as_optional()
            if not batch.has_value():
                break
            callbacks.on_test_batch_begin(step)
            logs = self._function(batch.get_value())
            callbacks.on_test_batch_end(step, logs)
            step += 1
            if model.stop_evaluating:
                break
        logs = {name: float(value) for name, value in logs.items()}
        callbacks.on_test_end(logs)
        return logs


def _check_compiled(model, method):
    if not getattr(model, "compiled", False) or getattr(model, "optimizer", None) is None:
        raise ValueError(
            f"Model '{model.name}' must be compiled (model.compile(optimizer, loss, metrics)) "
            f"before {method}."
        )


def _split_validation(x, y, sample_weight, validation_split):
    """The last `validation_split` of array data held out, as `fit` does."""
    if isinstance(x, tf.data.Dataset):
        raise ValueError(
            "`validation_split` needs array input; with a tf.data.Dataset pass "
            "`validation_data`."
        )
    count = len(x)
    split_at = int(np.floor(count * (1.0 - validation_split)))
    if split_at in (0, count):
        raise ValueError(
            f"Training data contains {count} samples, too few to split with "
            f"validation_split={validation_split}."
        )
    parts = [x, y, sample_weight]
    train = [None if part is None else part[:split_at] for part in parts]
    held = tuple(part[split_at:] for part in parts if part is not None)
    return (*train, held)


def _should_validate(epoch, validation_freq):
    if isinstance(validation_freq, int):
        return (epoch + 1) % validation_freq == 0
    return epoch + 1 in validation_freq


class _GlobalBatches:
    """fit's or evaluate's data as global batches, the same on every worker.

    A `tf.data.Dataset` is used as it is (its elements are the global
    batches). Arrays are batched here; shuffled, each epoch's order is a
    stateless permutation of the agreed seed and the epoch
    (`tf.random.experimental.index_shuffle`), so it depends neither on a
    worker's global seed nor on how many epochs it has read.
    """

    def __init__(self, x, y, sample_weight, batch_size, shuffle, strategy):
        if isinstance(x, tf.data.Dataset):
            if y is not None or sample_weight is not None:
                raise ValueError(
                    "With a tf.data.Dataset `x`, pass labels and weights inside the dataset "
                    "(elements (x, y) or (x, y, sample_weight)), not as `y`/`sample_weight`."
                )
            if batch_size is not None:
                raise ValueError(
                    "`batch_size` must be None with a tf.data.Dataset, which is batched "
                    "already (its batches are the global batches, split over the workers)."
                )
            self._dataset = x
            steps = int(x.cardinality())
            self.steps = steps if steps >= 0 else None  # unknown or infinite
            return
        if x is None or not (isinstance(x, (np.ndarray, tf.Tensor)) or hasattr(x, "__array__")):
            raise TypeError(
                "Under MultiWorkerMirroredStrategy, fit and evaluate take NumPy arrays/tensors "
                f"or a tf.data.Dataset; received x of type {type(x).__name__}. Wrap a "
                "generator or PyDataset in tf.data.Dataset.from_generator."
            )
        self._dataset = None
        self._parts = tuple(
            tf.convert_to_tensor(part) for part in (x, y, sample_weight) if part is not None
        )
        self._count = int(self._parts[0].shape[0])
        self._batch_size = batch_size or 32
        self._seed = shuffle_seed(strategy) if shuffle else None
        self.steps = -(-self._count // self._batch_size)

    def epoch(self, epoch):
        """The global batches of one epoch."""
        if self._dataset is not None:
            return self._dataset
        return self._batches(tf.constant(epoch, tf.int64))

    def from_epoch(self, epoch):
        """The global batches of every epoch from `epoch` on, one after another."""
        if self._dataset is not None:
            return self._dataset
        return tf.data.Dataset.range(epoch, 2**62).flat_map(self._batches)

    def _batches(self, epoch):
        indices = tf.data.Dataset.range(self._count)
        if self._seed is not None:
            seed = tf.stack([tf.constant(self._seed, tf.int64), epoch])
            indices = indices.map(
                lambda i: tf.random.experimental.index_shuffle(i, seed, self._count - 1)
            )
        parts = self._parts
        return indices.batch(self._batch_size).map(
            lambda batch: tuple(tf.gather(part, batch) for part in parts)
        )


def epoch_order(seed, epoch, count):
    """The sample order of a shuffled epoch, for a seed from `shuffle_seed`.

    Example:

    >>> order = epoch_order(seed=7, epoch=0, count=5)
    >>> sorted(order.tolist())
    [0, 1, 2, 3, 4]
    """
    seed = tf.constant([seed, epoch], tf.int64)
    return tf.random.experimental.index_shuffle(
        tf.range(count, dtype=tf.int64), seed, count - 1
    ).numpy()


def shuffle_seed(strategy):
    """A shuffle seed all workers agree on: the first replica's NumPy draw.

    Every worker must read the samples in the same order, or the split of a
    global batch over the workers would repeat some samples and drop others.
    """
    draw = int(np.random.randint(0, 2**31 - 1))

    def first_replica_draw():
        first = tf.equal(tf.distribute.get_replica_context().replica_id_in_sync_group, 0)
        return tf.cast(first, tf.int64) * draw

    local = strategy.run(first_replica_draw)
    return int(strategy.reduce(tf.distribute.ReduceOp.SUM, local, axis=None))


def _build_optimizer(model, strategy):
    """Create the optimizer's variables in the strategy's scope, before tracing.

    (The compiled loss and metrics create theirs on the first traced step,
    through the strategy's variable creator.)
    """
    with strategy.scope():
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)


def _step_function(replica_step, model, strategy, iterator):
    """One compiled step: `replica_step` on every replica, then the summed metrics."""

    def step(batch):
        strategy.run(replica_step, args=(batch,))
        return model.get_metrics_result()

    return tf.function(step, input_signature=[iterator.element_spec])


def _in_metric_order(model, logs):
    """`evaluate`'s list form: the loss and compiled metrics in order, then the rest by name."""
    names = []
    for metric in model.metrics:
        inner = getattr(metric, "metrics", None)  # Keras's container of compiled metrics
        names += [m.name for m in inner] if inner else [metric.name]
    names = [name for name in names if name in logs]
    names += sorted(name for name in logs if name not in names)
    values = [logs[name] for name in names]
    return values[0] if len(values) == 1 else values
