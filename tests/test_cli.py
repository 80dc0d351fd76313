"""One command-line convention: every command takes --help, and a user's mistake is one `error:` line, exit 2."""

import importlib
import os
import subprocess
import sys

import pytest
from conftest import one_error_line

from npejax import cli

pytestmark = pytest.mark.fast  # the whole file is in the fast tier

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "cpu_small.py")
COMMANDS = ("main", "simulate", "predict", "survey", "evaluate", "experiment", "sdss", "synthetic_bank")
SUBCOMMAND = {"sdss": "download", "survey": "catalog"}  # commands whose flags belong to a subcommand


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_main_and_help(name, capsys):
    module = importlib.import_module(f"npejax.{name}")
    argv = [name, *([SUBCOMMAND[name]] if name in SUBCOMMAND else []), "--help"]
    assert module.main(argv) == 0
    out = capsys.readouterr().out
    assert f"npejax.{name}" in out and "--" in out  # the usage line of the docstring and the flags


@pytest.mark.parametrize("name", COMMANDS)
def test_unknown_flag_is_one_line(name, capsys):
    module = importlib.import_module(f"npejax.{name}")
    argv = [name, *([SUBCOMMAND[name]] if name in SUBCOMMAND else []), "--no-such-flag=1"]
    assert module.main(argv) == cli.EXIT_USAGE
    assert "no-such-flag" in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("name", ("main", "simulate", "experiment"))
def test_unknown_config_key_is_one_line(name, capsys):
    module = importlib.import_module(f"npejax.{name}")
    config = os.path.join(ROOT, "configs", "experiment_cpu.py" if name == "experiment" else "cpu_small.py")
    assert (
        module.main([name, "--config", config, "--config.no_such_key=3", "--out=/nonexistent/x", "--split=val"])
        == cli.EXIT_USAGE
    )
    assert "no_such_key" in one_error_line(capsys.readouterr().err)


def test_missing_config_file_is_one_line(tmp_path, capsys):
    from npejax import main

    assert main.main(["main", "--config", str(tmp_path / "absent.py"), "--workdir", str(tmp_path / "w")]) == 2
    assert "absent.py" in one_error_line(capsys.readouterr().err)
    assert not os.path.exists(tmp_path / "w")


def test_user_error_from_run_is_one_line(capsys):
    def define(fv):
        pass

    def run(fv):
        raise ValueError("field 'x' of catalog.fits: expected a number,\n got 'abc'")

    assert cli.main(define, run, ["prog"]) == 2
    assert one_error_line(capsys.readouterr().err) == "error: field 'x' of catalog.fits: expected a number, got 'abc'"


def test_a_bug_keeps_its_traceback():
    def define(fv):
        pass

    def run(fv):
        raise ZeroDivisionError("a bug")

    with pytest.raises(ZeroDivisionError):
        cli.main(define, run, ["prog"])


def test_python_dash_m_and_exit_status(tmp_path):
    """The README's `python -m` form: a bad value exits 2 with one line, in a fresh interpreter."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "npejax.simulate",
            "--config",
            CONFIG,
            "--split",
            "val",
            "--out",
            str(tmp_path / "d"),
            "--num-images",
            "0",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert "0" in one_error_line(proc.stderr)
    assert not os.path.exists(tmp_path / "d")
