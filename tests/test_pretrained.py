"""Pretrained networks (npejax.nn.pretrained): a tiny network exported from its checkpoint predicts bit for bit
as the checkpoint does (Python, npejax.predict, npejax.evaluate), the file's SHA-256 is checked on every load,
unknown names and flag mistakes are one clear error; and every network shipped with the package loads and
catalogs a simulated image plausibly."""

import json
import os
import shutil

import jax
import numpy as np
import pytest
from astropy.io import fits
from conftest import assert_one_error, one_error_line

from npejax import catalogs as catalog_lib
from npejax import datasets as data_lib
from npejax import export_pretrained, predict, simulate, survey
from npejax.evaluation import evaluate as evaluate_lib
from npejax.evaluation.settings import EvalSettings
from npejax.nn import checkpoints, predictor, train
from npejax.nn import pretrained as pretrained_lib
from npejax.sim import pipeline


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_config):
    """A tiny network trained 2 epochs with parameter averaging (prediction uses the averages), exported as
    ``tiny`` into its own registry directory, and a cached test set of 6 images."""
    root = tmp_path_factory.mktemp("pretrained")
    config = tiny_config()
    config.train.ema_decay = 0.9
    train.train_and_evaluate(config, str(root / "run"))
    entry = pretrained_lib.export(str(root / "run"), "tiny", directory=root / "nets", config_name="tiny")
    spec = pipeline.SimulationSpec.from_config(config, seed=5, batch_size=6)
    data_lib.write_dataset(spec, root / "test", 6, "test", num_workers=0, progress=False)
    return root, entry


@pytest.fixture
def shipped_here(exported, monkeypatch):
    """The commands see the tiny network's registry as the package's."""
    root, _ = exported
    monkeypatch.setattr(pretrained_lib, "package_directory", lambda: str(root / "nets"))
    return root


def _arrays(root):
    return data_lib.load(root / "test")[np.arange(6)]


def test_the_file_holds_what_prediction_restores_and_predicts_bit_for_bit(exported):
    root, entry = exported
    from_ckpt = predictor.Predictor.from_workdir(str(root / "run"))
    shipped = predictor.Predictor.pretrained("tiny", root / "nets")
    config, variables, normalizer = checkpoints.load_network(str(root / "run"))
    leaves = jax.tree_util.tree_leaves_with_path(variables)
    got = dict(jax.tree_util.tree_leaves_with_path(shipped.variables))
    assert len(got) == len(leaves) > 0
    for path, leaf in leaves:
        assert got[path].dtype == np.float32 and np.array_equal(np.asarray(got[path]), np.asarray(leaf)), path
    assert shipped.normalizer == normalizer
    assert shipped.config.to_json_best_effort() == config.to_json_best_effort()
    assert "pretrained network tiny" in shipped.source and "tiny.npz" in shipped.source

    arrays = _arrays(root)
    inputs = (arrays["images"], arrays["background"], arrays["psf_params"])
    a, b = from_ckpt.predict_tiles(*inputs), shipped.predict_tiles(*inputs)
    assert set(a) == set(b)
    for key in a:
        assert np.array_equal(a[key], b[key]), key  # bit-identical, not merely close

    assert entry["file"] == "tiny.npz" and entry["card"] == "tiny.md" and entry["config"] == "tiny"
    assert entry["variant"] == config.model.variant
    assert entry["parameters"] == sum(int(x.size) for x in jax.tree_util.tree_leaves(variables["params"]))
    assert entry["bytes"] == os.path.getsize(root / "nets" / "tiny.npz")
    training = entry["training"]
    assert training["checkpoint"] == "best" and training["steps"] == 2 * training["epoch"]  # 2 steps of 8 an epoch
    assert training["images"] == 16 * training["epoch"] and training["data"] == "simulated on the fly"
    with np.load(root / "nets" / "tiny.npz", allow_pickle=False) as f:  # a plain .npz without pickles
        meta = json.loads(str(f["meta"][()]))
        assert meta["normalizer"] == json.loads(json.dumps(normalizer.to_dict()))
        assert meta["config"]["model"]["width"] == config.model.width
        assert all(f[k].dtype == np.float32 for k in f.files if k.startswith("variables/"))
    registry = json.loads((root / "nets" / "registry.json").read_text())
    assert registry["networks"]["tiny"]["sha256"] == entry["sha256"]


