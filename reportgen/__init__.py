"""reportgen: turn a trained CNN into a browsable, self-contained interpretability report."""

__version__ = "0.1.0"
