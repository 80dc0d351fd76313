"""evaluate's inputs without a network: hand-built catalogs and a tiny cached test set. A catalog or test set
that would give a wrong report is refused in one line naming the file, column and row (or the
directory and its split), before any output is written; the test set is streamed in chunks with the
same results as reading it whole; the report's gallery."""

import json
import struct

import numpy as np
import pytest
from astropy import table as table_lib

from configs import default  # the repository root is on sys.path (conftest.py)
from npejax import catalogs as catalog
from npejax import datasets
from npejax import evaluate as evaluate_cmd
from npejax.evaluation import baseline, evaluate, report, snr
from npejax.evaluation.settings import EvalSettings
from npejax.sim import fields, pipeline

pytestmark = pytest.mark.fast  # the whole file is in the fast tier

NUM_IMAGES, SHARD_SIZE = 6, 4  # two shards: chunks of 4 cross nothing, chunks of 5 cross a shard boundary


def _write(directory, split, num_images):
    config = default.get_config()
    spec = pipeline.SimulationSpec.from_config(
        config, seed=datasets.split_seed(7, split), batch_size=SHARD_SIZE, bank=fields.load_bank()
    )
    datasets.write_dataset(spec, directory, num_images, split, config=config, num_workers=0, progress=False)
    return str(directory)


@pytest.fixture(scope="module")
def test_dir(tmp_path_factory):
    return _write(tmp_path_factory.mktemp("sets") / "test", "test", NUM_IMAGES)


@pytest.fixture(scope="module")
def val_dir(tmp_path_factory):
    return _write(tmp_path_factory.mktemp("sets") / "val", "val", 1)


@pytest.fixture(scope="module")
def truth(test_dir):
    return catalog.dataset_truth_table(datasets.load(test_dir))[0]


def _perfect(truth) -> table_lib.Table:
    pred = table_lib.Table({k: truth[k] for k in ("image", "x", "y", "flux", "mag")})
    pred["prob_source"] = np.ones(len(truth))
    pred["prob_galaxy"] = np.asarray(truth["is_galaxy"], np.float64)
    pred["flux_lo"], pred["flux_hi"] = pred["flux"] / 1.2, pred["flux"] * 1.2
    return pred


def _evaluate(capsys, *args):
    rc = evaluate_cmd.main(
        [
            "npejax.evaluate",
            "--nobaseline",
            "--nosnr",
            "--num-bootstrap",
            "3",
            "--num-bins",
            "2",
            *[str(a) for a in args],
        ]
    )
    return rc, capsys.readouterr()


def _assert_refused(rc, captured, *fragments):
    err = captured.err
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    assert "Traceback" not in err


# --- the test set ------------------------------------------------------------------------------------


def test_a_validation_split_is_not_a_test_set(truth, val_dir, tmp_path, capsys):
    catalog.write_table(_perfect(truth[truth["image"] == 0]), tmp_path / "mine.fits")
    out = tmp_path / "report"
    rc, captured = _evaluate(capsys, "--catalog", f"mine={tmp_path / 'mine.fits'}", "--test-dir", val_dir, "--out", out)
    _assert_refused(rc, captured, f"--test-dir {val_dir}", "'val' split", "--split test")
    assert not out.exists()
    with pytest.raises(evaluate.EvaluationError, match="'val' split"):
        evaluate.load_test_set(val_dir)


# --- catalogs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "column, value, row, fragment",
    [
        ("prob_source", 5.0, 2, "column 'prob_source' is 5.0 in row 2; a probability must lie in [0, 1]"),
        ("prob_source", np.nan, 1, "column 'prob_source' is NaN or empty in row 1"),
        ("prob_source", -0.5, 0, "column 'prob_source' is -0.5 in row 0"),
        ("prob_galaxy", 1.5, 3, "column 'prob_galaxy' is 1.5 in row 3"),
        ("image", -1, 0, "refers to image -1 (row 0), but the test set"),
        ("image", NUM_IMAGES, 4, f"refers to image {NUM_IMAGES} (row 4), but the test set"),
        ("x", np.inf, 2, "column 'x' is inf in row 2; expected a finite number"),
        ("flux", np.nan, 1, "column 'flux' is NaN or empty in row 1"),
    ],
)
def test_bad_values_are_refused_naming_file_column_and_row(
    truth, test_dir, tmp_path, capsys, column, value, row, fragment
):
    pred = _perfect(truth)
    pred[column][row] = value
    path = tmp_path / "bad.fits"
    catalog.write_table(pred, path)
    out = tmp_path / "report"
    rc, captured = _evaluate(capsys, "--catalog", f"mine={path}", "--test-dir", test_dir, "--out", out)
    _assert_refused(rc, captured, f"catalog {path}", fragment)
    assert not out.exists()


