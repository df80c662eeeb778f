"""Install keras_snn: `pip install -e .[test,examples]`."""

import pathlib

import setuptools

version = {}
exec(pathlib.Path("keras_snn/version.py").read_text(), version)

setuptools.setup(
    name="keras_snn",
    version=version["__version__"],
    description=(
        "Convert trained Keras models to spiking neural networks and simulate them "
        "as one compiled TensorFlow loop."
    ),
    long_description=pathlib.Path("README.md").read_text(),
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["keras_snn", "keras_snn.*"]),
    python_requires=">=3.10",
    install_requires=[
        "tensorflow>=2.16",
        "keras>=3",
        "tensorflow-model-optimization>=0.8",
        "numpy",
        "absl-py",
    ],
    extras_require={
        "test": ["pytest", "hypothesis", "scikit-learn", "tf-keras", "matplotlib", "tensorboard", "nir"],
        "examples": ["scikit-learn", "matplotlib"],
        "tensorboard": ["tensorboard"],
        "nir": ["nir"],
        # NIR importers for tests/test_nir_interop.py, pinned at the versions tested (README.md,
        # "NIR interop"); torch 2.13.0 takes the local CPU wheel where one is offered.
        # sinabs pins nir<=1.0.4 against nirtorch 2.6's nir>=1.0.6: it gets its own
        # environment (README.md), not this extra.
        "interop": [
            "nir==1.0.8", "torch==2.13.0", "torchvision==0.28.0", "nirtorch==2.6",
            "snntorch==1.0.0", "norse==1.1.0", "spikingjelly[nir]==2.0.0", "scikit-learn",
            "pytest",
        ],
    },
    license="Apache-2.0",
)
