"""One command-line convention: every command takes --help and --version (fast: no JAX loaded), and a user's
mistake is one `error:` line, exit 2."""

import importlib
import json
import os
import subprocess
import sys
import tomllib
from importlib import metadata

import pytest
from absl import flags
from conftest import one_error_line

import npejax
from npejax import cli

pytestmark = pytest.mark.fast  # the whole file is in the fast tier

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "cpu_small.py")
COMMANDS = (
    "main",
    "simulate",
    "predict",
    "survey",
    "evaluate",
    "experiment",
    "sdss",
    "synthetic_bank",
    "export_pretrained",
)
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


# Loaded by the commands' work, never by --help or --version (the commands import them inside run).
HEAVY = (
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "orbax",
    "tensorflow_probability",
    "galsim",
    "astropy",
    "scipy",
    "matplotlib",
)
_HELP_SCRIPT = """
import contextlib, io, json, sys
from npejax import {name} as command
calls = {calls!r}
results = []
for argv in calls:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = command.main(argv)
    results.append([status, out.getvalue()])
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {heavy!r})
print(json.dumps({{"results": results, "heavy": heavy}}))
"""


@pytest.mark.fast
@pytest.mark.parametrize("name", COMMANDS)
def test_help_and_version_load_no_jax(name):
    """In a fresh interpreter, --help and --version exit 0 without importing JAX, Flax, GalSim or astropy (what
    made --help take 8 s); the help is plain text (no reST) and marks the required flags."""
    sub = [SUBCOMMAND[name]] if name in SUBCOMMAND else []
    calls = [[name, *sub, "--help"], [name, *sub, "--version"]]
    if sub:  # the command's own --help (its docstring) and --version, before a subcommand
        calls += [[name, "--help"], [name, "--version"]]
    script = _HELP_SCRIPT.format(name=name, calls=calls, heavy=HEAVY)
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    report = json.loads(proc.stdout.splitlines()[-1])
    assert report["heavy"] == [], f"--help/--version of npejax.{name} imported {report['heavy']}"
    (help_status, help_out), (version_status, version_out) = report["results"][:2]
    assert help_status == 0 and version_status == 0
    assert version_out == f"npejax {npejax.__version__} (jax {metadata.version('jax')})\n"
    assert f"npejax.{name}" in help_out and "flags:" in help_out
    assert "(required)" in help_out  # every command (subcommand) has a required flag
    assert "``" not in help_out and ":mod:`" not in help_out and ":func:`" not in help_out
    for status, out in report["results"][2:]:
        assert status == 0 and out.strip()


def test_help_marks_required_flags_and_reads_as_plain_text():
    fv = flags.FlagValues()
    flags.DEFINE_string("out", None, "Output file (``.fits``).", flag_values=fv, required=True)
    flags.DEFINE_integer("batch-size", 256, "Images per call.", lower_bound=1, flag_values=fv)
    flags.DEFINE_alias("batch_size", "batch-size", flag_values=fv)
    flags.DEFINE_multi_string("workdir", [], "NAME=DIR.", flag_values=fv)
    text = cli.help_text(fv, "Does a thing with :mod:`npejax.nn.predictor` (``--out``, ``ra``), see\n:func:`~a.b`::")
    lines = text.splitlines()
    assert lines[0] == "Does a thing with npejax.nn.predictor (--out, 'ra'), see"
    assert lines[1] == "b:"
    assert "  --out: Output file ('.fits'). (required)" in lines
    assert "  --batch-size (or --batch_size): Images per call. (default: 256; a positive integer)" in lines
    assert "  --workdir: NAME=DIR. (repeatable)" in lines
    assert not any(line.startswith("  --batch_size") for line in lines)  # an alias is named beside its flag


def _defines(name):
    """Every define_flags of command ``name`` (one per subcommand of survey and sdss)."""
    module = importlib.import_module(f"npejax.{name}")
    if hasattr(module, "SUBCOMMANDS"):
        return [define for define, _ in module.SUBCOMMANDS.values()]
    return [module.define_flags]


@pytest.mark.parametrize("name", COMMANDS)
def test_one_flag_convention(name):
    """Every hyphenated flag of every command has its underscore alias; no boolean reads --[no]no-X; the
    output is --out (survey merge's too) and --table is gone but for its refusal."""
    for define in _defines(name):
        fv = flags.FlagValues()
        define(fv)
        shown = [n for n in fv if not (fv[n].help or "").startswith((cli.DEPRECATED, "Alias for"))]
        for flag in shown:
            if "-" in flag:
                alias = fv[flag.replace("-", "_")] if flag.replace("-", "_") in fv else None
                assert alias is not None and alias.help == f"Alias for --{flag}.", f"{name}: --{flag}: no alias"
            assert not (fv[flag].boolean and flag.startswith("no")), f"{name}: --[no]{flag}"
        assert "table" not in shown and ("out" in fv or name == "main")  # training writes into its --workdir


def test_parse_pairs_with_plain_directories():
    assert cli.parse_pairs(["runs/cpu_small", "b=x/y", "runs/aware/"], "--workdir", bare=True) == {
        "cpu_small": "runs/cpu_small",
        "b": "x/y",
        "aware": "runs/aware/",
    }
    with pytest.raises(cli.UsageError, match="--catalog expects NAME=PATH, got 'x.fits'"):
        cli.parse_pairs(["x.fits"], "--catalog")
    with pytest.raises(cli.UsageError, match="name 'a' given twice; give NAME=PATH to tell x/a and y/a apart"):
        cli.parse_pairs(["x/a", "y/a"], "--workdir", bare=True)


def test_version_matches_pyproject():
    """npejax.__version__ is the installed metadata's version, else (a source tree) pyproject.toml's: the same,
    and the one CITATION.cff cites."""
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        version = tomllib.load(f)["project"]["version"]
    assert npejax.__version__ == version
    with open(os.path.join(ROOT, "CITATION.cff")) as f:
        assert f"\nversion: {version}\n" in f.read()  # the citation names the same version
    not_installed = (
        "from importlib import metadata\n"
        "def version(name):\n    raise metadata.PackageNotFoundError(name)\n"
        "metadata.version = version\n"
        "import npejax\nprint(npejax.__version__)"
    )
    proc = subprocess.run([sys.executable, "-c", not_installed], cwd=ROOT, capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == version


def test_flag_values_written_in_the_commands_are_the_librarys():
    """predict, survey and sdss spell out a few library values as plain constants (so that --help loads no JAX)."""
    from npejax import export_pretrained, predict, sdss, survey
    from npejax.cataloging import runner
    from npejax.nn import checkpoints, predictor
    from npejax.surveys import download
    from npejax.surveys import sdss as sdss_lib

    assert predict.CHECKPOINTS == export_pretrained.CHECKPOINTS == checkpoints.WHICH  # survey uses predict's flag
    for command in (predict, survey):
        assert command.CHUNK_SIZE == predictor.CHUNK_SIZE
    assert predict.PROGRESS_DELAY == predictor.PROGRESS_DELAY
    assert survey.FORMATS == tuple(runner.FORMATS)
    assert sdss.DEFAULT_BASE_URL == download.DEFAULT_BASE_URL
    assert sdss.DEFAULT_GRID == sdss_lib.DEFAULT_GRID
