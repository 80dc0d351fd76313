"""A corpus of bad inputs and faults run through the real commands (each command's ``main(argv)``).

For every case: exit status 2, a message of at most 3 lines on stderr that names the bad value (the
``fragment``), no traceback, and no output file written or changed (the paths a case could write are
fingerprinted before and after). With ``NPEJAX_CORPUS_TABLE=FILE`` set, each case appends a markdown row
(case, exit status, the message) to FILE.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io as io_lib
import os
import shutil

import numpy as np
import pytest
from astropy.io import fits

from npejax import catalogs, datasets
from npejax.nn import train
from npejax.sim import pipeline

pytestmark = pytest.mark.fast  # the whole file is in the fast tier

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CONFIG = os.path.join(ROOT, "configs", "cpu_small.py")
EXPERIMENT = os.path.join(ROOT, "configs", "experiment_cpu.py")
PSF = "1.3,3.9,1.2,3.0,0.03,0.13"

# (id, command, argv after the command name with {placeholders}, message fragment, outputs that must not appear/change)
CASES = [
    # --- training (npejax.main) ---
    (
        "train-unknown-key",
        "main",
        "--config {config} --workdir {new}/w --config.no_such_key=1",
        "no_such_key",
        ["{new}/w"],
    ),
    (
        "train-bad-variant",
        "main",
        "--config {config} --workdir {new}/w --config.model.variant=psf_maybe",
        "psf_maybe",
        ["{new}/w"],
    ),
    (
        "train-bad-dtype",
        "main",
        "--config {config} --workdir {new}/w --config.model.dtype=float16",
        "float16",
        ["{new}/w"],
    ),
    (
        "train-batch-zero",
        "main",
        "--config {config} --workdir {new}/w --config.train.batch_size=0",
        "batch_size",
        ["{new}/w"],
    ),
    (
        "train-epoch-zero-images",
        "main",
        "--config {config} --workdir {new}/w --config.train.images_per_epoch=0",
        "images_per_epoch",
        ["{new}/w"],
    ),
    (
        "train-eval-batch-too-big",
        "main",
        "--config {config} --workdir {new}/w --config.data.num_val=16 --config.train.eval_batch_size=64",
        "eval_batch_size",
        ["{new}/w"],
    ),
    ("train-missing-config", "main", "--config {new}/absent.py --workdir {new}/w", "absent.py", ["{new}/w"]),
    ("train-unknown-flag", "main", "--config {config} --workdir {new}/w --epochs=3", "epochs", ["{new}/w"]),
    (
        "train-missing-train-dir",
        "main",
        "--config {config} --workdir {new}/w --config.data.train_dir={new}/nodata --config.data.val_dir={val}",
        "nodata",
        ["{new}/w"],
    ),
    (
        "train-test-split-as-train",
        "main",
        "--config {config} --workdir {new}/w --config.data.train_dir={test} --config.data.val_dir={val}",
        "split",
        ["{new}/w"],
    ),
    (
        "train-zero-epochs",
        "main",
        "--config {config} --workdir {new}/w --config.train.num_epochs=0",
        "num_epochs",
        ["{new}/w"],
    ),
    (
        "train-bad-field-prior",
        "main",
        "--config {config} --workdir {new}/w --config.fields.prior=all",
        "all",
        ["{new}/w"],
    ),
    ("train-workdir-under-file", "main", "--config {config} --workdir {file}/w", "{file}", ["{file}"]),
    (
        "train-resume-other-variant",
        "main",
        "--config {config} --workdir {run} --config.model.variant=psf_unaware {tiny}",
        "model.variant",
        ["{run}"],
    ),
    (
        "train-resume-other-width",
        "main",
        "--config {config} --workdir {run} {tiny} --config.model.width=8",
        "model.width",
        ["{run}"],
    ),
    # --- simulation (npejax.simulate) ---
    ("simulate-bad-split", "simulate", "--config {config} --split holdout --out {new}/d", "holdout", ["{new}/d"]),
    (
        "simulate-zero-images",
        "simulate",
        "--config {config} --split val --out {new}/d --num-images 0",
        "0",
        ["{new}/d"],
    ),
    (
        "simulate-negative-workers",
        "simulate",
        "--config {config} --split val --out {new}/d --num-workers -1",
        "-1",
        ["{new}/d"],
    ),
    ("simulate-zero-shard", "simulate", "--config {config} --split val --out {new}/d --shard-size 0", "0", ["{new}/d"]),
    (
        "simulate-catalog-extension",
        "simulate",
        "--config {config} --split val --out {new}/d --catalog {new}/t.txt",
        ".txt",
        ["{new}/d", "{new}/t.txt"],
    ),
    (
        "simulate-out-under-file",
        "simulate",
        "--config {config} --split val --num-images 4 --num-workers 0 --out {file}/d",
        "{file}",
        ["{file}"],
    ),
    (
        "simulate-out-in-proc",
        "simulate",
        "--config {config} --split val --num-images 4 --num-workers 0 --out /proc/npejax-d",
        "/proc/npejax-d",
        [],
    ),
    ("simulate-missing-out", "simulate", "--config {config} --split val", "out", []),
    (
        "simulate-missing-bank",
        "simulate",
        "--config {config} --split val --num-images 4 --num-workers 0 --out {new}/d "
        "--config.fields.bank={new}/bank.npz",
        "bank.npz",
        ["{new}/d"],
    ),
    (
        "simulate-image-larger-than-frame",
        "simulate",
        "--config {config} --split val --num-images 1 --num-workers 0 --out {new}/d --config.image_size=4000",
        "4000",
        ["{new}/d"],
    ),
    (
        "simulate-other-dataset-in-dir",
        "simulate",
        "--config {config} --split val --num-images 4 --num-workers 0 --out {test}",
        "split",
        ["{test}"],
    ),
    # --- prediction (npejax.predict) ---
    (
        "predict-missing-workdir",
        "predict",
        "--workdir {new}/nowork --input {test} --out {new}/c.fits",
        "nowork",
        ["{new}/c.fits"],
    ),
    (
        "predict-foreign-workdir",
        "predict",
        "--workdir {test} --input {test} --out {new}/c.fits",
        "{test}",
        ["{new}/c.fits"],
    ),
    (
        "predict-missing-input",
        "predict",
        "--workdir {run} --input {new}/none.npz --out {new}/c.fits",
        "none.npz",
        ["{new}/c.fits"],
    ),
    (
        "predict-input-extension",
        "predict",
        "--workdir {run} --input {file} --out {new}/c.fits",
        "{file}",
        ["{new}/c.fits"],
    ),
    (
        "predict-truncated-fits",
        "predict",
        "--workdir {run} --input {truncated_fits} --background 0.5 --psf-params " + PSF + " --out {new}/c.fits",
        "truncated.fits",
        ["{new}/c.fits"],
    ),
    (
        "predict-truncated-npz",
        "predict",
        "--workdir {run} --input {truncated_npz} --out {new}/c.fits",
        "truncated.npz",
        ["{new}/c.fits"],
    ),
    (
        "predict-npz-without-arrays",
        "predict",
        "--workdir {run} --input {empty_npz} --out {new}/c.fits",
        "images",
        ["{new}/c.fits"],
    ),
    (
        "predict-fits-without-background",
        "predict",
        "--workdir {run} --input {image_fits} --psf-params " + PSF + " --out {new}/c.fits",
        "--background",
        ["{new}/c.fits"],
    ),
    (
        "predict-background-zero",
        "predict",
        "--workdir {run} --input {image_fits} --background 0 --psf-params " + PSF + " --out {new}/c.fits",
        "background",
        ["{new}/c.fits"],
    ),
    (
        "predict-background-huge",
        "predict",
        "--workdir {run} --input {image_fits} --background 1e30 --psf-params " + PSF + " --out {new}/c.fits",
        "background",
        ["{new}/c.fits"],
    ),
    (
        "predict-min-prob-nan",
        "predict",
        "--workdir {run} --input {test} --min-prob nan --out {new}/c.fits",
        "nan",
        ["{new}/c.fits"],
    ),
    (
        "predict-min-prob-above-one",
        "predict",
        "--workdir {run} --input {test} --min-prob 1.5 --out {new}/c.fits",
        "1.5",
        ["{new}/c.fits"],
    ),
    (
        "predict-batch-zero",
        "predict",
        "--workdir {run} --input {test} --batch-size 0 --out {new}/c.fits",
        "0",
        ["{new}/c.fits"],
    ),
    (
        "predict-batch-negative",
        "predict",
        "--workdir {run} --input {test} --batch-size -1 --out {new}/c.fits",
        "-1",
        ["{new}/c.fits"],
    ),
    ("predict-out-under-file", "predict", "--workdir {run} --input {test} --out {file}/c.fits", "{file}", ["{file}"]),
    ("predict-out-extension", "predict", "--workdir {run} --input {test} --out {new}/c.txt", ".txt", ["{new}/c.txt"]),
    (
        "predict-negative-psf-width",
        "predict",
        "--workdir {run} --input {image_fits} --background 0.5 "
        "--psf-params -1,3.9,1.2,3.0,0.03,0.13 --out {new}/c.fits",
        "psf",
        ["{new}/c.fits"],
    ),
    (
        "predict-five-psf-params",
        "predict",
        "--workdir {run} --input {image_fits} --background 0.5 --psf-params 1.3,3.9,1.2,3.0,0.03 --out {new}/c.fits",
        "1.3,3.9,1.2,3.0,0.03",
        ["{new}/c.fits"],
    ),
    (
        "predict-unknown-field",
        "predict",
        "--workdir {run} --input {image_fits} --background 0.5 --field-id 9-9-9 --out {new}/c.fits",
        "9-9-9",
        ["{new}/c.fits"],
    ),
    (
        "predict-damaged-checkpoint",
        "predict",
        "--workdir {damaged} --input {test} --out {new}/c.fits",
        "damaged",
        ["{new}/c.fits"],
    ),
    (
        "predict-chunk-too-small",
        "predict",
        "--workdir {run} --input {test} --chunk-size 8 --out {new}/c.fits",
        "--chunk-size 8",
        ["{new}/c.fits"],
    ),
    (
        "predict-existing-catalog-kept",
        "predict",
        "--workdir {run} --input {test} --min-prob -3 --out {catalog}",
        "-3",
        ["{catalog}"],
    ),
    # --- evaluation (npejax.evaluate) ---
    (
        "evaluate-workdir-without-path",
        "evaluate",
        "--workdir aware= --test-dir {test} --out {new}/r",
        "NAME=PATH or PATH",
        ["{new}/r"],
    ),
    (
        "evaluate-missing-workdir",
        "evaluate",
        "--workdir a={new}/nowork --test-dir {test} --out {new}/r",
        "nowork",
        ["{new}/r"],
    ),
    ("evaluate-no-test-set", "evaluate", "--workdir a={run} --out {new}/r", "--test-dir", ["{new}/r"]),
    ("evaluate-zero-images", "evaluate", "--workdir a={run} --num-images 0 --out {new}/r", "0", ["{new}/r"]),
    (
        "evaluate-bad-prior",
        "evaluate",
        "--workdir a={run} --num-images 4 --prior few --out {new}/r",
        "few",
        ["{new}/r"],
    ),
    (
        "evaluate-train-split-as-test",
        "evaluate",
        "--catalog a={catalog} --test-dir {val} --nobaseline --out {new}/r",
        "split",
        ["{new}/r"],
    ),
    (
        "evaluate-catalog-without-image",
        "evaluate",
        "--catalog a={no_image_csv} --test-dir {test} --nobaseline --out {new}/r",
        "image",
        ["{new}/r"],
    ),
    (
        "evaluate-catalog-text-x",
        "evaluate",
        "--catalog a={text_x_csv} --test-dir {test} --nobaseline --out {new}/r",
        "x",
        ["{new}/r"],
    ),
    (
        "evaluate-catalog-prob-five",
        "evaluate",
        "--catalog a={prob5_csv} --test-dir {test} --nobaseline --out {new}/r",
        "prob_source",
        ["{new}/r"],
    ),
    (
        "evaluate-catalog-negative-image",
        "evaluate",
        "--catalog a={negative_image_csv} --test-dir {test} --nobaseline --out {new}/r",
        "-1",
        ["{new}/r"],
    ),
    (
        "evaluate-out-is-a-file",
        "evaluate",
        "--catalog a={catalog} --test-dir {test} --nobaseline --out {file}",
        "{file}",
        ["{file}"],
    ),
    (
        "evaluate-same-name-twice",
        "evaluate",
        "--catalog a={catalog} --catalog a={catalog} --test-dir {test} --nobaseline --out {new}/r",
        "a",
        ["{new}/r"],
    ),
    # --- experiment, survey files, bank ---
    (
        "experiment-unknown-network",
        "experiment",
        "--config {experiment} --out {new}/e --config.networks=aware,best",
        "best",
        ["{new}/e"],
    ),
    ("sdss-no-subcommand", "sdss", "", "download", []),
    ("sdss-missing-folder", "sdss", "build-bank --dir {new}/nosdss --out {new}/b.npz", "nosdss", ["{new}/b.npz"]),
    ("sdss-missing-fields-file", "sdss", "download --fields {new}/fields.txt --out {new}/s", "fields.txt", ["{new}/s"]),
    ("sdss-bad-grid", "sdss", "build-bank --dir {new} --out {new}/b.npz --grid 12by16", "12by16", ["{new}/b.npz"]),
    ("bank-zero-fields", "synthetic_bank", "--out {new}/bank.npz --num-fields 0", "0", ["{new}/bank.npz"]),
    # --- field bank that spans the survey ---
    ("bank-unknown-kind", "synthetic_bank", "--out {new}/bank.npz --bank real", "real", ["{new}/bank.npz"]),
    (
        "bank-survey-zero-fields",
        "synthetic_bank",
        "--out {new}/b.npz --bank survey --num-fields 0",
        "0",
        ["{new}/b.npz"],
    ),
]


@pytest.fixture(scope="module")
def paths(tmp_path_factory, tiny_config, tiny_flags):
    """Fixtures the cases point at: a tiny trained workdir, cached test/val sets, good and bad input files."""
    root = tmp_path_factory.mktemp("bad")
    config = tiny_config()
    config.train.num_epochs = 1
    train.train_and_evaluate(config, str(root / "run"))
    spec = pipeline.SimulationSpec.from_config(config, seed=5, batch_size=4)
    datasets.write_dataset(spec, root / "test", 4, "test", config=config, num_workers=0, progress=False)
    datasets.write_dataset(spec, root / "val", 4, "val", config=config, num_workers=0, progress=False)
    test = datasets.load(root / "test")[np.arange(4)]
    shutil.copytree(root / "run", root / "damaged")  # one byte flipped in the best checkpoint's arrays
    victim = max(
        (
            os.path.join(d, n)
            for d, _, names in os.walk(root / "damaged" / "checkpoints" / "best")
            for n in names
            if "state" in d
        ),
        key=os.path.getsize,
    )
    with open(victim, "r+b") as f:
        f.seek(os.path.getsize(victim) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    p = {k: str(root / k) for k in ("run", "test", "val", "damaged")}
    p.update(config=CONFIG, experiment=EXPERIMENT, tiny=tiny_flags(), new=str(root / "new"))
    os.makedirs(p["new"])
    p["file"] = str(root / "plain.txt")
    with open(p["file"], "w") as f:
        f.write("not a directory\n")
    p["image_fits"] = str(root / "image.fits")
    fits.PrimaryHDU(test["images"][0]).writeto(p["image_fits"])
    with open(p["image_fits"], "rb") as f:
        data = f.read()
    p["truncated_fits"] = str(root / "truncated.fits")
    with open(p["truncated_fits"], "wb") as f:
        f.write(data[: len(data) - 3000])
    np.savez(root / "good.npz", images=test["images"], background=test["background"], psf_params=test["psf_params"])
    with open(root / "good.npz", "rb") as f:
        data = f.read()
    p["truncated_npz"] = str(root / "truncated.npz")
    with open(p["truncated_npz"], "wb") as f:
        f.write(data[: len(data) // 2])
    p["empty_npz"] = str(root / "empty.npz")
    np.savez(p["empty_npz"], other=np.zeros(3))
    truth = catalogs.truth_table(test)
    pred = truth["image", "x", "y", "flux"]
    pred["prob_source"] = np.full(len(pred), 0.9, np.float32)
    p["catalog"] = catalogs.write_table(pred, root / "catalog.fits")
    for name, change in (
        ("no_image_csv", lambda t: t.remove_column("image")),
        ("prob5_csv", lambda t: t["prob_source"].__setitem__(0, 5.0)),
        ("negative_image_csv", lambda t: t["image"].__setitem__(0, -1)),
    ):
        t = pred.copy()
        change(t)
        p[name] = catalogs.write_table(t, root / f"{name}.csv")
    p["text_x_csv"] = str(root / "text_x.csv")
    with open(p["text_x_csv"], "w") as f:
        f.write("image,x,y,flux,prob_source\n0,abc,3.0,10.0,0.9\n")
    return p


def _fingerprint(path: str):
    if not os.path.exists(path):
        return None
    if os.path.isdir(path):
        return sorted(
            (os.path.relpath(os.path.join(d, n), path), _fingerprint_file(os.path.join(d, n)))
            for d, _, names in os.walk(path)
            for n in names
        )
    return _fingerprint_file(path)


def _fingerprint_file(path: str):
    with open(path, "rb") as f:
        return os.stat(path).st_mtime_ns, hashlib.sha256(f.read()).hexdigest()


def run_case(case, paths):
    """(exit status, stderr, outputs before, outputs after) of one case."""
    _, command, argv, _, outputs = case
    args = []
    for a in argv.split():  # {tiny} stands for the tiny training flags (values with spaces)
        args += paths["tiny"] if a == "{tiny}" else [a.format(**paths)]
    outputs = [o.format(**paths) for o in outputs]
    before = [_fingerprint(o) for o in outputs]
    module = importlib.import_module(f"npejax.{command}")
    err, out = io_lib.StringIO(), io_lib.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        status = module.main([command, *args])
    return status, err.getvalue(), before, [_fingerprint(o) for o in outputs]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_in_one_line(case, paths):
    status, err, before, after = run_case(case, paths)
    fragment = case[3].format(**paths)
    lines = [line for line in err.strip().splitlines() if line.strip()]
    if os.environ.get("NPEJAX_CORPUS_TABLE"):
        shown = " / ".join(lines).replace(paths["new"], "NEW").replace(os.path.dirname(paths["run"]), "TMP")
        with open(os.environ["NPEJAX_CORPUS_TABLE"], "a") as f:
            f.write(f"| {case[0]} | npejax.{case[1]} | {status} | {shown.replace('|', '/')} |\n")
    assert status == 2, f"exit {status}; stderr: {err[-2000:]}"
    assert 1 <= len(lines) <= 3 and lines[0].startswith("error: "), err[-2000:]
    assert "Traceback" not in err
    assert fragment in err, f"{fragment!r} not named in: {err}"
    assert before == after, "an output was written or changed"


def test_corpus_is_large_enough():
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)
