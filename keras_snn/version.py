"""The keras_snn release number (single source for setup.py and `keras_snn.__version__`)."""

__version__ = "0.1.0"
