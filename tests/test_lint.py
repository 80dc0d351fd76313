"""The tree is ruff-clean: ``ruff check`` and ``ruff format --check`` with the settings in pyproject.toml
(the version pinned in the ``test`` extra, so CI and a contributor's pre-commit hook agree)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _ruff() -> list[str]:
    exe = Path(sys.executable).with_name("ruff")
    if exe.exists():
        return [str(exe)]
    if shutil.which("ruff"):
        return ["ruff"]
    pytest.fail("ruff is not installed: pip install -e '.[test]' installs the pinned version")


@pytest.mark.fast
@pytest.mark.parametrize("args", [["check", "--no-cache"], ["format", "--check", "--no-cache"]], ids=["lint", "format"])
def test_ruff_clean(args):
    proc = subprocess.run([*_ruff(), *args, "."], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, (
        f"ruff {' '.join(args)} found problems (fix with ruff check --fix / ruff format):\n"
        + (proc.stdout + proc.stderr)
    )
