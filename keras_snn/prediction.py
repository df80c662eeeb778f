"""`SpikingModel.predict` on arrays: the loop writes the readout in place into its output.

Keras's predict keeps every batch's `(batch, T, classes)` readout in a list
and concatenates them at the end, so the whole readout exists twice; inside
each batch's compiled loop the per-step readouts are collected, stacked and
transposed, more copies of that batch's share. At long T the readout is
what dominates inference memory (issue 22). For an in-memory array the
model's `predict` instead allocates the whole `(N, T / readout_every,
classes)` result once, as a TensorFlow variable, and every batch's loop
writes each kept step's readout into its rows as it runs; the returned NumPy
array is that variable's memory. Each batch runs as one call of the loop
that starts at rest: carrying neuron states from call to call (an earlier
version ran batches in chunks of steps) keeps a second set of states alive
and made TensorFlow's allocator pool twice as large (benchmarks/RESULTS.md,
"Memory"). A batch larger than the model's `sub_batch_size` runs as several
such calls (`keras_snn.sub_batching`), the units on which `keras_snn.autotune`
times the loop variants.

Everything else (datasets and generators, `steps`, stateful models, event
input whose frames already hold T steps, a `tf.distribute` strategy) goes
through Keras's own predict.
"""

import weakref

import keras
import numpy as np
import tensorflow as tf

from keras_snn import sub_batching

_DEFAULT_BATCH_SIZE = 32  # Keras's predict default

# Compiled batch runners, per model (weak keys: they go with the model).
_BATCH_RUNNERS = weakref.WeakKeyDictionary()


def runs_in_place(model, x, steps):
    """Whether `predict(x, steps=steps)` on `model` writes its readout in place."""
    return (
        isinstance(x, (np.ndarray, tf.Tensor))
        and steps is None
        and not model.stateful
        and not model.expects_sequence
        and not tf.distribute.has_strategy()
        and getattr(model, "_distribute_strategy", None) is None
    )


def predict_in_place(model, x, batch_size=None, verbose="auto", callbacks=None):
    """`model.predict(x)` for an array `x`, written in place; see the module docstring.

    Returns the same `(N, T / readout_every, classes)` NumPy array as Keras's
    predict; callbacks receive `on_predict_begin`, `on_predict_batch_begin`,
    `on_predict_batch_end` and `on_predict_end`, and `verbose` shows Keras's
    progress bar. As in Keras the batch-end logs hold the batch's readout
    (`{"outputs": ...}`), a copy made only when callbacks were passed.
    """
    from keras_snn.spiking_model import _check_readout_every

    if batch_size is None:
        batch_size = _DEFAULT_BATCH_SIZE
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or (
        batch_size < 1
    ):
        raise ValueError(f"`batch_size` must be an int >= 1; received {batch_size!r}.")
    model._check_input_dtype(x.dtype)
    model._check_input_shape(tuple(x.shape))
    samples = int(x.shape[0])
    every = _check_readout_every(model.readout_every, model.timesteps)
    batches = -(-samples // batch_size)
    logs_outputs = bool(callbacks)
    callbacks = keras.callbacks.CallbackList(
        callbacks, add_progbar=verbose != 0, verbose=verbose, epochs=1, steps=batches,
        model=model,
    )
    classes = tuple(model.compute_output_shape((None,) + tuple(x.shape[1:]))[2:])
    buffer = _zeroed_buffer((samples, model.timesteps // every) + classes, model.compute_dtype)
    # A large batch runs as several loop calls (keras_snn.sub_batching), the
    # units on which the loop variants are timed (keras_snn.autotune).
    calls = sub_batching.BatchCalls(
        model, "predict", batch_size, model.timesteps, x, samples // batch_size
    )
    callbacks.on_predict_begin()
    for index in range(batches):
        callbacks.on_predict_batch_begin(index)
        first = index * batch_size
        rows = min(batch_size, samples - first)

        def run(variant, start, stop, first=first):
            inputs = tf.convert_to_tensor(x[first + start : first + stop])
            _batch_runner(variant, every, inputs, buffer)(
                inputs, buffer, tf.constant(first + start)
            )

        calls.run(rows, run)
        # A gather copies the batch's rows only: after the loop's scatters a
        # dense read would copy the whole buffer (copy-on-read mode).
        logs = {}
        if logs_outputs:
            logs["outputs"] = buffer.sparse_read(tf.range(first, first + rows)).numpy()
        callbacks.on_predict_batch_end(index, logs)
    callbacks.on_predict_end()
    return _as_numpy(buffer)


def _zeroed_buffer(shape, dtype):
    """A variable of zeros of `shape`, its first two dimensions left free for tracing."""
    return tf.Variable(
        tf.zeros(shape, dtype), shape=tf.TensorShape([None, None] + list(shape[2:])),
        trainable=False,
    )


def _as_numpy(buffer):
    """The variable's values as a writable NumPy array sharing its memory.

    After in-place writes a variable copies its whole buffer on every dense
    read (TensorFlow's copy-on-read mode, which protects readers from later
    writes); there are no later writes here, so the mode is turned off and the
    read value is the buffer itself. `Tensor.numpy()` would copy it again
    (tensors are immutable); the variable is dropped when `predict` returns
    and is never written again, so its memory is handed over. Where that is
    not possible (another device) it is copied.
    """
    tf.raw_ops.DisableCopyOnRead(resource=buffer.handle)
    values = buffer.read_value()
    array = values._numpy()  # pylint: disable=protected-access
    if not (isinstance(array, np.ndarray) and array.flags.writeable):
        array = np.array(array)
    return array


def _batch_runner(model, every, inputs, buffer):
    """`run(inputs, buffer, first_row)`: one batch's loop writing into `buffer`, traced once.

    Traced with the batch dimension and the buffer's first two dimensions
    free, so every batch, a smaller last batch and later calls with other
    sample counts run one graph: a second traced loop costs more memory than
    a batch's readout. One per model, `readout_every` and input dtype.
    """
    cache = _BATCH_RUNNERS.setdefault(model, {})
    key = (every, inputs.dtype)
    if key not in cache:
        owner = weakref.ref(model)

        def run(inputs, buffer, first_row):
            owner()._execute(
                inputs, None, record=None, readout_every=every,
                readout_into=(buffer, first_row),
            )

        batch = tf.TensorSpec([None] + list(inputs.shape[1:]), inputs.dtype)
        cache[key] = tf.function(run).get_concrete_function(
            batch, buffer, tf.TensorSpec([], tf.int32)
        )
    return cache[key]
