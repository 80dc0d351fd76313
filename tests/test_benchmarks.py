"""The benchmarks: FLOP counts against hand counts, the GPU suite's command (``benchmarks/gpu.sh``) run tiny on
the CPU, and its RESULTS.md section.

``benchmarks/gpu.sh OUTDIR --cpu-smoke`` runs ``train_throughput.py`` and ``predict_throughput.py`` in
subprocesses on ``configs/cpu_small.py`` shrunk to a 4-channel network (about a minute on a 2-core CPU,
most of it XLA compiles); their JSON files are checked against FLOPs counted by hand from the network's
documented architecture (:class:`npejax.nn.model.CatalogNet`: 5x5 stem block, 3x3 blocks, C3 stages).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from astropy.table import Table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")
# the network of gpu.sh --cpu-smoke: configs/cpu_small.py with these model values
SMOKE_MODEL = dict(width=4, stem_blocks=1, stages=((1, 0, 1), (1, 0, 2), (1, 0, 2)))
IMAGE, CHANNELS, NUM_PARAMS = 80, 21, 8  # cpu_small image size; psf_aware input channels; outputs per tile


def _load(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", os.path.join(BENCH, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, BENCH)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(BENCH)
    return module


tt = _load("train_throughput")
report = _load("gpu_report")


# --- hand counts ------------------------------------------------------------------------------------


def conv_layers(width, stem_blocks, stages, size=IMAGE, cin=CHANNELS):
    """(output side, kernel, in channels, out channels) of every convolution of a CatalogNet, head included."""
    layers = [(size, 5, cin, width)]
    c = width
    layers += [(size, 3, c, c)] * (stem_blocks - 1)
    for mult, n, stride in stages:
        out = width * mult
        if stride > 1:
            size //= stride
            layers.append((size, 3, c, out))
            c = out
        hidden = max(out // 2, 1)
        layers += [(size, 1, c, hidden)] + [(size, 1, hidden, hidden), (size, 3, hidden, hidden)] * n
        layers += [(size, 1, c, hidden), (size, 1, 2 * hidden, out)]
        c = out
    return layers + [(size, 1, c, NUM_PARAMS)]


def forward_flops(layers):
    return [2.0 * s * s * k * k * a * b for s, k, a, b in layers]


@pytest.mark.fast
def test_hand_count_matches_the_full_size_description():
    # configs/default.py: 48 conv-BN-SiLU blocks (+ the head)
    layers = conv_layers(64, 3, ((1, 3, 1), (2, 3, 2), (4, 3, 2), (4, 3, 1), (4, 2, 1)))
    assert len(layers) == 48 + 1


# --- the FLOP counters ------------------------------------------------------------------------------


@pytest.mark.fast
def test_matmul_flops_of_one_convolution_and_its_gradients():
    x = jnp.ones((2, 16, 16, 3))
    w = jnp.ones((3, 3, 3, 5))

    def conv(x, w, stride):
        return jax.lax.conv_general_dilated(x, w, (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

    for stride in (1, 2):
        out = 16 // stride
        hand = 2.0 * 2 * out * out * 9 * 3 * 5
        assert tt.matmul_flops(jax.make_jaxpr(lambda x, w: conv(x, w, stride))(x, w)) == hand
        # backward: input and weight gradients cost one forward each (the strided one's zeros not counted)
        grads = jax.make_jaxpr(jax.grad(lambda x, w: conv(x, w, stride).sum(), argnums=(0, 1)))(x, w)
        assert tt.matmul_flops(grads) == pytest.approx(3 * hand, rel=1e-9)
        compiled = jax.jit(lambda x, w: conv(x, w, stride)).lower(x, w).compile()
        assert 0.85 * hand <= tt.xla_flops(compiled) <= hand  # XLA leaves out the products with SAME's zeros
    a, b = jnp.ones((4, 6)), jnp.ones((6, 7))
    assert tt.matmul_flops(jax.make_jaxpr(jnp.dot)(a, b)) == 2 * 4 * 6 * 7


@pytest.mark.fast
def test_xla_flops_forms():
    class Fake:
        def __init__(self, value):
            self.value = value

        def cost_analysis(self):
            if isinstance(self.value, Exception):
                raise self.value
            return self.value

    assert tt.xla_flops(Fake({"flops": 10.0}), 4) == 40.0
    assert tt.xla_flops(Fake([{"flops": 10.0}])) == 10.0  # older JAX: one dict per program
    assert tt.xla_flops(Fake([])) is None
    assert tt.xla_flops(Fake({"bytes accessed": 1.0})) is None
    assert tt.xla_flops(Fake(NotImplementedError("no"))) is None


@pytest.mark.fast
def test_parse_peaks():
    assert tt.parse_peaks(None, ["float32"]) == {"float32": None}
    assert tt.parse_peaks("989", ["float32", "bfloat16"]) == {"float32": 989.0, "bfloat16": 989.0}
    assert tt.parse_peaks("float32=494.7,bfloat16=989", ["bfloat16"]) == {"bfloat16": 989.0}
    for bad in ("fast", "float32=x", "-3"):
        with pytest.raises(ValueError, match="peak_tflops"):
            tt.parse_peaks(bad, ["float32"])


@pytest.mark.fast
def test_utilization_arithmetic():
    r = dict(images_per_s=1000.0, batch_size=100)
    u = tt.utilization(r, flops=2e12, conv_flops=1e12, peak_tflops=50.0, num_devices=2)
    assert u["gflop_per_image"] == pytest.approx(20.0)  # 2e12 / 100 images
    assert u["tflops"] == pytest.approx(20.0)  # 10 steps/s x 2 TFLOP
    assert u["mfu"] == pytest.approx(0.2)  # of 2 x 50
    assert u["conv_mfu"] == pytest.approx(0.1)
    assert u["paper_protocol_hours"] == pytest.approx(10.5e6 / 1000 / 3600)
    assert tt.utilization(r, None, 1e12, None, 1)["mfu"] is None


# --- the suite, tiny on the CPU ---------------------------------------------------------------------


def _gpu_sh(*args, env=None, timeout=600):
    full_env = {k: v for k, v in os.environ.items() if k not in ("OUT", "RESULTS")}
    full_env.update(PYTHON=sys.executable, **(env or {}))
    return subprocess.run(
        ["bash", os.path.join(BENCH, "gpu.sh"), *args],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """gpu.sh --cpu-smoke into a temporary directory, with a copy of RESULTS.md to append to."""
    tmp = tmp_path_factory.mktemp("gpu_smoke")
    results = tmp / "RESULTS.md"
    shutil.copy(os.path.join(BENCH, "RESULTS.md"), results)
    proc = _gpu_sh(str(tmp / "out"), "--cpu-smoke", env={"RESULTS": str(results)})
    return proc, tmp / "out", results


def test_smoke_suite_runs_and_appends_a_section(smoke):
    proc, out, results = smoke
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # everything in OUTDIR comes back from a lent machine's $OUT (at most 8 files)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["predict_small.json", "section.md", "suite.log", "train_full_b4.json"]
    log = (out / "suite.log").read_text()
    assert "== train_full_b4: " in log and "== predict_small: " in log and "!!" not in log
    text = results.read_text()
    with open(os.path.join(BENCH, "RESULTS.md")) as f:
        original = f.read()
    assert text.startswith(original)  # appended, nothing rewritten
    added = text[len(original) :]
    assert added.count("\n## CPU smoke (") == 1
    assert "| cpu_small (width 4, 12 blocks) | float32 | 4 |" in added
    assert (out / "section.md").read_text().strip() == added.strip()


def test_smoke_train_flops_match_the_hand_count(smoke):
    proc, out, _ = smoke
    doc = json.loads((out / "train_full_b4.json").read_text())
    (r,) = doc["results"]
    assert r["dtype"] == "float32" and r["batch_size"] == 4 and r["images_per_s"] > 0
    fwd = forward_flops(conv_layers(**SMOKE_MODEL))
    # backward: weight and input gradients, one forward each, except the input gradient of the first layer
    # (the input features are not differentiated)
    hand = (3 * sum(fwd) - fwd[0]) / 1e9
    assert r["conv_gflop_per_image"] == pytest.approx(hand, rel=1e-6)
    # XLA also counts batch norm, SiLU, Adam, the NLL, and leaves out the products with the zero padding
    assert 0.9 * hand <= r["gflop_per_image"] <= 1.5 * hand
    assert r["tflops"] == pytest.approx(r["gflop_per_image"] * r["images_per_s"] / 1e3)
    assert r["mfu"] == pytest.approx(r["tflops"] / 494.7)
    assert r["paper_protocol_hours"] == pytest.approx(10.5e6 / r["images_per_s"] / 3600)


def test_smoke_predict_figures(smoke):
    proc, out, _ = smoke
    doc = json.loads((out / "predict_small.json").read_text())
    im = doc["images"]
    assert im["network_images_per_s"] > 0 and im["predict_images_per_s"] > 0
    hand = sum(forward_flops(conv_layers(**SMOKE_MODEL))) / 1e9
    assert im["conv_gflop_per_image"] == pytest.approx(hand, rel=1e-6)
    assert 0.9 * hand <= im["gflop_per_image"] <= 1.5 * hand
    assert [f["chunk_size"] for f in doc["frames"]] == [48, 0]
    for f in doc["frames"]:
        assert f["frame_shape"] == [100, 120] and f["tile_grid"] == [25, 30]
        assert f["frames_per_s"] > 0 and f["peak_bytes"] > 2**20
    assert doc["peak_memory_source"].startswith("host max RSS")  # no GPU here
    assert "synthetic" in doc["inputs"]


def test_gpu_sh_refuses_without_a_gpu_or_an_output_directory(tmp_path):
    proc = _gpu_sh(str(tmp_path / "out"), timeout=300)
    assert proc.returncode == 4
    assert "no GPU visible to JAX" in proc.stderr and "--cpu-smoke" in proc.stderr
    proc = _gpu_sh(timeout=60)
    assert proc.returncode == 2 and "no output directory" in proc.stderr
    proc = _gpu_sh("--fast", timeout=60)
    assert proc.returncode == 2 and "unknown option --fast" in proc.stderr
    proc = _gpu_sh("--help", timeout=60)
    assert proc.returncode == 0 and "--cpu-smoke" in proc.stdout and "set -uo" not in proc.stdout


# --- the report -------------------------------------------------------------------------------------


def _train_doc(batch, rows):
    return dict(
        benchmark="train",
        jax="0.11.2",
        device_kind="NVIDIA H100 80GB HBM3",
        platform="gpu",
        config_file="/repo/configs/psf_aware.py",
        variant="psf_aware",
        width=64,
        conv_blocks=48,
        results=[
            dict(
                dtype=d,
                batch_size=batch,
                steps=30,
                images_per_s=ips,
                ms_per_step=1e3 * batch / ips,
                compile_s=41.0,
                gflop_per_image=12.05,
                conv_gflop_per_image=11.8,
                tflops=12.05 * ips / 1e3,
                conv_tflops=11.8 * ips / 1e3,
                peak_tflops=peak,
                mfu=12.05 * ips / 1e3 / peak,
                conv_mfu=11.8 * ips / 1e3 / peak,
                paper_protocol_hours=10.5e6 / ips / 3600,
            )
            for d, ips, peak in rows
        ],
    )


@pytest.mark.fast
def test_report_section_from_fabricated_files(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "train_full_b64.json").write_text(
        json.dumps(_train_doc(64, [("float32", 4000.0, 494.7), ("bfloat16", 7000.0, 989.0)]))
    )
    (out / "train_full_b256.json").write_text(json.dumps(_train_doc(256, [("bfloat16", 9000.0, 989.0)])))
    (out / "predict_small.json").write_text(
        json.dumps(
            dict(
                benchmark="predict",
                jax="0.11.2",
                device_kind="NVIDIA H100 80GB HBM3",
                config_file="configs/cpu_small.py",
                width=16,
                conv_blocks=19,
                dtype="float32",
                inputs="synthetic: noise",
                peak_memory_source="device memory",
                images=dict(
                    batch_size=256,
                    network_images_per_s=50000.0,
                    predict_images_per_s=20000.0,
                    gflop_per_image=0.19,
                    peak_bytes=3 * 2**20,
                ),
                frames=[
                    dict(
                        frame_shape=[1489, 2048],
                        chunk_size=512,
                        frames_per_s=12.5,
                        s_per_frame=0.08,
                        peak_bytes=5 * 2**20,
                    )
                ],
            )
        )
    )
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\nearlier text")  # no trailing newline
    assert (
        report.main(
            [
                str(out),
                "--results",
                str(results),
                "--date",
                "2026-11-26",
                "--command",
                "bash x",
                "--failed",
                " predict_full_float32",
            ]
        )
        == 0
    )
    text = results.read_text()
    assert text.startswith(
        "# Benchmark results\n\nearlier text\n\n## GPU (2026-11-26, NVIDIA H100 80GB HBM3, jax 0.11.2)\n\n`bash x`\n"
    )
    assert "**Failed or timed out** (no figures): predict_full_float32" in text
    # files sorted by name: b256 before b64; 9000 images/s x 12.05 GFLOP = 108.45 TFLOP/s = 11.0% of 989
    assert (
        "| psf_aware (width 64, 48 blocks) | bfloat16 | 256 | 9,000.0 | 28.44 | 12.050 | 108.45 | 11.0 (989) | "
        "11.800 | 10.7 | 41.0 | 0.32 |"
    ) in text
    assert "| psf_aware (width 64, 48 blocks) | float32 | 64 | 4,000.0 | 16.00 | 12.050 | 48.20 | 9.7 (494.7) |" in text
    assert "Fastest: bfloat16 at batch 256, 9,000.0 images/s: the paper's 10.5M image-steps in 0.32 h" in text
    assert (
        "| cpu_small (width 16, 19 blocks) | float32 | 50,000.0 (256) | 20,000.0 | 0.190 | 1489 x 2048 | 512 | "
        "12.500 | 0.080 | 5 |"
    ) in text
    assert text.count("## GPU") == 1


@pytest.mark.fast
def test_report_refuses_foreign_or_missing_files(tmp_path, capsys):
    assert report.main([str(tmp_path)]) == 2
    assert "no benchmark JSON files" in capsys.readouterr().err
    (tmp_path / "x.json").write_text(json.dumps({"benchmark": "simulate"}))
    assert report.main([str(tmp_path)]) == 2
    assert "x.json: 'benchmark' is 'simulate'" in capsys.readouterr().err
    (tmp_path / "x.json").write_text("{")
    assert report.main([str(tmp_path)]) == 2
    assert "is not JSON" in capsys.readouterr().err


@pytest.mark.fast
def test_hand_count_of_cpu_small_agrees_with_the_measured_figure():
    """The cpu_small network of RESULTS.md's CPU step figures (width 16, 19 blocks; configs/cpu_small.py before its
    two-stage recipe): the train step's 0.487 GFLOP/image (XLA, measured on the CPU) lies just above the hand
    count of its convolutions."""
    fwd = forward_flops(conv_layers(16, 2, ((1, 1, 1), (2, 1, 2), (2, 1, 2))))
    assert len(fwd) == 19 + 1
    assert (3 * sum(fwd) - fwd[0]) / 1e9 == pytest.approx(0.470, abs=0.001)
    assert sum(fwd) / 1e9 == pytest.approx(0.1925, abs=0.001)
    np.testing.assert_allclose(fwd[0], 2 * 80 * 80 * 25 * 21 * 16)


@pytest.mark.fast
def test_bright_detection_counts_against_a_hand_built_catalog():
    """Recall over true r < 19, precision over detections with estimated r < 19, 1-pixel matching."""
    bright = _load("bright_detection")
    truth = Table(
        dict(
            image=[0, 0, 0, 1],
            x=[10.0, 30.0, 50.0, 20.0],
            y=[10.0, 30.0, 50.0, 20.0],
            mag=[17.0, 18.5, 21.0, 18.0],
            flux=[0.0] * 4,
        )
    )
    # image 0: the r 17 source found; the r 18.5 one 1.5 px off (missed); a bright false detection;
    # image 1: the r 18 source found but estimated fainter than 19 (not in the precision count); a faint
    # detection below the probability threshold is ignored
    flux = lambda mag: 10 ** ((22.5 - np.asarray(mag)) / 2.5)  # noqa: E731
    pred = Table(
        dict(
            image=[0, 0, 0, 1, 1],
            x=[10.2, 31.5, 70.0, 20.0, 60.0],
            y=[10.0, 30.0, 70.0, 20.3, 60.0],
            flux=flux([17.1, 18.4, 18.0, 19.5, 18.0]),
            prob_source=[0.9, 0.8, 0.7, 0.9, 0.3],
        )
    )
    r = bright.bright_metrics(truth, pred, 2, 19.0)
    assert (r["found"], r["num_true"]) == (2, 3) and r["recall"] == pytest.approx(2 / 3)
    assert (r["correct"], r["num_detections"]) == (1, 3) and r["precision"] == pytest.approx(1 / 3)


@pytest.mark.fast
def test_flux_linearity_images_and_slopes(load_config, monkeypatch):
    """benchmarks/flux_linearity.py: one star per noiseless image holds the star's flux (the renderer conserves
    it) inside the reported tile; a network whose estimate is the true flux to the power 0.5 has slope 0.5
    and the bias of that law."""
    lin = _load("flux_linearity")
    config = load_config("cpu_small")
    config.render.noise = "none"
    data = lin.isolated_stars(config, [14.0, 16.0, 18.0], per_mag=2, field_prior="one", seed=3)
    flux = 10 ** ((22.5 - data["mag"]) / 2.5)
    np.testing.assert_allclose(data["images"].sum(axis=(1, 2)), flux, rtol=2e-3)
    ty, tx = data["tile"]
    t = config.tile_size
    for image in data["images"]:  # the star's brightest pixel is within a pixel of its tile
        y, x = np.unravel_index(np.argmax(image), image.shape)
        assert ty * t - 1 <= y <= ty * t + t and tx * t - 1 <= x <= tx * t + t

    class SquareRoot:
        @classmethod
        def from_workdir(cls, workdir):
            return cls()

        def predict_tiles(self, images, background, psf_params):
            shape = (len(images), 20, 20)
            tile_flux = np.ones(shape)
            tile_flux[:, ty, tx] = np.sqrt(flux)
            return dict(tile_flux=tile_flux, prob_source=np.full(shape, 0.9))

    monkeypatch.setattr(lin.predictor, "Predictor", SquareRoot)
    rows = lin.linearity("unused", data)
    assert [r["mag"] for r in rows] == [14.0, 16.0, 18.0]
    # estimated r = 22.5 - 2.5 log10(sqrt(F)) = (22.5 + r) / 2
    np.testing.assert_allclose([r["est_mag"] for r in rows], [18.25, 19.25, 20.25])
    np.testing.assert_allclose([r["bias"] for r in rows], [4.25, 3.25, 2.25])
    assert (
        np.isnan(rows[0]["slope"]) and rows[1]["slope"] == pytest.approx(0.5) and rows[2]["slope"] == pytest.approx(0.5)
    )


def test_sweep_configs_budgets_and_plot_only(tmp_path):
    """benchmarks/sweep.py: "small" is configs/cpu_small.py's network, budgets become whole jitted calls of
    images over 12 epochs with the decay after 10 and no early stop, and --plot-only redraws the table and PNG
    from sweep.json files (two seeds) without training."""
    sweep = _load("sweep")
    from configs import cpu_small

    base = cpu_small.get_config()
    small = sweep.network_config("small", 40_000, "/val", workers=3, seed=7)
    assert (small.model.width, small.model.stem_blocks, tuple(map(tuple, small.model.stages))) == (
        base.model.width,
        base.model.stem_blocks,
        tuple(map(tuple, base.model.stages)),
    )
    call = base.train.batch_size * base.train.steps_per_dispatch
    assert small.train.images_per_epoch % call == 0
    assert abs(12 * small.train.images_per_epoch - 40_000) <= 12 * call / 2
    assert (small.train.num_epochs, small.train.lr_decay_epoch, small.train.patience) == (12, 10, 12)
    assert small.seed == 7 and small.data.val_dir == "/val" and small.simulator.num_workers == 3
    assert sweep.network_config("medium", 100, "/val", 2).model.width == 24
    assert sweep.network_config("medium", 100, "/val", 2).train.images_per_epoch == call  # at least one call
    # CPU minutes -> images: (minutes x 60 - overhead) x rate
    assert sweep.parse_per_size(["small=48.9,medium=17"], ["small", "medium"], "--x") == {"small": 48.9, "medium": 17.0}
    with pytest.raises(ValueError, match="no value for size"):
        sweep.parse_per_size(["small=1"], ["small", "medium"], "--cpu-images-per-s")
    row = dict(
        size="small",
        name="small-7",
        seed=0,
        cpu_minutes=7.0,
        images=16128,
        parameters=39609,
        val_nll=5.04,
        seconds_here=50.0,
        recall=0.92,
        recall_std=0.007,
        precision=0.945,
        precision_std=0.005,
        accuracy=0.9,
        accuracy_std=0.01,
        mape=14.4,
        mape_std=0.3,
        sep_recall=0.862,
        sep_precision=0.938,
        sep_accuracy=float("nan"),
        sep_mape=13.8,
        sep_mape_std=0.2,
    )
    other = dict(row, name="small-7-seed1", seed=1, recall=0.93)
    for i, r in enumerate((row, other)):
        (tmp_path / f"s{i}.json").write_text(json.dumps(dict(rows=[r])))
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(BENCH, "sweep.py"),
            "--out",
            str(out),
            "--plot-only",
            f"{tmp_path / 's0.json'},{tmp_path / 's1.json'}",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    table = (out / "sweep.md").read_text()
    assert "| small | 39,609 | 7 | 16,128 | 0 | 5.04 | 0.920 +- 0.007 |" in table
    assert "| small | 39,609 | 7 | 16,128 | 1 | 5.04 | 0.930 +- 0.007 |" in table
    assert "| Source Extractor | | | | | | 0.862 | 0.938 |" in table
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = subprocess.run(
        [sys.executable, os.path.join(BENCH, "sweep.py"), "--out", str(out), "--sizes", "huge"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert bad.returncode != 0 and "--sizes huge" in bad.stderr


def test_survey_bank_figure_and_table(tmp_path):
    """benchmarks/survey_bank.py: the figure is written, and the table puts each bank's quartiles and ranges beside
    the facts (the DR1 quartiles) and the stated ranges."""
    from npejax.sim import fields, survey_bank

    fig = _load("survey_bank")
    bank, default = fields.load_bank("survey").subset(range(12)), fields.load_bank().subset(range(12))
    fig.plot(bank, default, str(tmp_path / "survey_bank.png"))
    assert (tmp_path / "survey_bank.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = fig.table(fig.quantities(bank), fig.quantities(default))
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines()[2:]}
    assert set(rows) == set(fig.quantities(bank)) and "quartiles 1.3 / 1.43 / 1.58" in rows["psf_width_arcsec"]
    assert "quartiles 20.7 / 20.86 / 21.03" in rows["sky_mag_arcsec2"] and "0.05-0.05" in rows["psf_p0"]
    real, r_band = fig.real_rows()
    assert r_band.sum() == 2 and len(real["params"]) == 9 and survey_bank.R_BAND == 2


@pytest.mark.fast
def test_artifact_spurious_counts_unmatched_detections_near_the_artifact_only():
    """A detection counts when it matches no true source (1 px) and its pixel lies on the artifact's near region."""
    from configs import default  # the repository root is on sys.path (conftest.py)

    bench = _load("artifact_spurious")
    near = np.zeros((2, 20, 20), bool)
    near[0, :, 5:8] = True  # a column and its 1-pixel sides in image 0; nothing in image 1
    truth = dict(image=np.array([0, 1]), x=np.array([6.5, 6.5]), y=np.array([10.0, 10.0]), flux=np.ones(2))
    # image 0: the true source found (not counted), two false detections on the column, one off it;
    # image 1: a false detection where image 0's column is (image 1 has none)
    pred = Table(
        dict(
            image=[0, 0, 0, 0, 1],
            x=[6.6, 5.2, 7.9, 12.0, 6.0],
            y=[10.1, 3.0, 15.0, 3.0, 3.0],
            flux=[1.0] * 5,
            prob_source=[0.9] * 5,
        )
    )
    np.testing.assert_array_equal(bench.spurious_near(pred, truth, near, 1.0), [2, 0])
    np.testing.assert_array_equal(bench.unmatched(pred, truth, 2, 1.0), [3, 1])
    # one artifact on at its stress rate, the others off; the injected star is a bright star inside the margin
    config = default.get_config()
    spec = bench.artifact_spec(config, "cosmic_rays", (80, 80))
    assert spec.enabled == ("cosmic_rays",) and spec.cosmic_rays.rate_per_mpix * 80 * 80 / 1e6 == pytest.approx(6)
    catalog = dict(
        n_sources=np.array([0, 2], np.int32),
        **{k: np.zeros((2, 2), np.float32) for k in ("x", "y", "flux", "disk_frac", "angle", "disk_q", "bulge_q")},
        **{k: np.zeros((2, 2), np.float32) for k in ("disk_a", "bulge_a")},
        is_galaxy=np.ones((2, 2), bool),
    )
    out = bench.inject_bright_star(np.random.default_rng(0), catalog, (80, 80), (11.0, 14.0))
    assert out["n_sources"].tolist() == [1, 3] and out["x"].shape == (2, 3)
    rows = np.arange(2), out["n_sources"] - 1
    assert not out["is_galaxy"][rows].any() and np.all((out["flux"][rows] > 10**3.4) & (out["flux"][rows] < 10**4.6))
    assert np.all((out["x"][rows] >= 8) & (out["x"][rows] <= 72))


