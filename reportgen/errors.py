"""The project's exceptions. `cli.py` turns each into a one-line message and exit status 2.

ReportgenError
 ├── SpecError(key)   a spec value is wrong; `key` is its dotted path (`layers[1].name`)
 ├── ModelError       the model cannot be loaded or does not fit the spec
 ├── DataError        the dataset cannot be read
 └── RenderError      the site cannot be written
"""


class ReportgenError(Exception):
    """Base of every error reportgen reports to the user (exit status 2)."""


class SpecError(ReportgenError):
    """A spec value is wrong. `key` is the dotted path of the value at fault."""

    def __init__(self, key: str, message: str):
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}")


class ModelError(ReportgenError):
    """The model cannot be loaded, or does not match what the spec says of it."""


class DataError(ReportgenError):
    """The dataset cannot be read or is empty."""


class RenderError(ReportgenError):
    """The site cannot be written."""
