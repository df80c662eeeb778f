"""SpikingModel: a spiking network as a Keras model, run over timesteps.

The network is an ordinary Keras functional (or Sequential) model built from
keras_snn layers; it describes one timestep. `SpikingModel` is the Keras face
of the simulation: options, input checks, `call`/`run`, training and metrics,
serialization and export. How the network runs is worked out once in a
`keras_snn.plan.Plan`; the steps run in `keras_snn.time_loop.TimeLoop` (one
compiled `tf.while_loop`); operation and MAC accounting is
`keras_snn.costs`.
"""


import keras
import numpy as np
import tensorflow as tf

from keras_snn import autotune
from keras_snn import costs
from keras_snn import objectives
from keras_snn import prediction
from keras_snn.plan import Plan
from keras_snn.time_loop import TimeLoop


@keras.saving.register_keras_serializable(package="keras_snn")
class SpikingModel(keras.Model):
    """A spiking network simulated over timesteps in one compiled graph.

    `snn(x)` runs `timesteps` steps and returns the readout after every step,
    shape `(batch, timesteps, classes)`: `out[:, t-1]` is the mean of the
    readout layer's input over steps 1..t, which converges to the ANN logits
    as t grows. Synaptic operations are counted in the same loop.

    Args:
        network: a built Keras functional or Sequential model of keras_snn
            layers describing one step: an encoder right after the input
            (`AnalogInput`, `SpikingInput`, `PoissonInput`, `EventInput`),
            spiking layers and shape layers, and a `Readout` as the output.
        timesteps: default number of steps (an int >= 1).
        stateful: continue from the last call's state (streaming input) until
            `reset_state()`; needs `batch_size`.
        batch_size: fixed batch size of a stateful model.
        xla: compile the whole time loop with XLA (`jit_compile`): True or
            False fix it; None (default) lets `simulate` and `predict` time
            the loop with and without XLA on their first batches and keep
            the fastest (`keras_snn.autotune`; see `loop_choices`). Untuned
            calls (`snn(x)`, short runs) run without XLA.
        synapse_dtype: None (default: the products run in the model's dtype),
            "bfloat16" or "float16": the type of the weight products of
            layers that receive spikes. Binary, multi-bit and negative spikes
            (and event frames of small integer counts) are exact in these
            types; the kernel is rounded (8 significant bits in bfloat16) and
            so is each product sum, which oneDNN and cuDNN accumulate in
            float32. Membranes, thresholds, the first layer's analog current
            and the operation counts stay in full precision. Also rounded:
            event frames that are not small integers, and in training with
            `dropout` the spikes scaled by 1/(1 - dropout). Faster where the
            hardware has bfloat16 units (recent x86 CPUs with AVX512-BF16 or
            AMX, TPUs, GPUs from Ampere on); measure the accuracy at your T
            (see benchmarks/RESULTS.md).
        head: optional Keras model applied to the readout after every step
            (hybrid inference, section C of "A High Performance and Low
            Latency Deep Spiking Neural Networks Conversion Framework": the
            part of a network without a spiking form runs as an ANN on the
            spiking part's estimate).
        dropout: in training only, drop this fraction of every spiking
            layer's neurons, with one mask per sample held fixed over all
            timesteps (DIET-SNN; it uses a smaller rate than the ANN did).
        readout_every: keep the readout of every k-th step only (an int
            dividing the steps), or "final" for the last step: the output is
            `(batch, T / k, classes)`. The default 1 keeps every step. For
            long runs (thousands of steps) the kept readout is the only
            memory that grows with T; `predict` uses this option too.
        parallel_steps: how many steps the compiled loop may run at once
            (`tf.while_loop`'s `parallel_iterations`), or None ("auto", the
            default): 10, except in `predict` on arrays, which runs one step
            at a time. 10 lets the operation counting of one step overlap the
            next steps' work (`simulate` on Conv MNIST took 29% longer with 1
            on a 2-core CPU) and keeps up to that many steps' intermediate
            tensors alive; 1 keeps one step's, the least memory (a Conv MNIST
            batch of 1000 at T=500 peaked at 1.8 GiB with 1 against 2.7-3.0
            GiB with 10). `predict` counts no operations: there the two
            settings measured within 12% of each other in speed, either way,
            and alike in memory (its long-run growth is set by the batch
            size); see benchmarks/RESULTS.md.
        fused_neurons: True runs each layer's neuron update (integrate,
            fire, reset; buffered neurons' negative spikes) as one
            XLA-compiled kernel inside the loop while convolutions and
            matrix products keep TensorFlow's (oneDNN's) kernels; False runs
            every elementwise operation as a separate pass over the layer's
            neurons. Which is faster depends on the network (fused: Conv
            CIFAR 7% faster; unfused: a MobileNetV2 12% faster, and half the
            compile time; benchmarks/RESULTS.md, "Loop variants"). The maths
            is the same; XLA may round a fused multiply-add differently in
            the last bit. Ignored with `xla=True`, which compiles the whole
            loop. None (default) is tuned like `xla`, and fused when
            untuned.
        sub_batch_size: the most samples one call of the loop runs in
            `predict` on arrays and in `simulate`; a larger batch runs as
            several calls on consecutive slices of it, with the same numbers
            (samples are independent; random encoders draw per call). None
            (auto, the default): as many samples as keep one tensor of every
            spiking layer's neurons within 96 MiB
            (`keras_snn.sub_batching`): 296 for a Conv MNIST net, so a batch
            of 1000 runs as four calls of 250, and a small dense network is
            never split. TensorFlow's allocator pool follows the size of one
            call and a long run touches more of it: `predict` on Conv MNIST
            at batch 1000 and T=5000 peaked about 1.5 GiB higher as one call
            than as four. One large call was 5% faster in `predict` and 2%
            slower in `simulate` on a 2-core CPU (benchmarks/RESULTS.md,
            "Memory"). `snn(x)`, `fit` and `evaluate` run a batch as given.
        **kwargs: `keras.Model` arguments such as `name`.

    Call arguments:
        inputs: `(batch, *input_shape)` for static input, repeated every step,
            or `(batch, T, *frame_shape)` for an `EventInput` network. Any
            numeric or boolean dtype (cast to the model's dtype, as Keras
            does); a wrong shape raises a ValueError naming both shapes. A
            sample holding NaN or an infinity reads out NaN at every step
            (event input: from that frame on), as the ANN's logits would be
            NaN: the spiking network would otherwise return a finite, wrong
            answer (a NaN membrane never fires).
        timesteps: overrides the default for this call (for event input:
            at most the number of frames; default all frames).
        return_ops: also return the synaptic operations per sample per step,
            `(batch, timesteps)` (summed over layers; see `run` for details).
        readout_every: overrides the model's `readout_every` for this call.

    Memory: an inference call keeps the layers' states and the readout it
    returns, nothing else per step (`simulate` keeps sums over the batch), so
    it does not grow with T beyond the returned readout.

    Example:

    >>> import keras, numpy as np
    >>> from keras_snn import layers
    >>> inputs = keras.Input((4,))
    >>> x = layers.AnalogInput()(inputs)
    >>> x = layers.SpikingDense(8)(x)
    >>> x = layers.SpikingDense(3, neuron=None)(x)
    >>> network = keras.Model(inputs, layers.Readout()(x))
    >>> snn = SpikingModel(network, timesteps=10)
    >>> tuple(snn(np.ones((2, 4), "float32")).shape)
    (2, 10, 3)
    """

    def __init__(
        self,
        network,
        timesteps=32,
        stateful=False,
        batch_size=None,
        xla=None,
        head=None,
        dropout=0.0,
        synapse_dtype=None,
        readout_every=1,
        parallel_steps=None,
        fused_neurons=None,
        sub_batch_size=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(network, keras.Model):
            raise TypeError(
                "SpikingModel expects `network`, a keras.Model of keras_snn layers "
                f"describing one step; received {type(network).__name__}."
            )
        self.network = network
        self.timesteps = _check_timesteps(timesteps, "timesteps")
        self.stateful = bool(stateful)
        self.batch_size = batch_size
        self.xla = None if xla is None else bool(xla)
        if head is not None and not isinstance(head, keras.Model):
            raise TypeError(f"`head` must be a keras.Model or None; received {type(head).__name__}.")
        self.head = head
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1); received {dropout!r}.")
        self.dropout = float(dropout)
        self.synapse_dtype = _check_synapse_dtype(synapse_dtype)
        self.readout_every = _check_readout_every(readout_every)
        self.parallel_steps = _check_count_or_auto(parallel_steps, "parallel_steps")
        self.fused_neurons = None if fused_neurons is None else bool(fused_neurons)
        self.sub_batch_size = _check_count_or_auto(sub_batch_size, "sub_batch_size")
        self._plan = Plan(network)
        self._time_loop = TimeLoop(
            self._plan, self.compute_dtype, self.synapse_dtype, parallel_steps, head,
            fused_neurons=self.loop_variant == "fused",
        )
        self._loop = tf.function(self._time_loop.run, jit_compile=self.loop_variant == "xla")
        self._run_compiled = tf.function(self._run, autograph=False)
        names = autotune.candidates(self.xla, self.fused_neurons)
        self._tuner = autotune.LoopTuner(self, names) if len(names) > 1 else None
        self._state = None
        if self.stateful:
            if not (isinstance(batch_size, int) and batch_size > 0):
                raise ValueError(
                    "A stateful SpikingModel needs a fixed `batch_size` (a positive "
                    f"int); received batch_size={batch_size!r}."
                )
            self._state = _StreamState(self._initial_states(batch_size))
        self.built = True

    @property
    def loop_variant(self):
        """How this model's own loop runs: "xla", "fused" or "unfused" (see `keras_snn.autotune`).

        With `xla` or `fused_neurons` left at None this is the untuned
        variant; `simulate` and `predict` may run a faster one (`loop_choices`).

        Example:

        >>> import keras
        >>> from keras_snn import layers
        >>> inputs = keras.Input((4,))
        >>> x = layers.SpikingDense(3, neuron=None)(layers.AnalogInput()(inputs))
        >>> snn = SpikingModel(keras.Model(inputs, layers.Readout()(x)), timesteps=10)
        >>> snn.loop_variant, snn.with_options(xla=True).loop_variant, snn.loop_choices
        ('fused', 'xla', {})
        """
        if self.xla:
            return "xla"
        return "unfused" if self.fused_neurons is False else "fused"

    @property
    def loop_choices(self):
        """What autotuning chose, per input signature that `simulate` or `predict` ran.

        A dict from a signature's text ("simulate: batch 100, 50 steps, input
        (28, 28, 1) float32") to `{"chosen": variant, or None while tuning or
        when tuning has not paid yet, "seconds": best timed seconds per
        variant, "units": batches run on each}`; empty when the
        options fix the variant. See `keras_snn.autotune`.
        """
        return {} if self._tuner is None else self._tuner.choices()

    # ----------------------------------------------------------------- graph
    def build(self, input_shape=None):
        # The network is built already; nothing depends on the call's shape.
        self.built = True

    @property
    def plan(self):
        """The network read once (`keras_snn.plan.Plan`): node order, what each
        connection carries, per-step shapes and the recorded layers."""
        return self._plan

    def _initial_states(self, batch_size):
        return self._time_loop.initial_states(batch_size)

    # ------------------------------------------------------------------ call
    def timesteps_for(self, input_shape, timesteps=None):
        """Steps a call with inputs of `input_shape` runs for, given `timesteps`.

        Static input: `timesteps`, else the model's default. Event input: the
        number of frames, or `timesteps` if given (at most the frames).
        """
        if timesteps is not None:
            timesteps = _check_timesteps(timesteps, "timesteps")
        if not self._plan.sequence_input:
            return self.timesteps if timesteps is None else timesteps
        frames = tf.TensorShape(input_shape)[1]
        if frames is None:
            if timesteps is None:
                raise ValueError(
                    "The number of event frames is unknown here; pass `timesteps`."
                )
            return timesteps
        if timesteps is not None and timesteps > frames:
            raise ValueError(
                f"timesteps={timesteps} exceeds the {frames} event frames in the input."
            )
        return frames if timesteps is None else timesteps

    def _execute(self, inputs, timesteps, record, training=False, labels=None,
                 readout_every=None, readout_into=None):
        """Run the loop on checked inputs; `record` and `readout_into` as for `TimeLoop.run`.

        The run starts at rest, or from the stored state of a stateful model.
        """
        inputs = self._standardize_inputs(inputs)
        if self._plan.sequence_input and inputs.shape[1] is None and timesteps is None:
            timesteps = tf.shape(inputs)[1]  # unknown frame count: all frames
        else:
            timesteps = self.timesteps_for(inputs.shape, timesteps)
        if readout_every is None:
            readout_every = self.readout_every
        readout_every = _check_readout_every(readout_every, timesteps)
        if self.stateful and inputs.shape[0] is not None and inputs.shape[0] != self.batch_size:
            raise ValueError(
                f"Stateful SpikingModel '{self.name}' was made for batch_size="
                f"{self.batch_size}; received a batch of {inputs.shape[0]}."
            )
        # Called eagerly (`snn(x)`, `snn.run(x)`), the small ops around the
        # loop (initial states, the non-finite check) would each be
        # dispatched on their own: 5 ms a call on Dense MNIST, more than its
        # whole run at T=10, and 40 ms on a MobileNetV2 (benchmarks/RESULTS.md).
        # Under `simulate`, `predict` or `fit` this is already in their graph.
        run = self._run_compiled if tf.executing_eagerly() else self._run
        return run(inputs, timesteps, record, bool(training), labels, readout_every, readout_into)

    def _run(self, inputs, timesteps, record, training, labels, readout_every, readout_into):
        """`_execute` past its checks: the loop and what goes around it, as graph ops."""
        if self.stateful:
            states, first_step = self._state.read()
        else:
            states = self._initial_states(tf.shape(inputs)[0])
            first_step = tf.constant(0)
        masks = {}
        if training and self.dropout:
            masks = self._time_loop.dropout_masks(tf.shape(inputs)[0], self.dropout)
        result = self._loop(
            inputs, timesteps, record, states, first_step, masks, labels, readout_every,
            readout_into,
        )
        if self.stateful:
            self._state.write(result["states"], first_step + timesteps)
        if readout_into is not None:
            self._propagate_nonfinite_into(inputs, *readout_into)
        if "readout" in result:
            if self.head is not None:
                result["readout"] = self._apply_head(result["readout"])
            result["readout"] = self._propagate_nonfinite(
                inputs, result["readout"], readout_every
            )
        return result

    def _standardize_inputs(self, inputs):
        """The input as a `compute_dtype` tensor, its shape checked against the network's.

        Integer, boolean and other float inputs are cast, as Keras models cast
        them; the shape is checked here, before the loop is traced, so a wrong
        frame shape is one line instead of an error deep inside the loop.
        """
        if not tf.is_tensor(inputs):
            try:
                inputs = tf.convert_to_tensor(inputs)
            except (TypeError, ValueError) as error:
                raise TypeError(
                    f"SpikingModel '{self.name}' expects a numeric array or tensor; received "
                    f"{type(inputs).__name__} that does not convert to one ({_first_line(error)})."
                ) from None
        dtype = self._check_input_dtype(inputs.dtype)
        if dtype != self.compute_dtype:
            inputs = tf.cast(inputs, self.compute_dtype)
        self._check_input_shape(inputs.shape)
        return inputs

    def _check_input_shape(self, shape):
        """ValueError unless `shape` fits the network's input (unknown dims fit)."""
        sequence = self._plan.sequence_input
        expected = (None,) * (1 + int(sequence)) + self._plan.frame_shape
        received = tuple(shape)
        if len(received) != len(expected) or any(
            want is not None and got is not None and want != got
            for want, got in zip(expected, received)
        ):
            kind = "event frames " if sequence else ""
            raise ValueError(
                f"SpikingModel '{self.name}' expects {kind}inputs of rank {len(expected)}, shape "
                f"{_shape_text(expected, sequence)}; received shape {received}."
            )

    def _check_input_dtype(self, dtype):
        """The tf.DType of the input; TypeError unless numeric or boolean."""
        try:
            dtype = tf.as_dtype(dtype)
            numeric = dtype.is_floating or dtype.is_integer or dtype.is_bool
        except TypeError:  # e.g. numpy strings or objects
            numeric = False
        if not numeric:
            raise TypeError(
                f"SpikingModel '{self.name}' expects numeric inputs; received dtype "
                f"{getattr(dtype, 'name', dtype)}."
            )
        return dtype

    def __call__(self, inputs, *args, **kwargs):
        # Checked before Keras's call wrapper, which would pad a one-line
        # error with the call's arguments.
        if getattr(inputs, "dtype", None) is not None and not isinstance(inputs, (dict, list)):
            self._check_input_dtype(inputs.dtype)
        shape = getattr(inputs, "shape", None)
        if shape is not None and not isinstance(inputs, (dict, list, tuple)):
            try:
                shape = tuple(shape)
            except ValueError:  # unknown rank: checked again once known
                shape = None
            if shape is not None:
                self._check_input_shape(shape)
                timesteps = kwargs.get("timesteps", args[0] if args else None)
                if timesteps is not None:
                    self.timesteps_for(shape, timesteps)  # checks it (and the frames)
        return super().__call__(inputs, *args, **kwargs)

    def _propagate_nonfinite(self, inputs, readout, readout_every=1):
        """NaN readout wherever the input so far held a NaN or an infinity.

        The ANN answers NaN to such an input; without this the spiking
        network would answer a finite, different prediction (a NaN membrane
        never reaches the threshold, so the bad values silently vanish).
        Static input: every step of that sample. Event input: every step from
        the first frame holding a non-finite value on.
        """
        if self._plan.sequence_input:
            frames = tf.reshape(inputs, tf.concat([tf.shape(inputs)[:2], [-1]], 0))
            bad_frame = tf.logical_not(tf.reduce_all(tf.math.is_finite(frames), axis=-1))
            bad = tf.cumsum(tf.cast(bad_frame, tf.int32), axis=1) > 0
            # Readout j holds step (j + 1) * readout_every, i.e. frame index
            # (j + 1) * readout_every - 1.
            bad = bad[:, readout_every - 1::readout_every][:, : tf.shape(readout)[1]]
        else:
            bad = _nonfinite_samples(inputs)
            bad = tf.broadcast_to(bad[:, None], tf.shape(readout)[:2])
        # (batch, T) -> (batch, T, 1, ...) to broadcast over the readout's shape.
        trailing = tf.ones([tf.rank(readout) - 2], tf.int32)
        bad = tf.reshape(bad, tf.concat([tf.shape(bad), trailing], 0))
        # Only when some input is non-finite: tf.where would copy the whole
        # (batch, T, classes) readout even when nothing changes.
        return tf.cond(
            tf.reduce_any(bad),
            lambda: tf.where(bad, tf.constant(float("nan"), readout.dtype), readout),
            lambda: readout,
        )

    def _propagate_nonfinite_into(self, inputs, buffer, first_row):
        """`_propagate_nonfinite` for a readout written in place (static input only).

        NaN over the whole row of every sample whose input holds a NaN or an
        infinity; nothing is written when none does.
        """
        rows = tf.cast(tf.where(_nonfinite_samples(inputs)), tf.int32) + first_row

        def fill():
            nan = tf.fill(tf.concat([tf.shape(rows)[:1], tf.shape(buffer)[1:]], 0),
                          tf.constant(float("nan"), buffer.dtype))
            buffer.scatter_nd_update(rows, nan)
            return tf.constant(True)

        return tf.cond(tf.size(rows) > 0, fill, lambda: tf.constant(False))

    def _apply_head(self, readout):
        """The ANN head on every step's readout: (batch, T, ...) -> (batch, T, ...)."""
        shape = tf.shape(readout)
        flat = tf.reshape(readout, tf.concat([[-1], shape[2:]], axis=0))
        out = self.head(flat)
        return tf.reshape(out, tf.concat([shape[:2], tf.shape(out)[1:]], axis=0))

    def compile(self, optimizer="rmsprop", loss=None, metrics=None, weighted_metrics=None,
                **kwargs):
        """`keras.Model.compile`, for losses and metrics on the per-step readout.

        The model's output is the readout after every step, `(batch, T,
        classes)`, which Keras's own losses and metrics (e.g.
        `SparseCategoricalCrossentropy`, `"accuracy"`) do not understand: they
        are refused with a ValueError. Use `keras_snn.losses.ReadoutCrossentropy`
        (final step, a chosen step, or all steps), `keras_snn.metrics.StepAccuracy`
        and `keras_snn.metrics.SynapticOps`, or your own loss or metric that
        takes `y_pred` of shape `(batch, T, classes)`.

        `SynapticOps` metrics (in a list or a dict, in `metrics` or
        `weighted_metrics`) take operation counts, not the readout: while any
        is compiled, every forward pass (training included) counts operations
        and `compute_metrics` hands each batch's counts to them (with the
        sample weights, for `weighted_metrics`), so `fit`/`evaluate` log the
        real counts of the batches they ran. They are reported after the
        other compiled metrics. Compiling again without them stops the
        counting. The compile state round-trips through `get_compile_config` /
        `compile_from_config`, so a saved model loads compiled.

        Example:

        >>> import keras, numpy as np, keras_snn
        >>> from keras_snn import layers
        >>> inputs = keras.Input((4,))
        >>> x = layers.SpikingDense(3, neuron=None)(layers.AnalogInput()(inputs))
        >>> snn = SpikingModel(keras.Model(inputs, layers.Readout()(x)), timesteps=4)
        >>> snn.compile("adam", keras_snn.losses.ReadoutCrossentropy(),
        ...             metrics=[keras_snn.metrics.SynapticOps()])
        >>> sorted(snn.evaluate(np.ones((2, 4)), np.zeros(2), verbose=0, return_dict=True))
        ['loss', 'synaptic_ops']
        >>> snn.compile("adam", "sparse_categorical_crossentropy")
        Traceback (most recent call last):
        ...
        ValueError: `loss`: Keras's loss 'sparse_categorical_crossentropy' expects ...
        """
        objectives.refuse_keras_objectives(loss, "loss", keras.losses)
        objectives.refuse_keras_objectives(metrics, "metrics", keras.metrics)
        objectives.refuse_keras_objectives(weighted_metrics, "weighted_metrics", keras.metrics)
        if metrics is None and weighted_metrics is None:
            # keras.Model.compile keeps the previous compile's metrics when
            # given none; an empty list replaces them.
            metrics = []
        # Keras's compiled metrics get the readout; SynapticOps get the
        # counts, in compute_metrics.
        super().compile(
            optimizer=optimizer, loss=loss, metrics=objectives.without_ops_metrics(metrics),
            weighted_metrics=objectives.without_ops_metrics(weighted_metrics), **kwargs,
        )
        self._ops_metrics = objectives.OpsMetrics(metrics, weighted_metrics)

    @property
    def metrics(self):
        holder = getattr(self, "_ops_metrics", None)
        extra = list(holder.all) if holder is not None and self.compiled else []
        return super().metrics + extra

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        """Keras's compiled metrics on the readout; `SynapticOps` on this pass's counts."""
        holder = getattr(self, "_ops_metrics", None)
        ops = holder.take_ops() if holder is not None else None
        if ops is not None:
            for metric in holder.plain:
                metric.update_state(y, ops)
            for metric in holder.weighted:
                metric.update_state(y, ops, sample_weight)
        return super().compute_metrics(x, y, y_pred, sample_weight)

    def get_compile_config(self):
        config = super().get_compile_config()
        holder = getattr(self, "_ops_metrics", None)
        if config is not None and holder is not None:
            # The metrics as the user passed them, SynapticOps included.
            config["metrics"] = keras.saving.serialize_keras_object(holder.metrics_argument)
            config["weighted_metrics"] = keras.saving.serialize_keras_object(
                holder.weighted_argument
            )
        return config

    def compile_from_config(self, config):
        """Compile from `get_compile_config()` (used by `keras.saving.load_model`)."""
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if getattr(self, "optimizer", None) is not None and self.built:
            self.optimizer.build(self.trainable_variables)  # so saved slots can load

    def fit(self, *args, **kwargs):
        """`keras.Model.fit`, which also works under MultiWorkerMirroredStrategy.

        Keras's own fit fails there (keras-team/keras#20585), so a model
        created in a `tf.distribute.MultiWorkerMirroredStrategy` scope trains
        with `keras_snn.distributed_training.fit_multi_worker`: the same
        arguments (`batch_size` is the global batch; no `class_weight`) and
        the same History. Every other case is Keras's fit.
        """
        from keras_snn import distributed_training

        if distributed_training.is_multi_worker(self.distribute_strategy):
            return distributed_training.fit_multi_worker(self, *args, **kwargs)
        return super().fit(*args, **kwargs)

    def predict(self, x, batch_size=None, verbose="auto", steps=None, callbacks=None):
        """`keras.Model.predict`: the `(N, T / readout_every, classes)` readout.

        For an array or tensor `x` (a non-stateful model with static input,
        outside a `tf.distribute` scope) the loop writes every batch's readout
        in place into the returned array (`keras_snn.prediction`), instead
        of Keras's loop, which holds the readout three to four times. The
        numbers are the same. Other inputs (datasets, generators, `steps`)
        use Keras's predict.
        """
        if prediction.runs_in_place(self, x, steps):
            return prediction.predict_in_place(self, x, batch_size, verbose, callbacks)
        return super().predict(
            x, batch_size=batch_size, verbose=verbose, steps=steps, callbacks=callbacks
        )

    def evaluate(self, *args, **kwargs):
        """`keras.Model.evaluate`, which also works under MultiWorkerMirroredStrategy.

        As `fit`: under that strategy it runs
        `keras_snn.distributed_training.evaluate_multi_worker`.
        """
        from keras_snn import distributed_training

        if distributed_training.is_multi_worker(self.distribute_strategy):
            return distributed_training.evaluate_multi_worker(self, *args, **kwargs)
        return super().evaluate(*args, **kwargs)

    def call(self, inputs, timesteps=None, return_ops=False, training=None, readout_every=None):
        holder = getattr(self, "_ops_metrics", None)
        counting = holder is not None and bool(holder.all)
        record = "samples" if return_ops or counting else None
        result = self._execute(
            inputs, timesteps, record=record, training=bool(training), readout_every=readout_every
        )
        if record:
            ops = tf.reduce_sum(result["layer_ops"], axis=-1)
            if counting:
                holder.put_ops(ops)  # for compute_metrics, in the same step
        if return_ops:
            return result["readout"], ops
        return result["readout"]

    def run(self, inputs, timesteps=None):
        """Simulate and return every per-step record.

        Returns:
            A dict of tensors:
            - "readout": `(batch, T, classes)`, as `snn(x)`;
            - "synaptic_ops": `(batch, T)`, synaptic operations per step;
            - "layer_ops": dict layer name -> `(batch, T)` operations caused
              by the spikes arriving at that layer;
            - "spike_events": dict layer name -> `(batch, T)` number of
              neurons that spiked (a multi-bit or negative spike is one event);
            - "spike_counts": dict layer name -> `(batch, T)` total spike
              magnitude `sum |s|`;
            - "neurons": dict layer name -> neurons in that layer;
            - "input_macs": MACs per sample and step of layers fed by analog
              input (see `input_macs()`).

        Memory: these records hold three numbers per sample, step and layer
        besides the `(batch, T, classes)` readout, e.g. about 1.2 MB per step
        for a batch of 1000 through 100 layers. `simulate` reports the same
        sums over a dataset in O(T x layers) memory; use it unless you need
        every sample.
        """
        result = self._execute(inputs, timesteps, record="samples", readout_every=1)
        plan = self._plan

        def per_layer(name, nodes):
            return {node.key: result[name][:, :, i] for i, node in enumerate(nodes)}

        return {
            "readout": result["readout"],
            "synaptic_ops": tf.reduce_sum(result["layer_ops"], axis=-1),
            "layer_ops": per_layer("layer_ops", plan.op_nodes),
            "spike_events": per_layer("spike_events", plan.spiking_nodes),
            "spike_counts": per_layer("spike_counts", plan.spiking_nodes),
            "neurons": self.neuron_counts(),
            "input_macs": result["input_macs"],
        }

    # -------------------------------------------------------------- costs
    def input_macs(self):
        """MACs per sample and step of synaptic layers fed by analog input.

        Direct (analog) input is multiplied, not accumulated as events: each
        input value meets every nonzero outgoing weight once per step.
        """
        return float(costs.input_macs(self._plan, costs.fanout_maps(self._plan)))

    def ann_macs(self):
        """Dict layer name -> MACs of one ANN forward pass (nonzero weights only)."""
        return costs.ann_macs(self._plan)

    def neuron_counts(self):
        """Dict layer name -> number of spiking neurons, for the recorded layers."""
        return costs.neuron_counts(self._plan)

    @property
    def expects_sequence(self):
        """True when inputs are `(batch, T, *frame)` event streams (EventInput)."""
        return self._plan.sequence_input

    def export(self, filepath, timesteps=None, verbose=False, **kwargs):
        """Write a TF SavedModel serving readout and ops (see `keras_snn.export`).

        Unlike `keras.Model.export`, the `serving_default` signature returns a
        dict with `readout` `(batch, T, classes)` and `synaptic_ops` `(batch, T)`.
        """
        if kwargs.get("format", "tf_saved_model") != "tf_saved_model":
            raise ValueError("SpikingModel.export writes TF SavedModels only (format='tf_saved_model').")
        from keras_snn.export import export_saved_model

        return export_saved_model(self, filepath, timesteps=timesteps, verbose=verbose)

    def with_options(self, **options):
        """A SpikingModel on the same network with some simulation options changed.

        The network (layers and weights) and the head are shared, not copied:
        training one trains the other. Options are the constructor's:
        `timesteps`, `stateful`, `batch_size`, `xla`, `head`, `dropout`,
        `synapse_dtype`, `readout_every`, `parallel_steps`, `fused_neurons`,
        `sub_batch_size`.
        Not carried over: a stateful model's stream state,
        the model's `name` and its `compile()` state (compile the new model
        to train or evaluate it).

        Example:

        >>> import keras, numpy as np
        >>> from keras_snn import layers
        >>> inputs = keras.Input((4,))
        >>> x = layers.SpikingDense(3, neuron=None)(layers.AnalogInput()(inputs))
        >>> snn = SpikingModel(keras.Model(inputs, layers.Readout()(x)), timesteps=10)
        >>> fast = snn.with_options(synapse_dtype="bfloat16", timesteps=5)
        >>> fast.network is snn.network, fast.timesteps, fast.synapse_dtype
        (True, 5, 'bfloat16')
        """
        current = self._options()
        unknown = sorted(set(options) - set(current))
        if unknown:
            raise TypeError(
                f"with_options() got unknown option(s) {unknown}; options are {sorted(current)}."
            )
        return type(self)(self.network, **{**current, **options})

    def reset_state(self):
        """Return a stateful model to rest (membranes at their initial value)."""
        if self._state is not None:
            self._state.write(self._initial_states(self.batch_size), 0)

    def compute_output_shape(self, input_shape, timesteps=None, return_ops=False,
                             readout_every=None):
        classes = self._plan.output_shapes[self._plan.output_key][1:]
        if self.head is not None:
            classes = self.head.compute_output_shape((None,) + tuple(classes))[1:]
        steps = timesteps or (input_shape[1] if self._plan.sequence_input else self.timesteps)
        every = _check_readout_every(
            self.readout_every if readout_every is None else readout_every, steps
        )
        kept = None if steps is None or every == "final" else steps // every
        shape = (input_shape[0], kept) + tuple(classes)
        return (shape, (input_shape[0], steps)) if return_ops else shape

    def get_config(self):
        return {
            "name": self.name,
            "network": keras.saving.serialize_keras_object(self.network),
            **self._options(),
            "head": None if self.head is None else keras.saving.serialize_keras_object(self.head),
        }

    def _options(self):
        """The constructor's simulation options, as set."""
        return {
            "timesteps": self.timesteps,
            "stateful": self.stateful,
            "batch_size": self.batch_size,
            "xla": self.xla,
            "head": self.head,
            "dropout": self.dropout,
            "synapse_dtype": self.synapse_dtype,
            "readout_every": self.readout_every,
            "parallel_steps": self.parallel_steps,
            "fused_neurons": self.fused_neurons,
            "sub_batch_size": self.sub_batch_size,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        network = keras.saving.deserialize_keras_object(
            config.pop("network"), custom_objects=custom_objects
        )
        if config.get("head") is not None:
            config["head"] = keras.saving.deserialize_keras_object(
                config["head"], custom_objects=custom_objects
            )
        return cls(network, **config)


class _StreamState:
    """Variables holding a stateful model's state between calls.

    Plain tf.Variables in a plain object: Keras neither tracks nor saves them
    (they depend on the batch size and are not weights).
    """

    def __init__(self, states):
        self.variables = tf.nest.map_structure(
            lambda t: tf.Variable(t, trainable=False), states
        )
        self.step = tf.Variable(0, trainable=False, dtype=tf.int32)

    def read(self):
        states = tf.nest.map_structure(tf.convert_to_tensor, self.variables)
        return states, tf.convert_to_tensor(self.step)

    def write(self, states, step):
        tf.nest.map_structure(lambda v, t: v.assign(t), self.variables, tuple(states))
        self.step.assign(step)


def _first_line(error):
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


def _shape_text(shape, sequence=False):
    """(batch, T, 28, 28, 1)-style text of an expected shape."""
    names = ["batch", "T"] if sequence else ["batch"]
    return "(" + ", ".join(names + [str(d) for d in shape[len(names):]]) + ")"


_SYNAPSE_DTYPES = ("bfloat16", "float16")


def _check_synapse_dtype(value):
    """None, or the name of a narrow float type the products may run in."""
    if value is None or value == "float32":  # float32 is the default itself
        return None
    name = getattr(value, "name", value)
    if name not in _SYNAPSE_DTYPES:
        raise ValueError(
            f"`synapse_dtype` must be None, {' or '.join(repr(d) for d in _SYNAPSE_DTYPES)}; "
            f"received {value!r}."
        )
    return name


def _nonfinite_samples(inputs):
    """(batch,) bool: the samples whose static input holds a NaN or an infinity."""
    flat = tf.reshape(inputs, [tf.shape(inputs)[0], -1])
    return tf.logical_not(tf.reduce_all(tf.math.is_finite(flat), axis=-1))


def _check_count_or_auto(value, name):
    """`value` if it is None ("auto") or an int >= 1; otherwise a ValueError naming `name`."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"`{name}` must be an int >= 1 or None (auto); received {value!r}.")
    return value


def _check_readout_every(value, timesteps=None):
    """`readout_every` for a run of `timesteps` steps: an int >= 1 dividing them.

    "final" stands for `timesteps` (kept as "final" while they are unknown).
    """
    if isinstance(value, str) and value == "final":
        return "final" if timesteps is None else timesteps
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(
            f"`readout_every` must be an int >= 1 or 'final'; received {value!r}."
        )
    value = int(value)
    if value > 1 and isinstance(timesteps, int) and timesteps % value:
        raise ValueError(
            f"`readout_every`={value} must divide the number of steps ({timesteps}): "
            f"the readout keeps steps {value}, {2 * value}, ... up to the last one. Pass "
            f"readout_every={timesteps} for the final step only."
        )
    return value


def _check_timesteps(value, name):
    """An int >= 1 (NumPy integers too, as from `np.arange` or array shapes)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be an int >= 1; received {value!r}.")
    return int(value)