def test_catalog_without_image_column(truth, test_dir, tmp_path, capsys):
    pred = _perfect(truth)
    pred.remove_column("image")
    path = tmp_path / "noimage.csv"
    catalog.write_table(pred, path)
    rc, captured = _evaluate(capsys, "--catalog", f"mine={path}", "--test-dir", test_dir, "--out", tmp_path / "r")
    _assert_refused(rc, captured, f"catalog {path} lacks column 'image'", "needs image, x, y, flux")
    assert not (tmp_path / "r").exists()


def test_text_in_x(truth, test_dir, tmp_path, capsys):
    path = tmp_path / "text.csv"
    catalog.write_table(_perfect(truth), path)
    lines = path.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if not line.startswith("#"))  # after the '#' lines
    header = lines[start].split(",")
    cells = lines[start + 2].split(",")  # data row 1
    cells[header.index("x")] = "abc"
    lines[start + 2] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")
    rc, captured = _evaluate(capsys, "--catalog", f"mine={path}", "--test-dir", test_dir, "--out", tmp_path / "r")
    _assert_refused(rc, captured, f"catalog {path}: column 'x' holds text ('abc' in row 1), expected numbers")


def test_unreadable_catalog_file(test_dir, tmp_path, capsys):
    path = tmp_path / "broken.fits"
    path.write_bytes(b"SIMPLE  =                    T" + b"\0" * 50)
    rc, captured = _evaluate(capsys, "--catalog", f"mine={path}", "--test-dir", test_dir, "--out", tmp_path / "r")
    _assert_refused(rc, captured, f"--catalog mine={path}: cannot read it")


def test_out_an_existing_file_is_refused_before_any_work(truth, test_dir, tmp_path, capsys):
    catalog.write_table(_perfect(truth), tmp_path / "mine.fits")
    out = tmp_path / "report.txt"
    out.write_text("keep me\n")
    rc, captured = _evaluate(
        capsys, "--catalog", f"mine={tmp_path / 'mine.fits'}", "--test-dir", test_dir, "--out", out
    )
    _assert_refused(rc, captured, f"--out {out} is an existing file")
    assert out.read_text() == "keep me\n" and captured.out == ""  # nothing evaluated
    rc, captured = _evaluate(
        capsys, "--catalog", f"mine={tmp_path / 'mine.fits'}", "--test-dir", test_dir, "--out", out / "sub"
    )
    _assert_refused(rc, captured, f"--out {out / 'sub'}: {out} is a file")


def test_check_catalog_for_in_memory_tables():
    good = dict(image=np.array([0, 1]), x=np.array([1.0, 2.0]), y=np.array([1.0, 2.0]), flux=np.array([3.0, 4.0]))
    evaluate.check_catalog(good, "catalog 'a'", 2)
    with pytest.raises(
        evaluate.EvaluationError,
        match=r"catalog 'a': column 'image' is 0.5 in row 1; expected an "
        "integer",
    ):
        evaluate.check_catalog(dict(good, image=np.array([0, 0.5])), "catalog 'a'", 2)
    masked = table_lib.Table(good, masked=True)
    masked["x"].mask = [False, True]
    with pytest.raises(evaluate.EvaluationError, match="column 'x' is NaN or empty in row 1"):
        evaluate.check_catalog(masked, "catalog 'a'", 2)


# --- streaming ---------------------------------------------------------------------------------------


