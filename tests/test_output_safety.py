"""Atomic builds: a kill -9 mid-build leaves the previous site intact; the next build resumes from the cache."""

import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reportgen.errors import SpecError
from reportgen.output import TMP_PREFIX, check_output
from tests.helpers.tiny import FASHION_DIR

SPEC = f"""
model: {{factory: tests.helpers.tiny:tiny_cnn, mean: [0.5], std: [0.25], input_size: 28}}
dataset: {{format: fashion-mnist, root: {FASHION_DIR}, limit: LIMIT}}
layers:
  - {{name: block1_conv1, filters: all}}
  - {{name: block2_conv1, filters: all}}
feature_vis: {{enabled: false}}
attribution: {{enabled: false}}
"""
REPO = Path(__file__).resolve().parents[1]


def run(spec, *args, wait=True):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "reportgen", "build", str(spec), *args]
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def tree(folder: Path) -> dict[str, str]:
    """Every file and directory under `folder`: {relative path: sha256 of its bytes, or 'dir'}."""
    return {p.relative_to(folder).as_posix(): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*"))}


@pytest.mark.slow
def test_kill_mid_build_keeps_previous_site_and_resumes(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.replace("LIMIT", "200"))
    first = run(spec, "-q")
    assert first.returncode == 0, first.stderr
    before = tree(tmp_path / "site")
    assert "report.json" in before and "index.html" in before and len(before) > 20

    spec.write_text(SPEC.replace("LIMIT", "3000"))            # a different build, killed while writing pages
    proc = run(spec, "-q", wait=False)
    deadline = time.time() + 300
    while time.time() < deadline and not list(tmp_path.glob(TMP_PREFIX + "*")):
        time.sleep(0.01)
    assert list(tmp_path.glob(TMP_PREFIX + "*")), "the build never started writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    after = tree(tmp_path / "site")
    assert sorted(after.keys() ^ before.keys()) == []                                  # no file added or lost
    assert [f for f in before if after[f] != before[f]] == []                           # every byte as it was
    assert all(p.name.startswith(".") for p in tmp_path.iterdir() if p.name not in ("site", "spec.yaml"))

    again = run(spec)                                                              # resumes from the cache
    assert again.returncode == 0, again.stderr
    assert "dataset pass: reusing cached results for 2 layers" in again.stderr
    assert json.loads((tmp_path / "site" / "report.json").read_text())["dataset"]["used"] == 3000
    assert not list(tmp_path.glob(TMP_PREFIX + "*"))


def test_refuses_non_site_directory(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "thesis.tex").write_text("keep me")
    with pytest.raises(SpecError, match="is not empty and is not a reportgen site"):
        check_output(tmp_path / "out", [])
    assert (tmp_path / "out" / "thesis.tex").read_text() == "keep me"


def test_refuses_output_containing_inputs(tmp_path):
    (tmp_path / "data").mkdir()
    with pytest.raises(SpecError, match="contains"):
        check_output(tmp_path, [tmp_path / "data"])
    with pytest.raises(SpecError, match="contains"):
        check_output(tmp_path / "data", [tmp_path / "data"])
    check_output(tmp_path / "site", [tmp_path / "data"])          # a sibling is fine


def test_corrupt_cache_entry_is_recomputed(tmp_path):
    import numpy as np

    from reportgen.artifacts import Cache
    cache = Cache(tmp_path)
    cache.save("k", "abc", {"x": np.arange(5)})
    path = tmp_path / "k" / "abc.npz"
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="corrupt"):
        assert cache.load("k", "abc") is None
    assert not path.exists()
    assert cache.get_or_compute("k", "abc", lambda: {"x": np.arange(3)})["x"].tolist() == [0, 1, 2]
    assert cache.load("k", "abc")["x"].tolist() == [0, 1, 2]


MODES_SPEC = f"""
model: {{factory: tests.helpers.tiny:tiny_cnn, mean: [0.5], std: [0.25], input_size: 28}}
dataset: {{format: fashion-mnist, root: {FASHION_DIR}, limit: 20}}
layers:
  - {{name: block1_conv1, filters: 0-1}}
feature_vis: {{enabled: false}}
attribution: {{enabled: false}}
"""


@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)],
                         ids=["umask022", "umask027"])
def test_written_modes_follow_the_umask(tmp_path, umask, file_mode, dir_mode):
    """Pages, images, the single file and directories get 0666/0777 less the umask, as any program's would."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(MODES_SPEC)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-m", "reportgen", "build", str(spec), "-q", "--single-file"], env=env,
                            capture_output=True, text=True, timeout=600, preexec_fn=lambda: os.umask(umask))
    assert result.returncode == 0, result.stderr
    site = tmp_path / "site"
    paths = [site, *site.rglob("*"), tmp_path / "site.html"]
    modes = {p.relative_to(tmp_path).as_posix(): oct(stat.S_IMODE(p.stat().st_mode)) for p in paths}
    assert modes == {rel: oct(dir_mode if (tmp_path / rel).is_dir() else file_mode) for rel in modes}
    # what the comparison covered: pages, images and directories at every depth
    assert {"site", "site/index.html", "site/layers", "site/layers/block1_conv1", "site/layers/block1_conv1/f0.html",
            "site/layers/block1_conv1/img", "site/static/style.css", "site.html"} <= modes.keys()
    assert any(rel.startswith("site/layers/block1_conv1/img/") and rel.endswith(".png") for rel in modes)