def test_the_exporter_command_writes_the_same_bytes_again(exported, tmp_path, capsys):
    root, entry = exported
    out = tmp_path / "again"
    code = export_pretrained.main(
        ["npejax.export_pretrained", "--workdir", str(root / "run"), "--name", "tiny", "--out", str(out)]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert pretrained_lib.read_registry(out)["tiny"]["sha256"] == entry["sha256"]  # reproducible, byte for byte
    assert entry["sha256"] in printed and '"parameters"' in printed and "tiny.md does not exist yet" in printed
    assert export_pretrained.main(["x", "--workdir", str(root / "run"), "--name", "../up", "--out", str(out)]) == 2
    assert "--name" in one_error_line(capsys.readouterr().err)
    assert export_pretrained.main(["x", "--workdir", str(tmp_path / "none"), "--name", "t", "--out", str(out)]) == 2
    assert "does not exist" in one_error_line(capsys.readouterr().err)


def test_a_file_that_differs_from_its_registry_digest_is_refused(exported, tmp_path):
    root, entry = exported
    nets = tmp_path / "nets"
    shutil.copytree(root / "nets", nets)
    path = nets / "tiny.npz"
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF  # one byte of the last array
    path.write_bytes(bytes(data))
    found = pretrained_lib.io.sha256_file(path)
    with pytest.raises(pretrained_lib.PretrainedError) as err:
        predictor.Predictor.pretrained("tiny", nets)
    text = str(err.value)
    assert str(path) in text and entry["sha256"] in text and found in text
    path.unlink()
    with pytest.raises(pretrained_lib.PretrainedError, match="tiny.npz does not exist"):
        pretrained_lib.load("tiny", nets)


def test_a_file_of_another_network_or_format_is_refused(exported, tmp_path):
    root, _ = exported
    with np.load(root / "nets" / "tiny.npz", allow_pickle=False) as f:
        members = {k: f[k] for k in f.files}
    meta = json.loads(str(members["meta"][()]))
    meta["config"]["model"]["width"] += 1  # the arrays are of the width-4 network
    np.savez(tmp_path / "wide.npz", **(members | {"meta": np.array(json.dumps(meta))}))
    with pytest.raises(
        pretrained_lib.PretrainedError, match="do not match the config's network: .* has shape|is float32"
    ):
        pretrained_lib.read_network(tmp_path / "wide.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(pretrained_lib.PretrainedError, match="junk.npz is not a readable .npz"):
        pretrained_lib.read_network(tmp_path / "junk.npz")
    np.savez(tmp_path / "bank.npz", psf_params=np.zeros((2, 6)))
    with pytest.raises(pretrained_lib.PretrainedError, match="bank.npz is not an npejax pretrained network"):
        pretrained_lib.read_network(tmp_path / "bank.npz")
    meta["version"] = 99
    np.savez(tmp_path / "new.npz", **(members | {"meta": np.array(json.dumps(meta))}))
    with pytest.raises(pretrained_lib.PretrainedError, match="version 99; this npejax reads version 1"):
        pretrained_lib.read_network(tmp_path / "new.npz")


def test_an_unknown_name_lists_the_available_ones(exported, tmp_path):
    root, _ = exported
    with pytest.raises(pretrained_lib.PretrainedError, match=r"no pretrained network named 'nope' .*available: tiny$"):
        predictor.Predictor.pretrained("nope", root / "nets")
    with pytest.raises(pretrained_lib.PretrainedError, match="available: none"):
        pretrained_lib.load("tiny", tmp_path)  # a directory without a registry
    assert pretrained_lib.available(root / "nets") == ["tiny"]


def test_a_networks_calibrated_quality_thresholds_travel_with_it(exported, tmp_path, monkeypatch, capsys):
    """``export_pretrained --quality-thresholds`` records them in the entry (the file unchanged); the predictor
    carries them and the commands' quality flag uses them (``QTHR*``, ``QTHRSRC``); bad values are refused."""
    root, entry = exported
    out = tmp_path / "calibrated"
    argv = ["npejax.export_pretrained", "--workdir", str(root / "run"), "--name", "tiny", "--out", str(out)]
    assert export_pretrained.main([*argv, "--quality-thresholds", "50,4.5,0.2"]) == 0, capsys.readouterr()
    capsys.readouterr()
    expected = {"detection": 50.0, "image": 4.5, "flux_ratio": 0.2}
    got = pretrained_lib.read_registry(out)["tiny"]
    assert got["quality_thresholds"] == expected and got["sha256"] == entry["sha256"]  # the same file
    assert predictor.Predictor.pretrained("tiny", out).quality_thresholds == expected
    assert predictor.Predictor.pretrained("tiny", root / "nets").quality_thresholds is None  # none recorded

    for name, directory in (("calibrated", out), ("package", root / "nets")):
        monkeypatch.setattr(pretrained_lib, "package_directory", lambda d=directory: str(d))
        path = tmp_path / f"{name}.fits"
        code = predict.main(
            ["npejax.predict", "--pretrained", "tiny", "--input", str(root / "test"), "--out", str(path)]
        )
        assert code == 0, capsys.readouterr()
        header = fits.getheader(path, 1)
        if name == "calibrated":
            assert (header["QTHRDET"], header["QTHRIMG"], header["QTHRRAT"]) == (50.0, 4.5, 0.2)
            assert header["QTHRSRC"] == "network"
        else:
            assert header["QTHRDET"] == 14.7 and header["QTHRSRC"].startswith("package")
    capsys.readouterr()

    for bad in ("1,2", "0,1,0.5", "1,2,1.5", "a,b,c", "1,nan,0.2"):
        code = export_pretrained.main([*argv[:-2], "--out", str(tmp_path / "bad"), "--quality-thresholds", bad])
        assert code == 2 and "--quality-thresholds" in one_error_line(capsys.readouterr().err), bad
        assert not (tmp_path / "bad").exists()

    registry = json.loads((out / "registry.json").read_text())
    registry["networks"]["tiny"]["quality_thresholds"] = {"detection": -1.0, "image": 4.5, "flux_ratio": 0.2}
    (out / "registry.json").write_text(json.dumps(registry))
    with pytest.raises(pretrained_lib.PretrainedError, match="network 'tiny', quality_thresholds"):
        predictor.Predictor.pretrained("tiny", out)


def test_predict_pretrained_catalogs_like_the_checkpoint(shipped_here, capsys):
    root = shipped_here
    for name, args in (("ckpt", ["--workdir", root / "run"]), ("shipped", ["--pretrained", "tiny"])):
        argv = ["npejax.predict", *args, "--input", root / "test", "--out", root / f"{name}.fits", "--min-prob", "0"]
        assert predict.main([str(a) for a in argv]) == 0, capsys.readouterr()
    capsys.readouterr()
    a, b = catalog_lib.read_table(root / "ckpt.fits"), catalog_lib.read_table(root / "shipped.fits")
    assert a.colnames == b.colnames and len(a) == len(b) == 6 * 20 * 20
    for column in a.colnames:  # (the quality flag's statistics are NaN below prob_source 0.5: NaN equals NaN)
        np.testing.assert_array_equal(np.asarray(a[column]), np.asarray(b[column]), err_msg=column)


def test_the_readme_fits_example_with_a_pretrained_network(shipped_here, config_path, tiny_flags, capsys):
    """``npejax.simulate ... --fits`` writes a FITS image and its sky; ``npejax.predict --pretrained`` catalogs
    it as the network catalogs the dataset's image."""
    root = shipped_here
    demo = root / "demo"
    argv = ["npejax.simulate", "--config", config_path("cpu_small"), *tiny_flags(), "--split", "test"]
    argv += ["--num-images", "1", "--out", str(demo), "--fits", str(demo / "image.fits"), "--progress=false"]
    assert simulate.main(argv) == 0, capsys.readouterr()
    printed = capsys.readouterr().out
    field = fits.getheader(demo / "image.fits")["FIELDID"]
    command = f"--input {demo / 'image.fits'} --background {demo / 'image-sky.fits'} --field-id {field}"
    assert command in printed
    item = data_lib.load(demo)[0]
    assert np.array_equal(fits.getdata(demo / "image.fits"), item["images"])
    assert np.array_equal(fits.getdata(demo / "image-sky.fits"), item["background"])
    assert [fits.getheader(demo / "image.fits")[f"PSF_{k}"] for k in ("S1", "S2", "SP", "BETA", "B", "P0")] == [
        float(v) for v in item["psf_params"]
    ]
    out = demo / "catalog.csv"
    assert predict.main(["npejax.predict", "--pretrained", "tiny", *command.split(), "--out", str(out)]) == 0
    assert f"sources in 1 images -> {out}" in capsys.readouterr().out
    net = predictor.Predictor.pretrained("tiny")
    expected = net.catalog(item["images"][None], item["background"][None], item["psf_params"][None])
    got = catalog_lib.read_table(out)
    assert len(got) == len(expected)
    for column in expected.colnames:
        np.testing.assert_allclose(np.asarray(got[column], float), np.asarray(expected[column], float), rtol=1e-6)


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--workdir", "W", "--pretrained", "tiny"], "give one of --workdir"),
        (
            [],
            "give one of --workdir (a training directory) and --pretrained (a network shipped with the package: tiny)",
        ),
        (["--pretrained", "tiny", "--checkpoint", "latest"], "--checkpoint chooses a checkpoint of --workdir"),
        (["--pretrained", "nope"], "no pretrained network named 'nope'"),
    ],
)
def test_network_flags_of_predict_and_survey(shipped_here, capsys, args, fragment):
    root = shipped_here
    code = predict.main(["npejax.predict", *args, "--input", str(root / "test"), "--out", str(root / "x.fits")])
    assert_one_error(code, *capsys.readouterr(), fragment)
    frames = root / "frames.txt"
    frames.write_text("image.fits background=0.7 field-id=synthetic-0001\n")
    code = survey.main(["catalog", *args, "--frames", str(frames), "--out", str(root / "survey")])
    assert_one_error(code, *capsys.readouterr(), fragment)
    assert not os.path.exists(root / "x.fits") and not os.path.exists(root / "survey")