# --- backend_science.py (the same science from either renderer) ---


def _backend_science(argv):
    from npejax import cli

    bench = _load("backend_science")
    return cli.main(bench.define_flags, bench.run, ["backend_science.py", *argv], doc=bench.__doc__)


@pytest.mark.fast
def test_backend_science_refuses_bad_arguments_before_any_work(tmp_path, capsys):
    from conftest import one_error_line

    out = tmp_path / "out"
    cases = [
        (["--seeds", "0"], "--seeds '0': expected two or more distinct integers >= 0"),
        (["--seeds", "1,1"], "--seeds '1,1'"),
        (["--seeds", "0,-1"], "--seeds '0,-1'"),
        (["--seeds", "a,b"], "--seeds 'a,b'"),
        (["--num-images", "0"], "--num-images 0: expected a positive number"),
        (["--train-config", str(tmp_path / "nope.py")], "--train-config '"),
    ]
    for argv, fragment in cases:
        assert _backend_science(["--out", str(out), *argv]) == 2, argv
        assert fragment in one_error_line(capsys.readouterr().err), argv
        assert not out.exists(), argv
    assert _backend_science([]) == 2
    assert "--out" in one_error_line(capsys.readouterr().err)
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert _backend_science(["--out", str(afile)]) == 2
    assert "is an existing file" in one_error_line(capsys.readouterr().err)
    assert afile.read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


