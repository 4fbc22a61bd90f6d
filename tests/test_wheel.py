"""Shipping as a wheel: a built wheel holds every module and template, and, installed in a fresh venv, builds a
report from a directory outside the checkout (templates, static files and file modes included)."""

import json
import os
import shutil
import site
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
BUILD_INPUTS = ("pyproject.toml", "setup.py", "README.md", "reportgen", "templates")   # what the wheel is built from
JUNK = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")

MYNET = """
import torch
from torch import nn


class MyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.relu1 = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()
        self.conv2, self.relu2 = nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        return self.head(x.mean((2, 3)))


def build():
    torch.manual_seed(0)
    return MyNet()
"""

SPEC = """
title: wheel test
model: {factory: "mynet:build", input_size: 32, mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]}
dataset: {format: imagefolder, root: data}
layers:
  - {name: conv2, filters: 0-3}
feature_vis: {steps: 4, classes: [0]}
attribution: {images: 2, methods: [saliency, gradcam]}
"""


def _source_files(top: str) -> list[str]:
    return sorted(p.relative_to(REPO).as_posix() for p in (REPO / top).rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")


def _run(cmd, cwd, **kw):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, env=dict(env, PIP_DISABLE_PIP_VERSION_CHECK="1"),
                            capture_output=True, text=True, timeout=600, **kw)
    assert result.returncode == 0, f"{cmd} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


def _build_wheel(tmp_path: Path) -> Path:
    """Build from a copy: setuptools writes build/ and *.egg-info into the source tree, and a stale build/lib
    in the checkout would leak deleted modules into the wheel."""
    src = tmp_path / "src"
    src.mkdir()
    for name in BUILD_INPUTS:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=JUNK)
        else:
            shutil.copy2(REPO / name, src / name)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path / "dist",
          src], cwd=tmp_path)          # an absolute path: a bare "src" would be a package name for pip
    (wheel,) = (tmp_path / "dist").glob("reportgen-*.whl")
    return wheel


def _write_project(work: Path) -> None:
    """A model module beside the spec and an ImageFolder of 3 classes × 10 PNGs (shapes at random places)."""
    (work / "mynet.py").write_text(MYNET)
    (work / "spec.yaml").write_text(SPEC)
    rng = np.random.default_rng(0)
    for c, cls in enumerate(["bars", "blocks", "noise"]):
        (work / "data" / cls).mkdir(parents=True)
        for i in range(10):
            img = rng.integers(0, 60, (32, 32, 3), dtype=np.uint8)
            y, x = rng.integers(0, 16, 2)
            if c == 0:
                img[:, x:x + 4] = 250
            elif c == 1:
                img[y:y + 12, x:x + 12] = 200
            else:
                img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(img).save(work / "data" / cls / f"{i}.png")


@pytest.mark.slow
def test_wheel_installs_and_builds_outside_the_checkout(tmp_path):
    wheel = _build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f.replace("templates/", "reportgen/templates/", 1) for f in _source_files("templates")}
    expected |= set(_source_files("reportgen"))
    assert not expected - names, f"missing from the wheel: {sorted(expected - names)}"

    # --system-site-packages: torch & co. come from the outer install, not a download. The outer editable
    # install's finder (a .pth there) stays active, so check that reportgen is imported from the venv.
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv], cwd=tmp_path)
    py, bindir = venv / "bin" / "python", venv / "bin"
    if sys.prefix != sys.base_prefix:   # the tests run in a venv: --system-site-packages reaches only its base
        purelib = _run([py, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd=tmp_path).stdout
        Path(purelib.strip(), "outer-venv.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    _run([py, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--force-reinstall", wheel], cwd=tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    where = _run([py, "-c", "import reportgen.templates as t, sysconfig; print(t.__file__); "
                            "print(sysconfig.get_path('purelib'))"], cwd=work).stdout.split()
    assert Path(where[0]).is_relative_to(where[1]), where
    assert "usage: reportgen" in _run([bindir / "reportgen", "--help"], cwd=work).stdout

    _write_project(work)
    _run([bindir / "reportgen", "build", "spec.yaml", "-q"], cwd=work, preexec_fn=lambda: os.umask(0o022))
    out = work / "site"
    report = json.loads((out / "report.json").read_text())
    (layer,) = report["layers"]
    assert layer["name"] == "conv2" and len(layer["filters"]) == 4
    for page in ["index.html", layer["page"], layer["filters"][0]["page"]]:
        assert "</html>" in (out / page).read_text(encoding="utf-8"), page
    assert (out / "static" / "style.css").read_bytes() == (REPO / "templates" / "static" / "style.css").read_bytes()
    modes = {oct(stat.S_IMODE(p.stat().st_mode)) + ("/" if p.is_dir() else "") for p in [out, *out.rglob("*")]}
    assert modes == {"0o644", "0o755/"}