def test_survey_catalog_with_a_pretrained_network(shipped_here, capsys):
    root = shipped_here
    item = _arrays(root)
    fits.PrimaryHDU(item["images"][0]).writeto(root / "f0.fits", overwrite=True)
    fits.PrimaryHDU(item["background"][0]).writeto(root / "f0-sky.fits", overwrite=True)
    psf = ",".join(repr(float(v)) for v in item["psf_params"][0])
    (root / "frames.txt").write_text(f"f0.fits background=f0-sky.fits psf-params={psf}\n")
    out = root / "survey-ok"
    code = survey.main(["catalog", "--pretrained", "tiny", "--frames", str(root / "frames.txt"), "--out", str(out)])
    assert code == 0, capsys.readouterr()
    got = catalog_lib.read_table(out / "catalogs" / "f0.fits")
    expected = predictor.Predictor.from_workdir(str(root / "run")).catalog(
        item["images"][:1], item["background"][:1], item["psf_params"][:1]
    )
    assert len(got) == len(expected)
    for column in ("x", "y", "flux", "prob_source"):
        np.testing.assert_allclose(np.asarray(got[column], float), np.asarray(expected[column], float), rtol=1e-6)


def test_evaluate_a_pretrained_network_beside_its_checkpoint(shipped_here, tmp_path):
    root = shipped_here
    kwargs = dict(
        test_dir=str(root / "test"), baseline=False, snr=False, ceiling_galaxies=0, num_bootstrap=5, progress=False
    )

    def settings(out, workdirs, pretrained):
        return EvalSettings.create(str(tmp_path / out), workdirs=workdirs, pretrained=pretrained, **kwargs)

    results = evaluate_lib.evaluate(settings("report", {"ckpt": str(root / "run")}, ["tiny"]))
    a, b = results["methods"]["ckpt"], results["methods"]["tiny"]
    assert json.dumps(a, default=str, sort_keys=True) == json.dumps(b, default=str, sort_keys=True)
    assert results["pretrained"]["tiny"]["file"] == "tiny.npz"
    with pytest.raises(evaluate_lib.EvaluationError, match="must be unique"):
        settings("r2", {"tiny": str(root / "run")}, ["tiny"])
    with pytest.raises(pretrained_lib.PretrainedError, match="available: tiny"):
        settings("r3", {}, ["nope"])


