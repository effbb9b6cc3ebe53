"""The library's version: one place, imported by the package, checkpoints and reports."""

__version__ = "0.1.0"
