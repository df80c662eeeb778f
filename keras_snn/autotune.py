"""The fastest way to run a model's time loop, chosen by timing it (like cuDNN's autotune).

The loop can run three ways that compute the same maths (to float rounding,
as XLA may fuse a multiply-add): each layer's neuron update compiled into one
XLA kernel inside a TensorFlow loop ("fused"), every elementwise operation a
separate TensorFlow kernel ("unfused"), or the whole loop compiled with XLA
("xla"). Which is fastest depends on the CPU (oneDNN's convolutions against
XLA's differ between AVX-512 and AVX2 machines), the network, the batch
size and what else the machine is running (benchmarks/RESULTS.md, "Simulator
speed"), so no fixed default is best everywhere.

A `SpikingModel` whose `xla` or `fused_neurons` is left at None ("auto")
gets a `LoopTuner`. The drivers that run many units (`simulate` and
`predict` on arrays, whose units are batches) run them through `tuner_for`.
Tuning costs the compilation of every other candidate, seconds to tens of
seconds for a large network, which a short run never earns back (MobileNetV2
for 25 batches: 71 s tuned against 25 s untuned, benchmarks/RESULTS.md). So
a run starts on the model's own loop ("fused" by default), timing its units:
the first unit of a signature holds the loop's compilation, the later ones
its steady cost. Tuning starts once
compiling the other candidates (each estimated at the own loop's compilation)
would cost at most `TUNING_BUDGET` of the work still expected (this run's
remaining units, or as many again as the signature has run, whichever is
more, at the steady cost) and the signature has run or will run at least
`MIN_UNITS_PER_CANDIDATE` units per candidate. Then the next units go round
the candidates once to compile them (not timed), then `TIMED_ROUNDS` more
times, timed and interleaved so that a change in the machine's load hits
every candidate alike; every later unit runs on the candidate with the
smallest time. The choice is kept per input signature (batch size, steps,
input shape and dtype) with the model, so later calls start with it;
`SpikingModel.loop_choices` shows it with its timings. `snn(x)` and Keras's
`fit`/`evaluate`/`predict` loops always run the model's own loop. Under a
`tf.distribute` strategy nothing is tuned (the replicas would time each
other's work).

Variants are `SpikingModel.with_options` copies sharing the network, so
weights stay shared; `synapse_dtype` is never tuned, because bfloat16 changes
the numbers.
"""

import time

VARIANTS = {
    "fused": {"xla": False, "fused_neurons": True},
    "unfused": {"xla": False, "fused_neurons": False},
    "xla": {"xla": True, "fused_neurons": True},
}
TIMED_ROUNDS = 2
MIN_UNITS_PER_CANDIDATE = 8
# Compiling the other candidates may cost at most this share of the expected
# remaining work: the speed-ups measured between variants are 5-30%, so a
# larger share would rarely be repaid.
TUNING_BUDGET = 0.1

_clock = time.perf_counter  # tests replace it with a fake clock


def candidates(xla, fused_neurons):
    """The variant names compatible with the options the user fixed (None: free).

    >>> candidates(None, None)
    ['fused', 'unfused', 'xla']
    >>> candidates(False, None)
    ['fused', 'unfused']
    >>> candidates(None, False)  # XLA compiles the whole loop, fused or not
    ['unfused', 'xla']
    >>> candidates(True, None)
    ['xla']
    """
    names = []
    for name, options in VARIANTS.items():
        if xla is not None and options["xla"] != bool(xla):
            continue
        if fused_neurons is not None and not options["xla"] and (
            options["fused_neurons"] != bool(fused_neurons)
        ):
            continue
        names.append(name)
    return names


class _Signature:
    """Tuning state of one input signature: the schedule, the times, the choice."""

    def __init__(self, names):
        self.names = list(names)
        # One untimed round (compilation), then TIMED_ROUNDS timed ones.
        self.schedule = self.names * (1 + TIMED_ROUNDS)
        self.position = 0
        self.seconds = {name: [] for name in self.names}
        self.units = {name: 0 for name in self.names}
        self.chosen = None

    def next_name(self):
        if self.chosen is not None:
            return self.chosen
        return self.schedule[self.position]

    def record(self, name, seconds):
        self.units[name] += 1
        if self.chosen is not None:
            return
        if self.position >= len(self.names):  # past the compiling round
            self.seconds[name].append(seconds)
        self.position += 1
        if self.position == len(self.schedule):
            self.chosen = min(self.names, key=lambda n: min(self.seconds[n]))


class _Observed:
    """The untuned units one signature ran on the model's own loop, and their times."""

    def __init__(self):
        self.units = 0
        self.first = None  # the first unit: tracing and compiling included
        self.steady = None  # the fastest later unit

    def record(self, seconds):
        if self.first is None:
            self.first = seconds
        else:
            self.steady = seconds if self.steady is None else min(self.steady, seconds)
        self.units += 1

    @property
    def compiling(self):
        """The first unit's time beyond the steady one (0 until a second unit ran)."""
        return 0.0 if self.steady is None else max(self.first - self.steady, 0.0)


