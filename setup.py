"""Which packages ship, the one thing pyproject.toml cannot say: setuptools' declarative `packages.find` cannot be
combined with the package-dir mapping that installs the top-level templates/ as the package `reportgen.templates`.
Both lists are found, so adding or removing a package (or a template folder) needs no edit here.
Everything else is in pyproject.toml.
"""

from setuptools import find_namespace_packages, setup

NOT_PACKAGES = ["__pycache__", "*.__pycache__"]
TEMPLATES = ["reportgen.templates"] + [f"reportgen.templates.{p}"
                                       for p in find_namespace_packages("templates", exclude=NOT_PACKAGES)]

setup(
    packages=find_namespace_packages(include=["reportgen", "reportgen.*"], exclude=NOT_PACKAGES) + TEMPLATES,
    package_dir={"reportgen.templates": "templates"},
    # every file of the template folders (pages, the stylesheet, scripts), the demo's weights and its earlier
    # checkpoints (a folder without __init__.py: found above as a namespace package)
    package_data={**{p: ["*"] for p in TEMPLATES}, "reportgen.demo": ["*.pt"], "reportgen.demo.checkpoints": ["*.pt"]},
)
