"""The public surface: pinned names, public-only dependencies, no import side effects."""

import os
import pathlib
import re
import subprocess
import sys

import keras_snn

PACKAGE = pathlib.Path(keras_snn.__file__).parent


def test_public_names_are_pinned():
    assert sorted(keras_snn.__all__) == sorted([
        "ConversionError", "NIRExportError", "export_nir", "SimulationResult", "SpikingModel", "__version__",
        "add_sparsity_penalties", "applications", "callbacks", "strip_sparsity_penalties",
        "convert_model", "datasets", "layers", "losses", "measure_sparsity", "metrics", "neurons",
        "register_conversion_rule", "simulate",
    ])
    for name in keras_snn.__all__:
        assert hasattr(keras_snn, name), name
    for name in keras_snn.layers.__all__:
        assert hasattr(keras_snn.layers, name), name


def test_only_public_keras_and_tensorflow_apis_are_used():
    private = re.compile(r"\b(keras\.src|tensorflow\.python|tf\.python|tf_keras\.src)\b")
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if private.search(path.read_text())
    ]
    assert offenders == []


def test_import_sets_no_environment_variables():
    code = (
        "import os, json; before = dict(os.environ); import keras_snn; "
        "print(json.dumps(sorted(set(os.environ) ^ set(before))))"
    )
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_version_is_a_release_string():
    assert re.fullmatch(r"\d+\.\d+\.\d+", keras_snn.__version__)
