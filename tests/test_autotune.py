"""Autotuning of the loop variant (fused, unfused, XLA): schedule, choice, same results."""

import keras
import numpy as np
import pytest

import keras_snn
from keras_snn import autotune
from keras_snn import layers


def _network():
    inputs = keras.Input((5, 5, 1))
    x = layers.AnalogInput()(inputs)
    x = layers.SpikingConv2D(3, 3, neuron="buffered")(x)
    x = keras.layers.Flatten()(x)
    x = layers.SpikingDense(4, neuron=None)(x)
    return keras.Model(inputs, layers.Readout()(x))


class FakeClock:
    """A clock that only moves when a test says a unit took some seconds."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _timed_calls(tuner, signature, costs, units, clock):
    """Run `units` timed units through the tuner; returns the variant of each."""
    ran = []

    def call(model):
        name = model.loop_variant
        ran.append(name)
        clock.now += costs[name]
        return name

    for _ in range(units):
        tuner.run(signature, call)
    return ran


@pytest.mark.parametrize(
    "xla, fused, expected",
    [
        (None, None, ["fused", "unfused", "xla"]),
        (False, None, ["fused", "unfused"]),
        (None, True, ["fused", "xla"]),
        (None, False, ["unfused", "xla"]),
        (True, None, ["xla"]),
        (False, True, ["fused"]),
        (False, False, ["unfused"]),
    ],
)
def test_candidates_respect_fixed_options(xla, fused, expected):
    assert autotune.candidates(xla, fused) == expected
    snn = keras_snn.SpikingModel(_network(), xla=xla, fused_neurons=fused)
    assert (snn._tuner is None) == (len(expected) == 1)
    assert snn.loop_variant in expected


def test_schedule_compiles_each_once_then_times_interleaved_and_keeps_fastest(monkeypatch):
    snn = keras_snn.SpikingModel(_network(), timesteps=3)
    tuner = snn._tuner
    # The warm-up (compiling) round is not timed: "xla" is slow there only.
    costs = {"fused": 2.0, "unfused": 3.0, "xla": 1.0}
    clock = FakeClock()
    monkeypatch.setattr(autotune, "_clock", clock)
    signature = ("simulate", 8, 3, (5, 5, 1), "float32")
    ran = _timed_calls(tuner, signature, costs, 3 * (1 + autotune.TIMED_ROUNDS) + 4, clock)
    names = ["fused", "unfused", "xla"]
    assert ran[: 3 * (1 + autotune.TIMED_ROUNDS)] == names * (1 + autotune.TIMED_ROUNDS)
    assert ran[-4:] == ["xla"] * 4
    report = snn.loop_choices["simulate: batch 8, 3 steps, input (5, 5, 1) float32"]
    assert report["chosen"] == "xla"
    assert report["seconds"] == costs
    assert report["units"] == {"fused": 3, "unfused": 3, "xla": 7}
    # Variants share the network: the model itself is the "fused" variant.
    assert tuner.variant("fused") is snn
    assert tuner.variant("xla").network is snn.network and tuner.variant("xla").xla is True


def test_untimed_units_run_the_current_choice_and_do_not_count(monkeypatch):
    snn = keras_snn.SpikingModel(_network(), timesteps=3)
    clock = FakeClock()
    monkeypatch.setattr(autotune, "_clock", clock)
    signature = ("predict", 8, 3, (5, 5, 1), "float32")
    assert snn._tuner.run(signature, lambda model: model.loop_variant, timed=False) == "fused"
    assert snn.loop_choices[next(iter(snn.loop_choices))]["units"] == {
        "fused": 0, "unfused": 0, "xla": 0
    }


# Unit costs and the signature of the FakeDriver tests: unfused is the fastest.
DRIVER_COSTS = {"fused": 1.0, "unfused": 0.5, "xla": 2.0}
SIGNATURE = ("simulate", 8, 3, (5, 5, 1), "float32")


@pytest.fixture
def clock(monkeypatch):
    """The tuner's clock replaced by a FakeClock."""
    fake = FakeClock()
    monkeypatch.setattr(autotune, "_clock", fake)
    return fake


