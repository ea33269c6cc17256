"""Bias and fairness audit workbench for vision-language models."""

__version__ = "0.1.0"
