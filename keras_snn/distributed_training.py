"""Spike-based training under tf.distribute.MultiWorkerMirroredStrategy.

`keras.Model.fit` (Keras 3.15, TF 2.21) fails under
MultiWorkerMirroredStrategy: it reduces the first input batch and the
per-replica logs with calls that cannot take a worker's single local replica
("Attempt to convert a value (PerReplica ...) to a Tensor"; an open Keras
issue, keras-team/keras#20585). Under MirroredStrategy (one process, several
devices) Keras's fit works and is used as it is.

`SpikingModel.fit` therefore hands MultiWorkerMirroredStrategy training to
`fit_multi_worker`, an epoch loop of its own around Keras's own pieces: the
model's `train_step` runs on every replica through `strategy.run` (so the
compiled loss, metrics, loss scaling and the optimizer's all-reduce of the
gradients are Keras's), the logs are the compiled metrics read in the
cross-replica context (summed over all workers), and the callbacks are a
`keras.callbacks.CallbackList`, as in `fit`. Each global batch is split over
the workers, so the result equals one process trained on the same global
batches (to float rounding).
"""

import keras
import numpy as np
import tensorflow as tf

# fit() arguments the multi-worker loop does not implement; each with what to do instead.
_UNSUPPORTED = {
    "validation_split": "evaluate on held-out data after fit (keras_snn.simulate)",
    "validation_data": "evaluate on held-out data after fit (keras_snn.simulate)",
    "validation_steps": "evaluate on held-out data after fit (keras_snn.simulate)",
    "validation_batch_size": "evaluate on held-out data after fit (keras_snn.simulate)",
    "validation_freq": "evaluate on held-out data after fit (keras_snn.simulate)",
    "class_weight": "pass per-sample weights as `sample_weight`",
}
_DEFAULTS = {"validation_split": 0.0, "validation_freq": 1}


def is_multi_worker(strategy):
    """Whether `strategy` is a MultiWorkerMirroredStrategy (Keras's fit fails under it)."""
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def fit_multi_worker(
    model,
    x=None,
    y=None,
    batch_size=None,
    epochs=1,
    verbose="auto",
    callbacks=None,
    shuffle=True,
    sample_weight=None,
    initial_epoch=0,
    steps_per_epoch=None,
    **kwargs,
):
    """Train `model` with `fit`'s arguments under its MultiWorkerMirroredStrategy.

    Called by `SpikingModel.fit` when the model was built in a
    `tf.distribute.MultiWorkerMirroredStrategy` scope; every worker runs the
    same script and calls `fit` with the same data. A global batch of
    `batch_size` samples (or each element of a batched `tf.data.Dataset`) is
    split over all workers' replicas; each replica computes the compiled loss
    on its share, scaled by 1 / replicas as Keras does, and the optimizer
    sums the gradients over all replicas before one update on every worker.
    With global batches that divide evenly over the replicas this is the
    gradient of the global batch's mean loss, so the weights equal a
    one-process `fit` with the same global batches, to float rounding. (An
    uneven last batch weighs each replica's mean equally, as Keras's own
    `fit` does under MirroredStrategy.)

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
            (`EarlyStopping` on "loss") stops every worker at the same epoch.
        shuffle: shuffle array input every epoch, in the same order on every
            worker (the seed is agreed on through the strategy).
        sample_weight: per-sample weights for array input.
        steps_per_epoch: batches per epoch (default: the whole data). With
            it the data is read on across epochs, as in `fit`.

    Returns:
        A `keras.callbacks.History`, with the same keys as `fit`'s.

    Raises:
        ValueError: for `fit` arguments this loop does not implement
            (validation arguments, `class_weight`), for `y` or `batch_size`
            with a dataset, and for an uncompiled model.
        TypeError: for inputs that are neither arrays nor a tf.data.Dataset.
    """
    strategy = model.distribute_strategy
    _check_arguments(model, kwargs)
    dataset = _global_dataset(model, x, y, batch_size, sample_weight, shuffle, strategy)
    distributed = strategy.experimental_distribute_dataset(dataset)
    _build(model, strategy, dataset)
    train_function = _train_function(model, strategy, distributed)

    if verbose == "auto":
        verbose = 1
    steps = steps_per_epoch or _cardinality(dataset)
    callback_list = keras.callbacks.CallbackList(
        callbacks, add_history=True, add_progbar=verbose != 0, model=model,
        verbose=verbose, epochs=epochs, steps=steps,
    )
    model.stop_training = False
    callback_list.on_train_begin()
    iterator = iter(distributed) if steps_per_epoch else None
    logs = {}
    for epoch in range(initial_epoch, epochs):
        model.reset_metrics()
        callback_list.on_epoch_begin(epoch)
        epoch_iterator = iterator if steps_per_epoch else iter(distributed)
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
        callback_list.on_epoch_end(epoch, epoch_logs)
        if model.stop_training:
            break
    callback_list.on_train_end(logs=logs)
    return model.history


