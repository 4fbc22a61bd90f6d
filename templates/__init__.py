"""The page templates and static files, installed as the package `reportgen.templates` (see pyproject.toml)."""
