"""The "how this was built" section: normalized spec, seed, hashes, versions, the command to rebuild.

Nothing time- or machine-dependent (no timestamps, no absolute paths) so rebuilds are byte-identical.
"""

import os
import platform
from importlib import metadata
from pathlib import Path

import yaml

PACKAGES = ["reportgen", "torch", "torchvision", "numpy", "pillow", "bokeh", "jinja2", "opentsne", "scikit-learn"]


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def normalized_spec(spec, site: Path) -> str:
    """The spec with every default filled in, as YAML; paths relative to the spec's directory."""
    data = spec.model_dump(mode="json", exclude_none=True)
    base = spec.spec_path

    def rel(value: str) -> str:
        return os.path.relpath(value, base) if os.path.isabs(value) else value
    data["output"] = rel(data["output"])
    if "root" in data["dataset"]:   # an in-memory dataset has none
        data["dataset"]["root"] = rel(data["dataset"]["root"])
    if "checkpoint" in data["model"]:
        data["model"]["checkpoint"] = rel(data["model"]["checkpoint"])
    if isinstance(data["model"].get("classes"), str):
        data["model"]["classes"] = rel(data["model"]["classes"])
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)


def provenance(spec, site: Path, model_sha: str, fingerprint: str) -> dict:
    site = Path(site).absolute()
    spec_rel = os.path.relpath(spec.spec_file, site.parent) if spec.spec_file else "SPEC"
    out_rel = os.path.relpath(site, site.parent)
    return {"spec_yaml": normalized_spec(spec, site), "seed": spec.seed, "model_sha256": model_sha,
            "dataset_fingerprint": fingerprint,
            "python": platform.python_version(),
            "packages": [{"name": n, "version": _version(n)} for n in PACKAGES],
            "command": f"reportgen build {spec_rel} --out {out_rel}",
            "command_dir": "the directory that contains the site"}
