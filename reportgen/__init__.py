"""reportgen: turn a trained CNN into a browsable, self-contained interpretability report.

    import reportgen
    report = reportgen.build("spec.yaml")      # or a dict, model and dataset objects allowed; see api.py
    report.filter("block3_conv1", 31)           # in Jupyter: the filter's page, inline
"""

from .errors import DataError, ModelError, RenderError, ReportgenError, SpecError

__version__ = "0.1.0"
__all__ = ["build", "Report", "ReportgenError", "SpecError", "ModelError", "DataError", "RenderError"]


def __getattr__(name: str):
    # the API imports torch and the analyses (seconds): `reportgen --version` and `import reportgen` stay instant
    if name in ("build", "Report"):
        from . import api
        return getattr(api, name)
    raise AttributeError(f"module 'reportgen' has no attribute {name!r}")