class FakeDriver:
    """Runs units of one model through `tuner_for` as simulate does, on a fake clock.

    A unit of variant v costs `costs[v]` seconds, plus `compile_seconds` the
    first time v runs (its compilation).
    """

    def __init__(self, snn, clock, compile_seconds=0.0, costs=DRIVER_COSTS):
        self.snn, self.clock, self.costs = snn, clock, costs
        self.compile_seconds = compile_seconds
        self.compiled = set()

    def run(self, signature, units, run_units=None):
        """One driver call announcing `units` units (runs `run_units`, default `units`)."""
        runner = autotune.tuner_for(self.snn, signature, units)
        ran = []

        def call(model):
            name = model.loop_variant
            self.clock.now += self.costs[name]
            if name not in self.compiled:
                self.clock.now += self.compile_seconds
                self.compiled.add(name)
            ran.append(name)
            return name

        for _ in range(units if run_units is None else run_units):
            runner.run(call)
        return ran


def test_tuning_starts_when_compiling_the_candidates_pays(clock):
    # Compiling costs 10 s, a unit 1 s: tuning (two more compilations, 20 s)
    # pays only for 20 / TUNING_BUDGET = 200 units of remaining work.
    short = keras_snn.SpikingModel(_network(), timesteps=3)
    ran = FakeDriver(short, clock, compile_seconds=10.0).run(SIGNATURE, 150)
    assert set(ran) == {"fused"}
    report = short.loop_choices["simulate: batch 8, 3 steps, input (5, 5, 1) float32"]
    assert report == {"chosen": None, "seconds": {},
                      "units": {"fused": 150, "unfused": 0, "xla": 0}}

    long = keras_snn.SpikingModel(_network(), timesteps=3)
    ran = FakeDriver(long, clock, compile_seconds=10.0).run(SIGNATURE, 300)
    # Two units on the own loop measure its compilation and steady time;
    # from the third on (298 units left) the candidates are compiled and timed.
    rounds = 3 * (1 + autotune.TIMED_ROUNDS)
    assert ran[:2] == ["fused", "fused"]
    assert ran[2 : 2 + rounds] == ["fused", "unfused", "xla"] * (1 + autotune.TIMED_ROUNDS)
    assert set(ran[2 + rounds :]) == {"unfused"}
    report = long.loop_choices["simulate: batch 8, 3 steps, input (5, 5, 1) float32"]
    assert report["chosen"] == "unfused"
    assert report["units"] == {"fused": 2 + 3, "unfused": 300 - 5 - 3, "xla": 3}


def test_repeated_short_runs_and_runs_of_unknown_length_get_tuned(clock):
    driver = FakeDriver(keras_snn.SpikingModel(_network(), timesteps=3), clock, 10.0)
    # 60-unit runs: none alone pays for 20 s of compiling, but after four of
    # them the signature has run 240 units and as many again are expected.
    for _ in range(3):
        assert set(driver.run(SIGNATURE, 60)) == {"fused"}
    ran = driver.run(SIGNATURE, 60)
    assert ran[0] == "fused" and "xla" in ran and ran[-1] == "unfused"

    # A dataset of unknown length (units None) is tuned once its own units pay.
    other = FakeDriver(keras_snn.SpikingModel(_network(), timesteps=3), clock, 10.0)
    ran = other.run(SIGNATURE, None, run_units=260)
    first_tuned = ran.index("unfused")
    assert 200 <= first_tuned <= 202 and ran[-1] == "unfused"


def test_short_runs_are_not_tuned_even_without_compilation(clock):
    enough = autotune.MIN_UNITS_PER_CANDIDATE * 3
    short = FakeDriver(keras_snn.SpikingModel(_network(), timesteps=3), clock)
    assert set(short.run(SIGNATURE, enough - 1)) == {"fused"}
    enough_units = FakeDriver(keras_snn.SpikingModel(_network(), timesteps=3), clock)
    assert enough_units.run(SIGNATURE, enough)[-1] == "unfused"