@pytest.mark.fast
def test_backend_science_spread_rule_and_table():
    """A jax value counts as within when it lies in [min - s, max + s] of the galsim seeds (s = their spread)."""
    bench = _load("backend_science")
    assert bench.parse_seeds("0,1") == [0, 1]
    names = bench.run_names([0, 1])
    assert [n for n, _, _ in names] == ["galsim_s0", "jax_s0", "galsim_s1", "jax_s1"]
    assert bench.within_spread([0.90, 0.92], 0.94) and bench.within_spread([0.90, 0.92], 0.88)
    assert not bench.within_spread([0.90, 0.92], 0.9401) and not bench.within_spread([0.90, 0.90], 0.9001)
    values = {"galsim_s0": (0.90, 5.0), "galsim_s1": (0.92, 6.0), "jax_s0": (0.93, 7.5), "jax_s1": (0.95, 4.0)}
    metrics = {
        "methods": {
            n: {"headline": {"recall": {"value": r, "std": 0.01}, "mape": {"value": m, "std": None}}}
            for n, (r, m) in values.items()
        }
    }
    rows = bench.comparison(metrics, names)
    assert [r["key"] for r in rows] == ["recall", "mape"]
    assert rows[0]["spread"] == pytest.approx(0.02) and rows[0]["outside"] == ["jax_s1"]
    assert rows[1]["spread"] == pytest.approx(1.0) and rows[1]["outside"] == ["jax_s0"]
    history = [{"val_nll": "20.5", "seconds": "10"}, {"val_nll": "9.25", "seconds": "12"}]
    text = bench.table(rows, names, {n: history for n, _, _ in names})
    assert "| recall | 0.9000 +- 0.0100 | 0.9300 +- 0.0100 | 0.9200 +- 0.0100 | 0.9500 +- 0.0100 | 0.0200 |" in text
    assert "| mape | 5.0000 | 7.5000 | 6.0000 | 4.0000 | 1.0000 | OUTSIDE: jax_s0 |" in text  # no error: none shown
    assert "OUTSIDE: jax_s1" in text
    assert "| 2 | 9.25 | 9.25 | 9.25 | 9.25 |" in text and "| training s | 22 | 22 | 22 | 22 |" in text


@pytest.mark.fast
def test_artifact_spurious_matches_the_catalog_in_the_truths_pixel_convention():
    """The predictor's table gives 0-based pixel centres; the true catalog pixels from the edge: the benchmark
    compares them in the arrays' convention (a source at array x = 6.5 is table x = 6.0)."""
    from npejax import catalogs

    bench = _load("artifact_spurious")

    class Fake:
        def catalog(self, images, background, psf):
            table = Table(dict(image=[0], x=[6.0], y=[9.5], prob_source=[0.9]))
            table.meta["PIXCONV"] = catalogs.CENTER0
            return table

    pred = bench.predictor_sources(Fake(), None, None, None)
    np.testing.assert_array_equal(pred["x"], [6.5])
    np.testing.assert_array_equal(pred["y"], [10.0])
    truth = dict(image=np.array([0]), x=np.array([7.2]), y=np.array([10.5]), flux=np.ones(1))
    np.testing.assert_array_equal(bench.unmatched(pred, truth, 1, 1.0), [0])  # 0.86 px apart (1.56 unconverted)
