"""The bad-input corpus: every case gives its exact one-line message and exit status 2, writes nothing.

Each folder of tests/bad_inputs/ holds a spec.yaml (and the bad files it names) and expected.txt:
`exit N`, then the whole of stderr, line for line ({case} = the folder, {repo} = the repository). Builds run
with `-q --no-cache`: no progress bar may appear, and every run says the same. What a build logs before it
fails (`model ...: N layers, ...`, a `warning:` about skipped images) is part of the expected text; the one
`error:` line comes last. Cases named output_* use the spec's own `output`; the others build into {case}/site.
"""

import re
from pathlib import Path

import pytest
import torch
import yaml

from reportgen.cli import main
from reportgen.spec import Spec

CORPUS = Path(__file__).parent / "bad_inputs"
REPO = Path(__file__).resolve().parents[1]
CASES = sorted(p.name for p in CORPUS.iterdir() if (p / "spec.yaml").is_file())
# `error: KEY: ...` with KEY a spec key path like `layers[0].filters`, or `(spec)` for the file as a whole
KEY = re.compile(r"error: (\(spec\)|[a-z_]+(?:\[\d+\])?(?:\.[a-z_]+(?:\[\d+\])?)*): \S")


def test_corpus_is_large_enough():
    assert len(CASES) >= 30


def names_its_subject(line: str, case: Path) -> bool:
    """The error names a key of the spec (or the spec itself), or a file of the case."""
    if match := KEY.match(line):
        root = re.split(r"[.\[]", match.group(1))[0]
        raw = yaml.safe_load((case / "spec.yaml").read_text()) if root != "(spec)" else None
        if root == "(spec)" or root in Spec.model_fields or (isinstance(raw, dict) and root in raw):
            return True
    files = {p.name for p in case.rglob("*") if ".reportgen-cache" not in p.parts} - {"spec.yaml", "expected.txt"}
    return any(name in line for name in files)


def run_case(name: str, tmp_path: Path, capfd) -> tuple[int, list[str], str]:
    """main() on the case: (exit status, stderr lines with {case}/{repo} put back, stdout)."""
    case = CORPUS / name
    args = ["build", "-q", "--no-cache", str(case / "spec.yaml")]     # no cache: the same stderr every run
    if not name.startswith("output_"):
        args += ["--out", str(tmp_path / "site")]
    capfd.readouterr()
    code = main(args)
    out, err = capfd.readouterr()           # file descriptors too: nothing printed below Python escapes
    return code, err.replace(str(case), "{case}").replace(str(REPO), "{repo}").splitlines(), out


@pytest.mark.parametrize("name", CASES)
def test_bad_input(name, monkeypatch, tmp_path, capfd):
    if name == "device_cuda_missing" and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU, so 'cuda' is valid here (test_cuda_is_accepted_with_a_gpu)")
    case = CORPUS / name
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))   # no cached weights

    def files():  # the cache is reportgen's own scratch space, not output
        return sorted(p.relative_to(case) for p in case.rglob("*")
                      if not {"__pycache__", ".reportgen-cache"} & set(p.parts))
    before = files()
    code, lines, out = run_case(name, tmp_path, capfd)
    assert [f"exit {code}"] + lines == (case / "expected.txt").read_text().splitlines()
    assert code == 2 and out == ""
    errors = [line for line in lines if line.startswith("error")]
    assert len(errors) == 1 and lines[-1] == errors[0]          # one error line, the last thing said
    assert not any("Traceback" in line or "\r" in line for line in lines)   # no traceback, no progress bar
    assert names_its_subject(errors[0], case), errors[0]
    assert not (tmp_path / "site").exists()
    assert files() == before


def test_cuda_is_accepted_with_a_gpu(tmp_path, capfd):
    """Where a CUDA GPU exists, `device: cuda` builds (the corpus's device_cuda_missing case cannot occur)."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU here: device_cuda_missing checks the message instead")
    from tests.helpers.tiny import FASHION_DIR
    spec = (CORPUS / "device_cuda_missing" / "spec.yaml").read_text()
    (tmp_path / "spec.yaml").write_text(spec.replace("../../../configs/data/fashion-mnist", str(FASHION_DIR)))
    assert main(["build", "-q", str(tmp_path / "spec.yaml"), "--out", str(tmp_path / "site")]) == 0
    err = capfd.readouterr().err
    assert "device cuda" in err and "error" not in err
    assert (tmp_path / "site" / "report.json").is_file()
