"""The config's rules (npejax.configuration) and the evaluation's settings built from a config (EvalSettings):
the table of keys against configs/default.py, the upgrade of configs saved before a key existed, the one JSON
form and diff, what resuming ignores, data.simulate_workers, and where each evaluation setting comes from."""

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT, get_config

from configs import cpu_small, default
from npejax import configuration, io
from npejax.evaluation.settings import EvalSettings, EvaluationError
from npejax.nn import checkpoints

pytestmark = pytest.mark.fast  # every test here is cheap: the fast tier (python -m pytest -m fast)

EVAL_BEFORE = dict(num_bootstrap=200, num_bins=10, ceiling_galaxies=200, baseline=True, snr=True, seed=0)


def _lookup(tree: dict, dotted: str):
    for part in dotted.split("."):
        assert isinstance(tree, dict) and part in tree, f"{dotted} is not a key of configs/default.py"
        tree = tree[part]
    return tree


def test_every_rule_names_a_key_of_the_default_config():
    """KEYS cannot drift from configs/default.py: each entry is a key (or section) there, its ``before`` value of
    the key's type, and the eval section's keys are exactly those with a ``before`` value."""
    defaults = configuration.to_json(default.get_config())
    for dotted, rule in configuration.KEYS.items():
        value = _lookup(defaults, dotted)
        if rule.before is not configuration.KeyRule().before:
            assert type(rule.before) is type(value), dotted
    assert set(defaults["eval"]) == set(configuration.eval_section(None)) == set(EVAL_BEFORE)
    assert configuration.eval_section(None).to_dict() == EVAL_BEFORE
    assert configuration.RESUMABLE_KEYS[:3] == ("train.num_epochs", "train.patience", "train.progress")


def test_a_config_saved_before_the_eval_section_gets_the_values_used_then():
    saved = configuration.to_json(cpu_small.get_config())
    old = json.loads(json.dumps(saved))
    del old["eval"], old["posterior"]["decode"]
    upgraded = configuration.upgrade(old)
    assert upgraded["eval"] == EVAL_BEFORE and upgraded["posterior"]["decode"] == "tile"
    assert "eval" not in old  # the argument is left as it was
    assert configuration.upgrade(saved) == saved  # a config with every key is unchanged
    # neither key changes what an epoch computes: a resume or a checkpoint's load accepts the old config
    assert configuration.saved_differences(old, cpu_small.get_config()) == []


def test_resuming_ignores_the_resumable_keys_only():
    saved = configuration.to_json(cpu_small.get_config())
    config = cpu_small.get_config()
    config.eval.num_bootstrap, config.data.simulate_workers, config.simulator.num_workers = 7, 3, 0
    config.train.num_epochs, config.posterior.decode = 99, "tile"
    assert configuration.saved_differences(saved, config) == []
    config.train.batch_size, config.model.width = 8, 32
    assert configuration.saved_differences(saved, config) == ["model.width: 16 -> 32", "train.batch_size: 16 -> 8"]
    assert configuration.saved_differences(None, config)[0] == "data: '<absent>' -> " + repr(
        configuration.to_json(config)["data"]
    )


def test_to_json_and_differences():
    config = cpu_small.get_config()
    as_json = configuration.to_json(config)
    assert as_json == json.loads(config.to_json_best_effort()) and as_json["model"]["stages"] == [[2, 1, 2], [2, 1, 2]]
    assert configuration.to_json(config.to_dict()) == as_json  # a plain dict of it: the same JSON
    assert configuration.to_json(None) is None
    old, new = {"a": {"b": 1, "c": [1, 2]}, "d": 0}, {"a": {"b": 2, "e": "x"}, "d": 0}
    assert configuration.differences(old, new) == ["a.b: 1 -> 2", "a.c: [1, 2] -> '<absent>'", "a.e: '<absent>' -> 'x'"]
    assert configuration.differences(old, new, ignore=("a.b",)) == [
        "a.c: [1, 2] -> '<absent>'",
        "a.e: '<absent>' -> 'x'",
    ]
    assert configuration.differences(old["a"], new["a"], ignore=(), path="spec") == [
        "spec.b: 1 -> 2",
        "spec.c: [1, 2] -> '<absent>'",
        "spec.e: '<absent>' -> 'x'",
    ]


def test_simulate_workers_zero_means_no_process_as_for_the_simulator(monkeypatch):
    config = cpu_small.get_config()
    assert config.data.simulate_workers == -1  # the default: one per CPU
    monkeypatch.setattr(configuration.os, "cpu_count", lambda: 6)
    assert configuration.simulate_workers(config) == 6
    for workers in (0, 3):
        config.data.simulate_workers = workers
        assert configuration.simulate_workers(config) == workers
    config.data.simulate_workers = -2
    with pytest.raises(ValueError, match=r"data.simulate_workers=-2: must be >= 0, or -1 \(one process per CPU\)"):
        configuration.validate(config, num_devices=1)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("posterior.decode", "best", "posterior.decode must be one of ('tile', 'group'), got 'best'"),
        ("model.dtype", "float16", "model.dtype must be 'float32' or 'bfloat16', got 'float16'"),
        ("model.stem_kernel", 4, "model.stem_kernel must be an odd number >= 1, got 4"),
        ("tile_size", 2, "model stages stride 4 must equal tile_size 2"),
    ],
)
def test_model_keys_are_checked_once_for_training_and_building(key, value, message):
    config = cpu_small.get_config()
    section, _, leaf = key.rpartition(".")
    (config[section] if section else config)[leaf] = value
    for check in (lambda: configuration.validate(config, 1), lambda: configuration.check_model(config)):
        with pytest.raises(ValueError) as info:
            check()
        assert str(info.value) == message