def test_streamed_baseline_and_snr_equal_the_whole_set(test_dir, monkeypatch):
    test = evaluate.load_test_set(test_dir)
    whole = datasets.load(test_dir)[:]
    reads = []
    real_read = test.dataset.read
    monkeypatch.setattr(test.dataset, "read", lambda index, keys=None: reads.append(index) or real_read(index, keys))

    streamed = evaluate.baseline_catalog(test, chunk_images=5)
    expected = baseline.sep_catalog(
        whole["images"], whole["background"], field_id=whole["field_id"], bank=fields.load_bank()
    )
    assert streamed.colnames == expected.colnames and len(streamed) == len(expected) > 0
    for col in expected.colnames:
        np.testing.assert_array_equal(streamed[col], expected[col], err_msg=col)
    assert [(r.start, r.stop) for r in reads] == [(0, 5), (5, 10)]  # never more than a chunk in memory

    spec = pipeline.SimulationSpec.from_config(default.get_config())
    per_source = snr.source_snr(whole, spec)
    expected_snr = per_source[np.asarray(test.truth["image"]), np.asarray(test.truth["source"])]
    np.testing.assert_array_equal(evaluate.truth_snr(test, chunk_images=4), expected_snr)
    assert np.isfinite(expected_snr).all()


# --- gallery -----------------------------------------------------------------------------------------


def test_gallery_images_lead_with_the_worst():
    n = 30
    truth = dict(
        image=np.arange(n), x=np.full(n, 10.0), y=np.full(n, 10.0), flux=np.full(n, 100.0), mag=np.full(n, 17.5)
    )
    pred = dict(truth, prob_source=np.ones(n))
    pred["prob_source"][[4, 9]] = 0.1  # images 4 and 9 miss their bright source (for "a")
    other = dict(truth)
    other["x"] = np.where(np.arange(n) == 9, 40.0, other["x"])  # "b" also misses image 9's, with a false detection
    g = evaluate.gallery_images(truth, {"a": pred, "b": other}, n, num=12, num_worst=6)
    assert g["images"][:2] == [9, 4] and g["worst"] == 2
    assert g["missed"][0] == {"a": 1, "b": 1} and g["false"][0] == {"a": 0, "b": 1}
    assert len(g["images"]) == 12 and len(set(g["images"])) == 12 and g["images"][2:] == sorted(g["images"][2:])
    # a perfect method has no worst images; a tiny set shows every image once
    assert evaluate.gallery_images(truth, {"a": dict(truth)}, n)["worst"] == 0
    assert sorted(evaluate.gallery_images({k: v[:3] for k, v in truth.items()}, {}, 3)["images"]) == [0, 1, 2]


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_report_has_a_gallery(truth, test_dir, tmp_path, capsys):
    pred = _perfect(truth)
    miss = int(np.argmin(pred["mag"]))  # the brightest source of the set, missed
    pred["prob_source"][miss] = 0.2
    catalog.write_table(pred, tmp_path / "mine.fits")
    out = tmp_path / "report"
    rc, captured = _evaluate(
        capsys, "--catalog", f"mine={tmp_path / 'mine.fits'}", "--test-dir", test_dir, "--out", out
    )
    assert rc == 0, captured.err
    assert (
        _png_size(out / "gallery.png")
        == report.gallery_pixels(NUM_IMAGES)
        == (round(4 * 3.2 * report.DPI), round(2 * 3.4 * report.DPI))
    )  # 6 panels: 2 rows of 4
    text = (out / "report.md").read_text()
    assert "![gallery](gallery.png)" in text and "## Gallery" in text
    g = json.loads((out / "metrics.json").read_text())["gallery"]
    assert g["images"][0] == int(truth["image"][miss]) and g["worst"] == 1 and len(g["images"]) == NUM_IMAGES
    assert not [p for p in out.iterdir() if ".tmp" in p.name]
    # twelve panels: three rows
    assert report.gallery_pixels(12)[1] == round(3 * 3.4 * report.DPI)