# --- the networks shipped with the package --------------------------------------------------------------


@pytest.mark.fast
@pytest.mark.parametrize("name", pretrained_lib.available())
def test_a_shipped_network_loads_and_catalogs_a_simulated_image(name):
    entry = pretrained_lib.entry(name)
    directory = pretrained_lib.package_directory()
    assert os.path.isfile(os.path.join(directory, entry["card"])), f"{name}: no model card {entry['card']}"
    assert pretrained_lib.io.sha256_file(os.path.join(directory, entry["file"])) == entry["sha256"]
    net = predictor.Predictor.pretrained(name)  # the digest checked again by the load
    assert entry["parameters"] == sum(int(x.size) for x in jax.tree_util.tree_leaves(net.variables["params"]))
    config = net.config.copy_and_resolve_references()
    for artifact in config.get("artifacts", {}).values():  # clean images: a saturated star is not found to a pixel
        artifact.enabled = False
    spec = pipeline.SimulationSpec.from_config(config, seed=123, batch_size=8)
    batch = pipeline.simulate_batch(spec, 0)  # 8 images, 33 sources of which 9 with r < 20 (cpu)
    table = net.catalog(batch["images"], batch["background"], batch["psf_params"])
    truth = catalog_lib.truth_table(batch)
    for column in ("x", "y", "flux", "prob_source", "prob_galaxy"):
        assert np.all(np.isfinite(np.asarray(table[column], float))), column
    assert np.all(np.asarray(table["prob_source"]) > 0.5) and np.all(np.asarray(table["flux"]) > 0)
    x, y, image = (np.asarray(truth[k]) for k in ("x", "y", "image"))
    apart = np.hypot(x[:, None] - x[None], y[:, None] - y[None]) + np.where(image[:, None] == image[None], 0, 1e9)
    isolated = np.sort(apart, axis=1)[:, 1] > 6.0  # a pair closer than 6 px is a blend, caught as one source or two
    bright = truth[(np.asarray(truth["mag"]) < 20) & isolated]
    assert len(bright) >= 5  # the seed's images hold bright sources: the check below is not empty
    for row in bright:  # every isolated bright source is found within a pixel, its magnitude within 1 (not a unit)
        mine = table[table["image"] == row["image"]]
        distance = np.hypot(np.asarray(mine["x"]) - row["x"], np.asarray(mine["y"]) - row["y"])
        where = f"{name}: r = {row['mag']:.2f} source at {row['x']:.1f}, {row['y']:.1f} of image {row['image']}"
        assert distance.size and distance.min() < 1.0, where
        assert abs(mine["mag"][np.argmin(distance)] - row["mag"]) < 1.0, where
    assert len(table) <= len(truth) + 4  # no more than a few spurious detections


def test_simulate_fits_takes_a_fits_name(config_path, tmp_path, capsys):
    argv = ["npejax.simulate", "--config", config_path("cpu_small"), "--split", "test", "--out", str(tmp_path / "d")]
    assert simulate.main([*argv, "--fits", str(tmp_path / "image.png")]) == 2
    assert "--fits" in one_error_line(capsys.readouterr().err) and not os.path.exists(tmp_path / "d")
