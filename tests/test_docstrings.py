"""Every `Example:` in the library's docstrings runs and prints what it shows."""

import doctest
import importlib
import pathlib

import pytest

import keras_snn

PACKAGE = pathlib.Path(keras_snn.__file__).parent
MODULES = sorted(
    "keras_snn." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts).replace(".__init__", "")
    for path in PACKAGE.rglob("*.py")
    if path.name != "__init__.py" and ">>> " in path.read_text()
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