def test_perfect_catalog_scores_perfectly_when_streamed(truth, test_dir, tmp_path):
    settings = EvalSettings.create(
        str(tmp_path / "r"),
        default.get_config(),
        test_dir=test_dir,
        catalogs={"truth": _perfect(truth)},
        chunk_images=1,
        progress=False,
        baseline=False,
        num_bootstrap=3,
        num_bins=2,
        snr=False,
    )
    m = evaluate.evaluate(settings)
    for key in ("precision", "recall"):
        assert m["methods"]["truth"]["headline"][key]["value"] == 1.0


def test_the_command_reads_the_eval_section_of_its_config(truth, test_dir, tmp_path, config_path, capsys):
    """npejax.evaluate --config: the flags not given come from the config's eval section (here changed on the
    command line), those given override it; no ceiling with eval.ceiling_galaxies = 0."""
    catalog.write_table(_perfect(truth), tmp_path / "mine.fits")
    out = tmp_path / "r"
    rc = evaluate_cmd.main(
        [
            "npejax.evaluate",
            "--config",
            config_path("default"),
            "--config.eval.num_bootstrap=4",
            "--config.eval.num_bins=3",
            "--config.eval.ceiling_galaxies=0",
            "--config.eval.baseline=False",
            "--config.eval.snr=False",
            "--num-bins",
            "2",
            "--catalog",
            f"mine={tmp_path / 'mine.fits'}",
            "--test-dir",
            test_dir,
            "--out",
            str(out),
        ]
    )
    assert rc == 0, capsys.readouterr().err
    m = json.loads((out / "metrics.json").read_text())
    assert m["options"]["num_bootstrap"] == 4 and m["options"]["num_bins"] == 2 and len(m["equal_cutoffs"]) == 2
    assert m["ceiling"] is None and list(m["methods"]) == ["mine"] and m["snr_cutoffs"] is None


def test_catalogs_in_every_pixel_convention_are_matched_alike(truth, test_dir, tmp_path, capsys):
    """One perfect catalog as npejax writes it (CSV; FITS: test_catalog.py), as an earlier npejax wrote it
    (FITS, edge-based, no PIXCONV) and as another tool gives it (a plain CSV of 0-based pixel centres): the
    same metrics, every binned source found. Each position is off by (+0.6, -0.6) pixel, 0.85 from its
    source: a conversion missed (old) or made where none is due (sep) puts it 1.1 pixels away, outside the
    1-pixel slack."""
    perfect = _perfect(truth)
    perfect["x"], perfect["y"] = perfect["x"] + 0.6, perfect["y"] - 0.6
    catalog.write_table(perfect, tmp_path / "new.csv")
    old = table_lib.Table(perfect, copy=True)
    old["x"], old["y"] = catalog.array_xy(perfect)  # edge-based, as before PIXCONV
    old.meta = {"FLUXUNIT": "nmgy"}
    old.write(tmp_path / "old.fits")
    plain = table_lib.Table(perfect, copy=True)
    plain.meta = {}
    plain.write(tmp_path / "sep.csv", format="ascii.csv")  # another tool's: no comment lines, no keyword
    names = ("new_csv", "old_fits", "sep_csv")
    files = ("new.csv", "old.fits", "sep.csv")
    args = [a for n, f in zip(names, files) for a in ("--catalog", f"{n}={tmp_path / f}")]
    rc, captured = _evaluate(capsys, *args, "--test-dir", test_dir, "--out", tmp_path / "r")
    assert rc == 0, captured.err
    methods = json.loads((tmp_path / "r" / "metrics.json").read_text())["methods"]
    for name in names:
        recall = methods[name]["bins_equal"]["recall"]
        assert recall["numerator"] == recall["count"] and sum(recall["count"]) > 0, name
        for metric in ("precision", "recall", "accuracy"):  # (CSV prints fluxes to 5 digits: MAPE > 0)
            assert methods[name]["bins_equal"][metric] == methods["new_csv"]["bins_equal"][metric], name
    again = catalog.read_table(tmp_path / "r" / "predictions" / "old_fits.fits")
    np.testing.assert_array_equal(again["x"], perfect["x"])  # rewritten in the convention of today
