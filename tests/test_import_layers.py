"""The import contract of pyproject.toml ([tool.importlinter]): the RL library imports no domain code, the domain
packages and the library's roles import only downward. A broken layer fails the suite here, naming the import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = [sys.executable, "-c",
                "import sys; from importlinter.cli import lint_imports_command as c; sys.exit(c())"]


def _lint(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*LINT_IMPORTS, "--no-cache", "--no-logo", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def test_every_import_contract_is_kept():
    res = _lint()
    assert res.returncode == 0, res.stdout + res.stderr
    assert "3 kept, 0 broken" in res.stdout


def test_a_broken_layer_is_reported(tmp_path):
    """The checker sees the real graph: a contract the code breaks (the evaluator reads the data layer) fails."""
    cfg = tmp_path / "contract.ini"
    cfg.write_text("[importlinter]\nroot_packages =\n    verl\n    data\n    RS\n\n"
                   "[importlinter:contract:probe]\nname = probe\ntype = forbidden\nsource_modules =\n    verl.eval\n"
                   "forbidden_modules =\n    data\n")
    res = _lint(str(cfg))
    assert res.returncode != 0 and "verl.eval is not allowed to import data" in res.stdout, res.stdout
