"""Shared test fixtures: the repository root, config loading, and the tiny training configuration.

The tiny configuration is ``configs/cpu_small.py`` with :data:`TINY_OVERRIDES`: a 4-channel network of 7
conv blocks, batches of 8, 2 steps (16 images) per epoch, 16 validation images, simulation in-process.
Tests get it as a Python config (``tiny_config()``) or as command-line overrides (``tiny_flags()``), both
built from the same dict so they cannot drift apart. Fixtures are factories (session-scoped, so that
module-scoped fixtures can use them); each call returns a fresh config.

The session shares one XLA compilation cache, with the commands the tests start (:func:`share_compilations`).
"""

from __future__ import annotations

import importlib
import os
import pathlib
import shutil
import sys
import tempfile

import ml_collections
import pytest
from _modules_touched import ModulesTouched

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `configs` is imported from the repository root, however pytest is started
    sys.path.insert(0, str(ROOT))

TINY_OVERRIDES = {
    "model.width": 4,
    "model.stem_blocks": 1,
    "model.stages": ((1, 0, 1), (1, 0, 2), (1, 0, 2)),
    "train.batch_size": 8,
    "train.eval_batch_size": 8,
    "train.images_per_epoch": 16,  # 2 steps of 8
    "train.normalizer_images": 16,
    "data.num_val": 16,
    "simulator.num_workers": 0,
    "train.progress": False,
    # the values the tests were written against, kept when configs/cpu_small.py moved to its four-colour recipe
    "posterior.colours": 2,
    "train.learning_rate": 1e-3,
    "train.lr_decay_epoch": 8,
    "train.steps_per_dispatch": 1,
    "model.aperture_flux": False,
}
TINY_EPOCHS = 2


def pytest_addoption(parser):
    parser.addoption(
        "--modules-touched",
        action="store_true",
        help="list every npejax module with the first selected test that ran code in it; fail if one is not "
        "touched (python -m pytest -m fast --modules-touched: the fast tier's check; tests/_modules_touched.py)",
    )


def pytest_configure(config):
    share_compilations(config)
    if config.getoption("--modules-touched"):
        config.pluginmanager.register(ModulesTouched(), "modules_touched")


def share_compilations(config) -> None:
    """One XLA compilation cache for the test session (JAX's persistent cache, in a temporary directory removed
    when the session ends), in this process and in the commands the tests start (they inherit the environment).

    Most of the suite's time on a CPU is XLA compiling the same few programs again: the tiny network's train
    step, eval step and prediction, in every test that trains or predicts, in process or in a subprocess. With
    the cache each is compiled once per session and then loaded (a cached executable is the compiled program
    itself, so every result is the same). A ``JAX_COMPILATION_CACHE_DIR`` set by the caller is used as it is."""
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return
    directory = tempfile.mkdtemp(prefix="npejax-tests-xla-cache-")
    values = {"JAX_COMPILATION_CACHE_DIR": directory, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    os.environ.update(values)
    if "jax" in sys.modules:  # imported already (a plugin): its flags were read from the environment then
        import jax  # noqa: PLC0415

        jax.config.update("jax_compilation_cache_dir", directory)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)

    def remove():
        for name in values:
            os.environ.pop(name, None)
        shutil.rmtree(directory, ignore_errors=True)

    config.add_cleanup(remove)


def get_config(name: str, overrides: dict | None = None) -> ml_collections.ConfigDict:
    """``configs/<name>.py``'s ``get_config()`` with ``{"section.key": value}`` overrides applied."""
    config = importlib.import_module(f"configs.{name}").get_config()
    for key, value in (overrides or {}).items():
        section, _, leaf = key.rpartition(".")
        target = config
        for part in filter(None, section.split(".")):
            target = target[part]
        if leaf not in target:
            raise KeyError(f"configs/{name}.py has no key {key!r}")
        target[leaf] = value
    return config


def override_flags(overrides: dict, prefix: str = "config") -> list[str]:
    """``{"train.batch_size": 8}`` -> ``["--config.train.batch_size=8"]`` (``prefix`` for nested configs,
    e.g. ``config.network``)."""
    return [f"--{prefix}.{key}={value}" for key, value in overrides.items()]


def make_tiny_config() -> ml_collections.ConfigDict:
    """A fresh tiny training config (``TINY_EPOCHS`` epochs)."""
    config = get_config("cpu_small", TINY_OVERRIDES)
    config.train.num_epochs = TINY_EPOCHS
    return config


FIELD_WARNING = "from the network's training fields"  # npejax.cataloging.images.FieldRange (tests/test_field_range.py)


QUALITY_WARNING = "flagged by the quality check"  # npejax.cataloging.images.add_quality (test_quality_commands.py)


def without_field_warnings(err: str, quality: bool = False) -> str:
    """``err`` without the warnings of images beyond the network's training fields: the SDSS frame fixtures and
    several tests' PSFs lie outside the default bank, and tests/test_field_range.py tests those lines; with
    ``quality``, without the quality flag's lines too (a tiny test network's catalogs are flagged)."""
    drop = (FIELD_WARNING, QUALITY_WARNING) if quality else (FIELD_WARNING,)
    return "".join(line for line in err.splitlines(keepends=True) if not any(d in line for d in drop))


def one_error_line(err: str) -> str:
    """The single ``error: ...`` line a command prints for a user's mistake (npejax.cli), no traceback."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err, err
    return lines[0]


def assert_one_error(code: int, out: str, err: str, fragment: str) -> None:
    """Exit status 2, nothing on stdout, one error line containing ``fragment``."""
    assert code == 2 and out == "", out + err
    assert fragment in one_error_line(err), err


@pytest.fixture(scope="session")
def root() -> pathlib.Path:
    """The repository root (commands run from here)."""
    return ROOT


@pytest.fixture(scope="session")
def load_config():
    """``load_config(name, {"section.key": value})``: ``configs/<name>.py`` with overrides (a fresh copy)."""
    return get_config


@pytest.fixture(scope="session")
def config_path():
    """``name -> path of configs/<name>.py`` (for ``--config``)."""
    return lambda name: os.path.join(ROOT, "configs", f"{name}.py")


@pytest.fixture(scope="session")
def tiny_config():
    """A factory: ``tiny_config()`` is a fresh tiny training config (safe to modify)."""
    return make_tiny_config


@pytest.fixture(scope="session")
def tiny_flags():
    """A factory: ``tiny_flags(prefix="config")`` gives the tiny overrides as command-line flags."""
    return lambda prefix="config": override_flags(TINY_OVERRIDES, prefix)


@pytest.fixture
def network_call_shapes(monkeypatch) -> list:
    """The shapes of the image batches handed to the network (``Predictor._run``) from here on, in call order
    (the list fills as prediction runs; clear it between runs)."""
    from npejax.nn import predictor  # noqa: PLC0415  (imports JAX: only the tests that use it pay for it)

    shapes = []
    run = predictor.Predictor._run

    def spy(self, images, *args):
        shapes.append(images.shape)
        return run(self, images, *args)

    monkeypatch.setattr(predictor.Predictor, "_run", spy)
    return shapes
