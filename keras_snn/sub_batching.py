"""How many samples one call of the time loop runs: a large batch as several calls.

TensorFlow's CPU allocator (oneDNN's BFC pool on x86) serves the loop's
tensors from regions that double in size and are never returned, so the
pool follows the batch: 544 MiB at a Conv MNIST batch of 250, 2125 MiB at
1000. Over a long run the loop touches more and more of that pool's pages,
so the peak grows with T although nothing per step is kept: `predict` at
batch 1000 grew by 410 MiB beyond its result from T=50 to T=5000, the same
1000 images at batch 250 by none (benchmarks/RESULTS.md, "Memory"). Samples
are independent at inference, so `predict` on arrays and `simulate` run a
batch larger than `rows_per_call(model)` as several calls of the loop on
consecutive slices of it; the numbers are those of one call (random input
encoders draw per call). `snn(x)`, `fit` and `evaluate` run a batch as given:
training needs the whole batch in one graph for its gradients.
"""

import tensorflow as tf

from keras_snn import autotune

# The neuron states of one loop call are kept within this many bytes (one
# tensor of every spiking layer's neurons, `SpikingModel.neuron_counts`):
# a Conv MNIST batch of 250 holds 85 MB, the size at which its memory stayed
# flat over 5000 steps. The loop keeps several such tensors per layer (input
# current, membrane, spikes, counts), so the pool is a few times this.
STATE_BYTES_PER_CALL = 96 * 2**20


def rows_per_call(model):
    """The most samples one loop call of `model` runs: its `sub_batch_size`, or "auto"'s.

    "auto" (`sub_batch_size=None`) is as many samples as keep one tensor of
    every spiking layer's neurons within `STATE_BYTES_PER_CALL`: 296 for the
    Conv MNIST net (84800 neurons per sample), 67 for Conv CIFAR, 100000+ for
    a small dense network, which is never split.
    """
    if model.sub_batch_size is not None:
        return model.sub_batch_size
    neurons = max(sum(model.neuron_counts().values()), 1)
    per_sample = neurons * tf.as_dtype(model.compute_dtype).size
    return max(1, STATE_BYTES_PER_CALL // per_sample)


def call_slices(rows, limit):
    """`(start, stop)` of the loop calls for a batch of `rows` samples, at most `limit` each.

    As few calls as the limit allows, of sizes that differ by at most one
    (largest first), so a batch of 1000 with a limit of 296 runs as four
    calls of 250, not three of 296 and one of 112.

    >>> list(call_slices(1000, 296))
    [(0, 250), (250, 500), (500, 750), (750, 1000)]
    >>> list(call_slices(7, 3))
    [(0, 3), (3, 5), (5, 7)]
    >>> list(call_slices(5, 8))
    [(0, 5)]
    """
    calls = call_count(rows, limit)
    size, larger = divmod(rows, calls)
    start = 0
    for index in range(calls):
        stop = start + size + (index < larger)
        yield start, stop
        start = stop


def call_count(rows, limit):
    """How many loop calls a batch of `rows` samples runs as."""
    return -(-rows // limit)


def call_rows(rows, limit):
    """The size of the largest call for a batch of `rows` (the unit autotune times)."""
    return -(-rows // call_count(rows, limit))


class BatchCalls:
    """A driver's batches run as loop calls, each a unit `keras_snn.autotune` may time.

    The calls of a full batch are the units: the tuning signature carries the
    largest call's size, and only calls of that size are timed (a smaller
    call, e.g. from a last partial batch, runs the current choice untimed).

    Args:
        model: the `SpikingModel` run.
        kind: what the driver runs ("predict", "simulate"), part of the
            signature.
        batch_rows: the samples of a full batch.
        steps: the steps of every call.
        inputs: a batch (its shape after the batch dimension and its dtype
            enter the signature).
        batches: the full batches the driver will run (None: unknown).

    Example:

    >>> import keras, numpy as np, keras_snn
    >>> from keras_snn import layers
    >>> inputs = keras.Input((4,))
    >>> x = layers.SpikingDense(3, neuron=None)(layers.AnalogInput()(inputs))
    >>> snn = keras_snn.SpikingModel(keras.Model(inputs, layers.Readout()(x)), timesteps=5,
    ...                              sub_batch_size=3)
    >>> x = np.ones((7, 4), "float32")
    >>> calls = BatchCalls(snn, "predict", 7, 5, x, batches=1)
    >>> calls.run(7, lambda model, start, stop: (start, stop))
    [(0, 3), (3, 5), (5, 7)]
    """

    def __init__(self, model, kind, batch_rows, steps, inputs, batches):
        self._limit = rows_per_call(model)
        self._unit_rows = call_rows(batch_rows, self._limit)
        signature = autotune.signature(kind, self._unit_rows, steps, inputs)
        units = None if batches is None else batches * call_count(batch_rows, self._limit)
        self._runner = autotune.tuner_for(model, signature, units)

    def run(self, rows, call):
        """`call(variant_model, start, stop)` for each loop call of a batch of `rows`.

        `call` must return only once its work is done (it is timed). Returns
        the calls' results, in order.
        """
        return [
            self._runner.run(
                lambda variant, start=start, stop=stop: call(variant, start, stop),
                timed=stop - start == self._unit_rows,
            )
            for start, stop in call_slices(rows, self._limit)
        ]