def test_simulate_tunes_and_gives_the_untuned_numbers(monkeypatch):
    keras.utils.set_random_seed(0)
    network = _network()
    rng = np.random.default_rng(0)
    batches = autotune.MIN_UNITS_PER_CANDIDATE * 3
    x = rng.random((4 * batches + 3, 5, 5, 1)).astype("float32")  # + a partial batch
    y = rng.integers(0, 4, len(x))
    fixed = keras_snn.SpikingModel(network, timesteps=6, xla=False, fused_neurons=True)
    reference = keras_snn.simulate(fixed, x, y, batch_size=4, verbose=0)
    assert fixed.loop_choices == {}

    # "unfused" is made the fastest whatever the real times are.
    costs = {"fused": 2.0, "unfused": 1.0, "xla": 3.0}
    clock = FakeClock()
    monkeypatch.setattr(autotune, "_clock", clock)
    tuned = keras_snn.SpikingModel(network, timesteps=6)
    original_variant = autotune.LoopTuner.variant

    def variant_with_cost(self, name):
        clock.now += costs[name]
        return original_variant(self, name)

    monkeypatch.setattr(autotune.LoopTuner, "variant", variant_with_cost)
    result = keras_snn.simulate(tuned, x, y, batch_size=4, verbose=0)
    np.testing.assert_allclose(result.accuracy, reference.accuracy, atol=1.0 / len(x))
    np.testing.assert_allclose(result.synaptic_ops, reference.synaptic_ops, rtol=1e-5)
    ((text, report),) = tuned.loop_choices.items()
    assert text == "simulate: batch 4, 6 steps, input (5, 5, 1) float32"
    assert report["chosen"] == "unfused"
    assert sum(report["units"].values()) == batches  # the partial batch is not counted
    # Two batches on the own loop (its compilation and steady time), then the schedule.
    assert report["units"]["unfused"] == batches - 2 - 2 * (1 + autotune.TIMED_ROUNDS)

    # A second call starts from the choice: every full batch runs unfused.
    keras_snn.simulate(tuned, x, y, batch_size=4, verbose=0)
    (report,) = tuned.loop_choices.values()
    assert report["units"]["unfused"] == 2 * batches - 2 - 2 * (1 + autotune.TIMED_ROUNDS)


def test_predict_tunes_batches_and_gives_the_untuned_numbers(monkeypatch):
    # A clock that stands still: no compilation to pay for, so 24 batches are tuned.
    monkeypatch.setattr(autotune, "_clock", FakeClock())
    keras.utils.set_random_seed(1)
    network = _network()
    x = np.random.default_rng(1).random((4 * 24, 5, 5, 1)).astype("float32")
    fixed = keras_snn.SpikingModel(network, timesteps=5, xla=False, fused_neurons=True)
    tuned = keras_snn.SpikingModel(network, timesteps=5)
    expected = fixed.predict(x, batch_size=4, verbose=0)
    np.testing.assert_allclose(tuned.predict(x, batch_size=4, verbose=0), expected,
                               rtol=1e-5, atol=1e-6)
    (report,) = tuned.loop_choices.values()
    assert report["chosen"] in ("fused", "unfused", "xla")
    assert set(report["seconds"]) == {"fused", "unfused", "xla"}


def test_options_round_trip_through_config():
    snn = keras_snn.SpikingModel(_network(), timesteps=3)
    assert snn.xla is None and snn.fused_neurons is None and snn.loop_variant == "fused"
    restored = keras_snn.SpikingModel.from_config(snn.get_config())
    assert restored.xla is None and restored.fused_neurons is None
    assert restored._tuner is not None
    fixed = snn.with_options(xla=True)
    assert fixed.loop_variant == "xla" and fixed._tuner is None
