"""The serving package's version, shown in /info, the model-info metric and the app's title."""

__version__ = "0.1.0"