class LoopTuner:
    """Times a model's loop variants and keeps the fastest per input signature.

    Args:
        model: the `SpikingModel` whose loop is tuned (its own loop is the
            "fused" variant when that is a candidate).
        names: the candidate variant names (see `candidates`).
    """

    def __init__(self, model, names):
        self._model = model
        self._names = list(names)
        self._variants = {}
        self._signatures = {}
        self._observed = {}

    def variant(self, name):
        """The SpikingModel that runs variant `name` (sharing the network)."""
        if name not in self._variants:
            model = self._model
            same = model.loop_variant == name
            self._variants[name] = model if same else model.with_options(**VARIANTS[name])
        return self._variants[name]

    def pays(self, signature, remaining):
        """Whether to tune `signature` now, with `remaining` full units left in this run.

        Yes once the signature is tuned or being tuned. Otherwise it needs a
        steady time of the own loop, and compiling the other candidates must
        cost at most `TUNING_BUDGET` of the expected remaining work: this
        run's `remaining` units, or as many as the signature has run before
        (repeated calls), whichever is more. The signature must also run at
        least `MIN_UNITS_PER_CANDIDATE` units per candidate in all.
        """
        if self.tuning(signature):
            return True
        observed = self._observed.get(signature)
        if len(self._names) < 2 or observed is None or observed.steady is None:
            return False
        if observed.units + remaining < MIN_UNITS_PER_CANDIDATE * len(self._names):
            return False
        tuning = (len(self._names) - 1) * self._compile_seconds()
        return tuning <= TUNING_BUDGET * max(remaining, observed.units) * observed.steady

    def tuning(self, signature):
        """Whether `signature` is tuned or being tuned."""
        return signature in self._signatures

    def observe(self, signature, seconds):
        """Records a timed unit that ran untuned on the model's own loop."""
        self._observed.setdefault(signature, _Observed()).record(seconds)

    def _compile_seconds(self):
        """The longest compilation seen on the model's own loop, for any signature.

        Any: a signature whose loop was traced already shows none.
        """
        return max((o.compiling for o in self._observed.values()), default=0.0)

    def run(self, signature, call, timed=True):
        """`call(variant_model)` on the variant due for this signature; returns its result.

        `call` must return only once the work is done (e.g. after `.numpy()`),
        so that its time is the unit's. `timed=False` (a partial batch) runs
        the current choice without recording a time.
        """
        state = self._signatures.get(signature)
        if state is None:
            state = self._signatures[signature] = _Signature(self._names)
        if not timed:
            return call(self.variant(state.chosen or self._model.loop_variant))
        name = state.next_name()
        start = _clock()
        result = call(self.variant(name))
        state.record(name, _clock() - start)
        return result

    def choices(self):
        """Dict signature text -> {"chosen", "seconds" (best timed), "units" run}.

        Signatures that ran only untuned have "chosen" None and their units
        on the model's own loop.
        """
        report = {}
        for signature in dict.fromkeys([*self._observed, *self._signatures]):
            # An untuned signature reads as a tuning state that has not started.
            state = self._signatures.get(signature) or _Signature(self._names)
            units = dict(state.units)
            if signature in self._observed:
                units[self._model.loop_variant] += self._observed[signature].units
            report[_signature_text(signature)] = {
                "chosen": state.chosen,
                "seconds": {n: min(s) for n, s in state.seconds.items() if s},
                "units": units,
            }
        return report


class _Run:
    """One driver call's units of one signature, tuned once tuning pays (see `LoopTuner.pays`)."""

    def __init__(self, model, signature, units):
        self._model = model
        self._signature = signature
        self._remaining = units or 0  # full units not yet run (0: unknown)

    def run(self, call, timed=True):
        """`call(variant_model)` for one unit; returns its result.

        `call` must return only once the work is done; `timed=False` marks a
        partial unit (a last, smaller batch), which is never timed.
        """
        tuner = self._model._tuner
        if tuner is None:
            return call(self._model)
        if timed:
            tuned = tuner.pays(self._signature, self._remaining)
            self._remaining = max(self._remaining - 1, 0)
            if tuned:
                return tuner.run(self._signature, call)
        elif tuner.tuning(self._signature):
            return tuner.run(self._signature, call, timed=False)  # the current choice
        start = _clock()
        result = call(self._model)
        if timed:
            tuner.observe(self._signature, _clock() - start)
        return result


def tuner_for(model, signature, units):
    """What a driver runs its units of `signature` through: an object with `run(call, timed)`.

    `units` is the number of full units the driver will run (None when
    unknown). Units run on the model's own loop, timed, until tuning pays;
    from then on through the model's `LoopTuner`.
    """
    return _Run(model, signature, units)


def signature(kind, batch_size, steps, inputs):
    """The key a choice is kept under: what is run, batch size, steps, input shape, dtype."""
    dtype = getattr(inputs.dtype, "name", None) or str(inputs.dtype)  # tf.DType or NumPy
    return (kind, int(batch_size), int(steps), tuple(inputs.shape[1:]), dtype)


def _signature_text(signature):
    kind, batch_size, steps, shape, dtype = signature
    return f"{kind}: batch {batch_size}, {steps} steps, input {shape} {dtype}"
