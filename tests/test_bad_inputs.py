"""The bad-input corpus: every case gives its exact one-line message and exit status 2, writes nothing.

Each folder of tests/bad_inputs/ holds a spec.yaml (and the bad files it names) and expected.txt:
`exit N`, then the exact stderr lines starting with 'error'/'warning' ({case} = the folder, {repo} = the
repository). Cases named output_* use the spec's own `output`; the others build into {case}/site.
"""

import io
from contextlib import redirect_stderr
from pathlib import Path

import pytest

from reportgen.cli import main

CORPUS = Path(__file__).parent / "bad_inputs"
REPO = Path(__file__).resolve().parents[1]
CASES = sorted(p.name for p in CORPUS.iterdir() if (p / "spec.yaml").is_file())


def test_corpus_is_large_enough():
    assert len(CASES) >= 30


@pytest.mark.parametrize("name", CASES)
def test_bad_input(name, monkeypatch, tmp_path):
    case = CORPUS / name
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))   # no cached weights
    def files():  # the cache is reportgen's own scratch space, not output
        return sorted(p.relative_to(case) for p in case.rglob("*")
                      if not {"__pycache__", ".reportgen-cache"} & set(p.parts))
    before = files()
    args = ["build", "-q", str(case / "spec.yaml")]
    if not name.startswith("output_"):
        args += ["--out", str(tmp_path / "site")]
    err = io.StringIO()
    with redirect_stderr(err):
        code = main(args)
    text = err.getvalue().replace(str(case), "{case}").replace(str(REPO), "{repo}")
    lines = [line for line in text.splitlines() if line.startswith(("error", "warning"))]
    expected = (case / "expected.txt").read_text().splitlines()
    assert [f"exit {code}"] + lines == expected
    assert code == 2
    assert not (tmp_path / "site").exists()
    assert files() == before