# --- the evaluation's settings --------------------------------------------------------------------------------


@pytest.fixture
def workdir(tmp_path):
    """A training directory's config.json (no checkpoint: enough for the settings) with eval.num_bootstrap 7."""
    config = cpu_small.get_config()
    config.eval.num_bootstrap, config.simulator.num_workers = 7, 3
    path = tmp_path / "run"
    io.write_json(path / checkpoints.CONFIG_FILE, configuration.to_json(config))
    return path


def test_settings_come_from_the_first_networks_config_and_flags_override_them(workdir, tmp_path):
    s = EvalSettings.create(str(tmp_path / "r"), workdirs={"a": str(workdir)}, test_dir=str(tmp_path / "t"))
    assert (s.num_bootstrap, s.num_bins, s.ceiling_galaxies, s.num_workers) == (7, 10, 200, 3)
    assert s.sim_config.eval.num_bootstrap == 7 and s.test_path == str(tmp_path / "t") and s.ceiling
    s = EvalSettings.create(
        str(tmp_path / "r"), workdirs={"a": str(workdir)}, num_images=4, num_bootstrap=5, num_workers=0, snr=False
    )
    assert (s.num_bootstrap, s.num_workers, s.snr, s.baseline) == (5, 0, False, True)
    assert s.test_path == str(tmp_path / "r" / "test-many")
    # a config given wins over the network's: configs/default.py's values
    s = EvalSettings.create(str(tmp_path / "r"), default.get_config(), workdirs={"a": str(workdir)}, num_images=4)
    assert (s.num_bootstrap, s.num_workers) == (200, 2)
    with pytest.raises(TypeError, match="unknown evaluation settings"):
        EvalSettings.create(str(tmp_path / "r"), workdirs={"a": str(workdir)}, num_images=4, bootstraps=5)


def test_settings_of_an_old_workdir_and_of_catalogs_alone(workdir, tmp_path):
    saved = json.loads((workdir / checkpoints.CONFIG_FILE).read_text())
    del saved["eval"]  # a workdir trained before the eval section existed
    (workdir / checkpoints.CONFIG_FILE).write_text(json.dumps(saved))
    s = EvalSettings.create(str(tmp_path / "r"), workdirs={"a": str(workdir)}, test_dir=str(tmp_path / "t"))
    assert {k: getattr(s, k) for k in EVAL_BEFORE} == EVAL_BEFORE
    s = EvalSettings.create(str(tmp_path / "r"), catalogs={"mine": "mine.fits"}, test_dir=str(tmp_path / "t"))
    assert {k: getattr(s, k) for k in EVAL_BEFORE} == EVAL_BEFORE and s.sim_config is None and s.num_workers is None


def test_bad_settings_are_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "r"
    cases = [
        (dict(baseline=False), "nothing to evaluate"),
        (dict(catalogs={"sep": "x.fits"}, test_dir="t"), "method names must be unique and not 'sep' or 'ceiling'"),
        (dict(catalogs={"a": "x.fits"}, test_dir="t", num_bins=0), "eval.num_bins must be >= 1, got 0"),
        (dict(workdirs={"a": str(tmp_path / "none")}, num_images=4), f"--workdir a={tmp_path / 'none'}: no such"),
        (dict(catalogs={"a": "x.fits"}), "give --num-images N (simulate a test set) or --test-dir DATASET"),
        (dict(catalogs={"a": "x.fits"}, num_images=0), "--num-images must be >= 1, got 0"),
    ]
    for kwargs, message in cases:
        with pytest.raises(EvaluationError) as info:
            EvalSettings.create(str(out), **kwargs)
        assert message in str(info.value)
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="--out .*file is an existing file"):
        EvalSettings.create(str(tmp_path / "file"), catalogs={"a": "x.fits"}, test_dir="t")
    assert not out.exists() and os.listdir(tmp_path) == ["file"]


@pytest.mark.fast
def test_from_file_reads_a_config_file_from_any_directory(tmp_path):
    """configs/cpu.py imports its siblings (``from configs import ...``): from_file reads it by path from a folder
    where ``configs`` is not importable, applies the overrides, and names the file on a bad key or a missing file."""
    code = (
        "from npejax import configuration\n"
        f"c = configuration.from_file({str(ROOT / 'configs' / 'cpu.py')!r}, {{'train.batch_size': 8}})\n"
        "print(c.model.width, c.train.batch_size, c.fields.prior)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    reference = get_config("cpu")
    assert done.stdout.split() == [str(reference.model.width), "8", reference.fields.prior]
    with pytest.raises(ValueError, match=r"cpu\.py.*'train\.nope'"):
        configuration.from_file(ROOT / "configs" / "cpu.py", {"train.nope": 1})
    with pytest.raises(FileNotFoundError, match="missing.py"):
        configuration.from_file(tmp_path / "missing.py")
    (tmp_path / "empty.py").write_text("x = 1\n")
    with pytest.raises(ValueError, match="get_config"):
        configuration.from_file(tmp_path / "empty.py")