def _check_arguments(model, kwargs):
    for name, value in kwargs.items():
        if name not in _UNSUPPORTED:
            raise TypeError(f"fit() got an unexpected keyword argument {name!r}.")
        if value is not None and value != _DEFAULTS.get(name):
            raise ValueError(
                f"`{name}` is not supported when training under MultiWorkerMirroredStrategy "
                f"(Keras's own fit fails there, keras-team/keras#20585, so keras_snn runs its "
                f"own training loop); {_UNSUPPORTED[name]}."
            )
    if getattr(model, "optimizer", None) is None or getattr(model, "compiled", True) is False:
        raise ValueError(
            f"Model '{model.name}' must be compiled (model.compile(optimizer, loss, metrics)) "
            "before fit."
        )


def _global_dataset(model, x, y, batch_size, sample_weight, shuffle, strategy):
    """A tf.data.Dataset of global batches, the same on every worker."""
    if isinstance(x, tf.data.Dataset):
        if y is not None or sample_weight is not None:
            raise ValueError(
                "With a tf.data.Dataset `x`, pass labels and weights inside the dataset "
                "(elements (x, y) or (x, y, sample_weight)), not as `y`/`sample_weight`."
            )
        if batch_size is not None:
            raise ValueError(
                "`batch_size` must be None with a tf.data.Dataset, which is batched already "
                "(its batches are the global batches, split over the workers)."
            )
        return x
    if x is None or not (isinstance(x, (np.ndarray, tf.Tensor)) or hasattr(x, "__array__")):
        raise TypeError(
            "Under MultiWorkerMirroredStrategy, fit takes NumPy arrays/tensors or a "
            f"tf.data.Dataset; received x of type {type(x).__name__}. Wrap a generator or "
            "PyDataset in tf.data.Dataset.from_generator."
        )
    parts = tuple(part for part in (x, y, sample_weight) if part is not None)
    dataset = tf.data.Dataset.from_tensor_slices(parts)
    if shuffle:
        dataset = dataset.shuffle(
            len(x), seed=_shared_seed(strategy), reshuffle_each_iteration=True
        )
    return dataset.batch(batch_size or 32)


def _shared_seed(strategy):
    """A shuffle seed all workers agree on: the first replica's draw.

    Every worker must read the samples in the same order, or the split of a
    global batch over the workers would repeat some samples and drop others.
    """
    draw = int(np.random.randint(0, 2**31 - 1))

    def first_replica_draw():
        first = tf.equal(tf.distribute.get_replica_context().replica_id_in_sync_group, 0)
        return tf.cast(first, tf.int64) * draw

    local = strategy.run(first_replica_draw)
    return int(strategy.reduce(tf.distribute.ReduceOp.SUM, local, axis=None))


def _cardinality(dataset):
    steps = int(dataset.cardinality())
    return steps if steps >= 0 else None  # unknown or infinite: the progress bar counts


def _build(model, strategy, dataset):
    """Create the optimizer's and the compiled metrics' variables in the strategy's scope."""
    del dataset
    with strategy.scope():
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)


def _train_function(model, strategy, distributed):
    """One compiled step: `train_step` on every replica, then the summed metrics."""

    def step(batch):
        strategy.run(model.train_step, args=(batch,))
        return model.get_metrics_result()

    return tf.function(step, input_signature=[distributed.element_spec])
