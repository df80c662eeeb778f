"""`SpikingModel.predict` on arrays: the readout written straight into its output.

Keras's predict keeps every batch's `(batch, T, classes)` readout in a list
and concatenates them at the end, so the whole readout exists twice; inside
each batch's compiled loop the per-step readouts are stacked and transposed,
two more copies of that batch's share. At long T the readout is what
dominates inference memory (issue 22: predict grew by three times what it
returned). For an in-memory array the model's `predict` runs each batch in
chunks of steps instead, carrying the neuron states from one chunk to the
next (so the result equals one long run), and copies every chunk's readout
into one preallocated NumPy array. What predict holds for the readout beyond
its result is then one chunk's readout, a few MiB whatever T is. Running a
batch as several calls of the loop still touches more of TensorFlow's
allocator pool than `simulate`'s single loop does: for Conv MNIST at batch
250 about 240 MiB more at T=2000-5000, not yet removed (benchmarks/RESULTS.md,
"Memory", issue 22). The chunks are also the units on which
`keras_snn.autotune` times the loop variants.

Everything else (datasets and generators, `steps`, stateful models, event
input whose frames already hold T steps, a `tf.distribute` strategy) goes
through Keras's own predict.
"""

import weakref

import keras
import numpy as np
import tensorflow as tf

from keras_snn import autotune

# A chunk's readout (batch x steps x classes) is kept under this size.
_CHUNK_BYTES = 4 * 2**20
_DEFAULT_BATCH_SIZE = 32  # Keras's predict default

# Compiled chunk runners, per model (weak keys: they go with the model).
_CHUNK_RUNNERS = weakref.WeakKeyDictionary()


def runs_in_chunks(model, x, steps):
    """Whether `predict(x, steps=steps)` on `model` takes the chunked path."""
    return (
        isinstance(x, (np.ndarray, tf.Tensor))
        and steps is None
        and not model.stateful
        and not model.expects_sequence
        and not tf.distribute.has_strategy()
        and getattr(model, "_distribute_strategy", None) is None
    )


def chunk_steps(timesteps, readout_every, batch_size, readout_step_bytes):
    """Steps per chunk: a multiple of `readout_every`, its readout under _CHUNK_BYTES.

    `readout_step_bytes` is one sample's readout at one step. The chunks run
    `timesteps` steps in all (the last chunk may be shorter); with
    `readout_every` dividing `timesteps` every chunk keeps whole periods.

    >>> chunk_steps(5000, 1, 250, 40)
    419
    >>> chunk_steps(5000, 5000, 250, 40)  # readout_every="final": one chunk
    5000
    """
    kept_per_chunk = max(1, _CHUNK_BYTES // (batch_size * readout_step_bytes * readout_every))
    return min(timesteps, kept_per_chunk * readout_every)


def predict_in_chunks(model, x, batch_size=None, verbose="auto", callbacks=None):
    """`model.predict(x)` for an array `x`, in chunks of steps; see the module docstring.

    Returns the same `(N, T / readout_every, classes)` NumPy array as Keras's
    predict; callbacks receive `on_predict_begin`, `on_predict_batch_begin`,
    `on_predict_batch_end` (logs `{"outputs": batch readout}`) and
    `on_predict_end`, and `verbose` shows Keras's progress bar.
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
    timesteps = model.timesteps
    every = _check_readout_every(model.readout_every, timesteps)
    batches = -(-samples // batch_size)
    callbacks = keras.callbacks.CallbackList(
        callbacks, add_progbar=verbose != 0, verbose=verbose, epochs=1, steps=batches,
        model=model,
    )
    classes = tuple(model.compute_output_shape((None,) + tuple(x.shape[1:]))[2:])
    dtype = np.dtype(model.compute_dtype)
    output = np.empty((samples, timesteps // every) + classes, dtype)
    steps = chunk_steps(
        timesteps, every, batch_size, dtype.itemsize * max(1, int(np.prod(classes)))
    )
    # Loop variants timed on the first full chunks (keras_snn.autotune).
    signature = autotune.signature("predict", batch_size, steps, x)
    runner = autotune.tuner_for(model, signature, (samples // batch_size) * (timesteps // steps))
    callbacks.on_predict_begin()
    for index in range(batches):
        callbacks.on_predict_batch_begin(index)
        start = index * batch_size
        inputs = tf.convert_to_tensor(x[start : start + batch_size])
        rows = int(inputs.shape[0])
        states = model._initial_states(rows)
        for done in range(0, timesteps, steps):
            length = min(steps, timesteps - done)

            def run(variant, states=states, done=done, length=length):
                runner = _chunk_runner(variant, every, inputs, states)
                readout, states = runner(inputs, states, tf.constant(done), tf.constant(length))
                return readout.numpy(), states

            timed = rows == batch_size and length == steps
            readout, states = runner.run(run, timed=timed)
            kept = done // every
            output[start : start + rows, kept : kept + length // every] = readout
        callbacks.on_predict_batch_end(index, {"outputs": output[start : start + rows]})
    callbacks.on_predict_end()
    return output


def _chunk_runner(model, every, inputs, states):
    """`run(inputs, states, first_step, steps) -> (readout, states)`, traced once.

    Traced with the batch dimension and the number of steps left free, so
    the full chunks, the shorter last chunk and a smaller last batch all run
    one graph: a second traced loop would cost more memory than a chunk's
    readout. One per model, `readout_every` and input dtype.
    """
    cache = _CHUNK_RUNNERS.setdefault(model, {})
    key = (every, inputs.dtype)
    if key not in cache:
        owner = weakref.ref(model)

        def run(inputs, states, first_step, steps):
            result = owner()._execute(
                inputs, steps, record=None, readout_every=every, states=states,
                first_step=first_step,
            )
            return result["readout"], result["states"]

        def any_batch(tensor):
            return tf.TensorSpec([None] + list(tensor.shape[1:]), tensor.dtype)

        scalar = tf.TensorSpec([], tf.int32)
        cache[key] = tf.function(run).get_concrete_function(
            any_batch(inputs), tf.nest.map_structure(any_batch, states), scalar, scalar
        )
    return cache[key]
