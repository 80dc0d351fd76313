r"""Prediction throughput: 80 x 80 images/s and whole SDSS frames/s of a network, with compile time and peak memory.

    python benchmarks/predict_throughput.py --config configs/psf_aware.py [--workdir runs/aware] \
        [--batch-size 256] [--repeats 10] [--frame-shape 1489,2048] [--chunk-size 512,0] [--frames 3] \
        [--config.KEY=VALUE ...] [--json out.json]

The network is freshly initialised from ``--config`` (weights do not change the work; the input statistics
are fitted to the synthetic images), or the best checkpoint of ``--workdir``
(:meth:`npejax.nn.predictor.Predictor.from_workdir`, whose config then replaces ``--config``).

Inputs are synthetic and stated in the output: Gaussian sky noise of a constant background, that of the
field bank's reference field (``config.fields.bank``; about 0.71 nmgy per pixel for the embedded bank),
with Gaussian blobs (sigma 1.5 pixels, fluxes log-uniform in 5-500 nmgy) at the prior's density
(``config.prior.sources_per_pixel``: 4 per 80 x 80 image) and that field's PSF parameters.

Measured, in this order (each phase: compile timed alone, ``--warmup`` untimed calls, then timed calls
that block on the result):

* ``images``: batches of ``--batch-size`` images of ``config.image_size`` pixels.
  ``network_images_per_s``: the jit-compiled network alone (input features, CatalogNet) on batches
  already on the device; ``predict_images_per_s``: :meth:`~npejax.nn.predictor.Predictor.predict_tiles` on
  ``--repeats`` batches in host memory (transfers, posterior summaries, the finite-output checks: what the
  ``npejax.predict`` command does per batch). ``gflop_per_image``: XLA's cost analysis of the
  network-alone forward pass (``conv_gflop_per_image``: its convolutions alone, from the jaxpr).
* ``frames``: one whole frame of ``--frame-shape`` pixels (rows, columns; default the SDSS frame, 1489 x
  2048, padded to multiples of the tile size as Predictor does) through ``predict_tiles`` per
  ``--chunk-size`` (pixels; 0: the whole frame in one network call; otherwise Predictor's overlapping
  chunks of bounded memory): ``frames_per_s`` over ``--frames`` timed frames; ``first_call_s`` includes
  the compile; then one untimed call if ``--warmup`` > 0.
* ``peak_bytes`` after each phase: on a GPU ``memory_stats()['peak_bytes_in_use']`` of the first local
  device (device memory), on a CPU the process's maximum resident set size (``resource.getrusage``; host
  memory, the Python process included). Both are the peak *so far* in the process: a later phase's figure
  includes the earlier phases, so list the cheaper chunk size first (``512,0``).
"""

from __future__ import annotations

import os
import resource
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from npejax import cli, io  # noqa: E402
from npejax.nn import inputs as inputs_lib  # noqa: E402
from npejax.nn import model as model_lib  # noqa: E402
from npejax.nn import predictor as predictor_lib  # noqa: E402
from npejax.nn import state as state_lib  # noqa: E402
from npejax.sim import fields as fields_lib  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_throughput import matmul_flops, xla_flops  # noqa: E402

BLOB_SIGMA = 1.5  # pixels
BLOB_FLUX = (5.0, 500.0)  # nmgy, log-uniform


def define_flags(fv: flags.FlagValues) -> None:
    config_flags.DEFINE_config_file(
        "config",
        os.path.join(ROOT, "configs", "psf_aware.py"),
        "Experiment config (a fresh network of its model).",
        flag_values=fv,
        lock_config=True,
    )
    flags.DEFINE_string(
        "workdir",
        None,
        "Measure this training run's best checkpoint instead (its config replaces --config).",
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "batch-size", 256, "Images per network call for the 80 x 80 images.", lower_bound=1, flag_values=fv
    )
    flags.DEFINE_integer("repeats", 10, "Timed batches of 80 x 80 images.", lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("warmup", 2, "Untimed calls after each compile.", lower_bound=0, flag_values=fv)
    flags.DEFINE_list(
        "frame-shape",
        [str(v) for v in fields_lib.SDSS_FRAME_SHAPE],
        "Frame rows,columns in pixels (default: an SDSS frame).",
        flag_values=fv,
    )
    flags.DEFINE_list(
        "chunk-size",
        [str(predictor_lib.CHUNK_SIZE), "0"],
        "Predictor chunk sizes to measure frames at, in pixels (0: whole frame in one call).",
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "frames", 3, "Timed frames per chunk size (0: skip the frames).", lower_bound=0, flag_values=fv
    )
    flags.DEFINE_integer("seed", 0, "Seed of the synthetic inputs and the fresh network.", flag_values=fv)
    flags.DEFINE_string("json", None, "Also write the results here.", flag_values=fv)
    for name in ("batch-size", "frame-shape", "chunk-size"):
        flags.DEFINE_alias(name.replace("-", "_"), name, flag_values=fv)


# --- inputs ----------------------------------------------------------------------------------------


def synthetic_inputs(
    rng: np.random.Generator, n: int, shape, background: float, sigma: float, psf_params, density: float
):
    """(images [n, H, W], background [n, H, W], psf_params [n, 6]) float32 (nmgy): sky-subtracted Gaussian
    noise of standard deviation ``sigma``, Poisson(``density`` x H x W) Gaussian blobs per image (module
    doc), a constant ``background`` and the same ``psf_params`` for every image."""
    h, w = shape
    images = rng.standard_normal((n, h, w), dtype=np.float32)
    images *= np.float32(sigma)
    yy, xx = np.mgrid[-7:8, -7:8]
    for i in range(n):
        for _ in range(rng.poisson(density * h * w)):
            r, c = int(rng.integers(0, h)), int(rng.integers(0, w))
            flux = np.exp(rng.uniform(*np.log(BLOB_FLUX)))
            dy, dx = rng.uniform(-0.5, 0.5, 2)
            stamp = (
                flux / (2 * np.pi * BLOB_SIGMA**2) * np.exp(-((yy - dy) ** 2 + (xx - dx) ** 2) / (2 * BLOB_SIGMA**2))
            )
            r0, r1, c0, c1 = max(r - 7, 0), min(r + 8, h), max(c - 7, 0), min(c + 8, w)
            images[i, r0:r1, c0:c1] += stamp[r0 - r + 7 : r1 - r + 7, c0 - c + 7 : c1 - c + 7].astype(np.float32)
    bg = np.full((n, h, w), background, np.float32)
    psf = np.broadcast_to(np.asarray(psf_params, np.float32), (n, 6)).copy()
    return images, bg, psf


def sky_of_reference(config) -> tuple[float, float, np.ndarray, str]:
    """(background nmgy/pixel, its noise sigma nmgy, PSF parameters, field name) of the bank's reference field
    (the embedded synthetic bank's when ``config.fields.bank`` is a file not on this machine)."""
    try:
        bank = fields_lib.load_bank(config.fields.bank)
    except FileNotFoundError:
        bank = fields_lib.load_bank(None)
    ref = bank.reference
    to_e = float(bank.to_electrons(ref))
    sky_e = float(np.median(bank.sky_grid[ref]))
    return sky_e / to_e, np.sqrt(sky_e) / to_e, bank.psf_params[ref].astype(np.float32), str(bank.names[ref])


# --- memory and timing -----------------------------------------------------------------------------


def peak_memory() -> tuple[int, str]:
    """(bytes, what): the device allocator's peak on an accelerator, else the process's max RSS."""
    stats = None
    try:
        stats = jax.local_devices()[0].memory_stats()
    except Exception:  # noqa: BLE001  (not implemented on some backends)
        stats = None
    if stats and stats.get("peak_bytes_in_use"):
        return int(stats["peak_bytes_in_use"]), "device memory_stats()['peak_bytes_in_use']"
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return int(kib) * 1024, "host max RSS (resource.getrusage ru_maxrss)"


def timed(fn, calls: int) -> float:
    """Seconds for ``calls`` calls of ``fn`` (each returns arrays), blocking on the last result."""
    out = None
    t0 = time.perf_counter()
    for _ in range(calls):
        out = fn()
    jax.block_until_ready(out)
    return time.perf_counter() - t0


# --- phases ----------------------------------------------------------------------------------------


def measure_images(predictor, net, images, background, psf, batch_size: int, repeats: int, warmup: int) -> dict:
    """The ``images`` phase (module doc)."""
    normalizer, variant = predictor.normalizer, predictor.variant

    def network(variables, im, bg, p):
        return net.apply(variables, normalizer.features(im, bg, p, variant), train=False)

    jitted = jax.jit(network)
    sl = slice(0, batch_size)
    args = (predictor.variables, *(jax.device_put(a[sl]) for a in (images, background, psf)))
    conv = matmul_flops(jax.make_jaxpr(jitted)(*args))
    t0 = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    flops = xla_flops(compiled, 1)  # no mesh here: one device
    if warmup:
        timed(lambda: compiled(*args), warmup)
    seconds = timed(lambda: compiled(*args), repeats)
    net_rate = repeats * batch_size / seconds
    peak_net, _ = peak_memory()

    t0 = time.perf_counter()
    predictor.predict_tiles(images[sl], background[sl], psf[sl], batch_size=batch_size)
    first_call_s = time.perf_counter() - t0
    for _ in range(warmup):
        predictor.predict_tiles(images[sl], background[sl], psf[sl], batch_size=batch_size)
    t0 = time.perf_counter()
    predictor.predict_tiles(images, background, psf, batch_size=batch_size)  # host arrays in, host arrays out
    predict_s = time.perf_counter() - t0
    peak, _ = peak_memory()
    return dict(
        batch_size=batch_size,
        image_shape=list(images.shape[1:]),
        repeats=repeats,
        compile_s=compile_s,
        network_seconds=seconds,
        network_images_per_s=net_rate,
        network_ms_per_batch=1e3 * seconds / repeats,
        gflop_per_image=None if flops is None else flops / batch_size / 1e9,
        conv_gflop_per_image=conv / batch_size / 1e9,
        network_tflops=None if flops is None else flops * repeats / seconds / 1e12,
        predict_first_call_s=first_call_s,
        predict_images=len(images),
        predict_seconds=predict_s,
        predict_images_per_s=len(images) / predict_s,
        peak_bytes_network=peak_net,
        peak_bytes=peak,
    )


def measure_frames(predictor, frame, background, psf, chunk_size: int, frames: int, warmup: int) -> dict:
    """The ``frames`` phase for one chunk size (module doc)."""
    chunk = int(chunk_size)

    def call():
        return predictor.predict_tiles(frame, background, psf, batch_size=1, chunk_size=chunk)

    t0 = time.perf_counter()
    out = call()
    first_call_s = time.perf_counter() - t0
    for _ in range(warmup):
        call()
    t0 = time.perf_counter()
    for _ in range(frames):
        out = call()  # host numpy arrays: the result is complete on return
    seconds = time.perf_counter() - t0
    peak, _ = peak_memory()
    tiles = out["prob_source"].shape[1:]
    return dict(
        frame_shape=list(frame.shape[1:]),
        tile_grid=list(tiles),
        chunk_size=chunk,
        frames=frames,
        seconds=seconds,
        s_per_frame=seconds / frames,
        frames_per_s=frames / seconds,
        first_call_s=first_call_s,
        compile_s=max(first_call_s - seconds / frames, 0.0),
        peak_bytes=peak,
    )


def fresh_predictor(config, seed: int, sample) -> predictor_lib.Predictor:
    """A Predictor of a freshly initialised network of ``config``, input statistics fitted to ``sample``
    (images, background, psf_params)."""
    net = model_lib.from_config(config)
    state = state_lib.create_state(config, net, 1, jax.random.key(seed))
    variables = state_lib.eval_variables(state)
    return predictor_lib.Predictor(
        config, variables, inputs_lib.Normalizer.fit(*sample), source="a freshly initialised network"
    )


def run(fv: flags.FlagValues) -> None:
    try:
        frame_shape = tuple(int(v) for v in fv["frame-shape"].value)
        chunk_sizes = [int(v) for v in fv["chunk-size"].value]
    except ValueError:
        raise ValueError(
            f"--frame-shape {fv['frame-shape'].value} / --chunk-size {fv['chunk-size'].value}: "
            "expected integers (rows,columns; pixels)"
        ) from None
    if len(frame_shape) != 2 or min(frame_shape) < 1:
        raise ValueError(f"--frame-shape {fv['frame-shape'].value}: expected two positive integers rows,columns")
    predictor = predictor_lib.Predictor.from_workdir(fv.workdir) if fv.workdir else None
    config = predictor.config if predictor else fv.config
    size = int(config.image_size)
    background, sigma, psf_params, field = sky_of_reference(config)
    density = float(config.prior.sources_per_pixel)
    rng = np.random.default_rng(fv.seed)
    batch_size = fv["batch-size"].value
    n_images = batch_size * fv.repeats
    images = synthetic_inputs(rng, n_images, (size, size), background, sigma, psf_params, density)
    if predictor is None:
        predictor = fresh_predictor(config, fv.seed, tuple(a[:512] for a in images))
    source = predictor.source
    for c in chunk_sizes:  # refuse a bad chunk size before any timing
        predictor.check_chunk_size(c)
    net = model_lib.from_config(config)
    n_params = state_lib.num_parameters(predictor.variables["params"])
    inputs_text = (
        f"synthetic: Gaussian sky noise (sigma {sigma:.3f} nmgy) of a constant background {background:.3f} "
        f"nmgy/pixel and the PSF of field {field} (the reference field of its bank), "
        f"Gaussian blobs (sigma {BLOB_SIGMA} px, flux {BLOB_FLUX[0]:g}-{BLOB_FLUX[1]:g} nmgy log-uniform) "
        f"at {density:g} per pixel"
    )
    device = jax.devices()[0]
    print(
        f"{source}: {n_params:,} parameters, model.dtype {config.model.dtype}, {config.model.variant}; "
        f"{device.device_kind} ({jax.__version__}); inputs {inputs_text}",
        flush=True,
    )

    r_images = measure_images(predictor, net, *images, batch_size, fv.repeats, fv.warmup)
    gflop = "n/a" if r_images["gflop_per_image"] is None else f"{r_images['gflop_per_image']:.3f}"
    print(
        f"{size} x {size} images, batch {batch_size}: network {r_images['network_images_per_s']:.1f} images/s "
        f"({r_images['network_ms_per_batch']:.2f} ms/batch, compile {r_images['compile_s']:.1f} s, {gflop} "
        f"GFLOP/image, conv {r_images['conv_gflop_per_image']:.3f}); Predictor.predict_tiles from host "
        f"{r_images['predict_images_per_s']:.1f} images/s; peak {r_images['peak_bytes'] / 2**20:.0f} MiB",
        flush=True,
    )
    r_frames = []
    if fv.frames:
        frame = synthetic_inputs(rng, 1, frame_shape, background, sigma, psf_params, density)
        for c in chunk_sizes:
            r = measure_frames(predictor, *frame, c, fv.frames, min(fv.warmup, 1))
            r_frames.append(r)
            print(
                f"frame {frame_shape[0]} x {frame_shape[1]}, chunk {c or 'whole'}: {r['frames_per_s']:.3f} "
                f"frames/s ({r['s_per_frame']:.3f} s/frame, first call {r['first_call_s']:.1f} s); peak so far "
                f"{r['peak_bytes'] / 2**20:.0f} MiB",
                flush=True,
            )
    peak, peak_source = peak_memory()
    if fv.json:
        io.write_json(
            fv.json,
            dict(
                benchmark="predict",
                jax=jax.__version__,
                device_kind=device.device_kind,
                platform=device.platform,
                devices=[str(d) for d in jax.devices()],
                source=source,
                workdir=fv.workdir,
                config_file=None if fv.workdir else config_flags.get_config_filename(fv["config"]),
                variant=config.model.variant,
                dtype=config.model.dtype,
                width=int(config.model.width),
                conv_blocks=model_lib.num_conv_blocks(int(config.model.stem_blocks), config.model.stages),
                parameters=n_params,
                inputs=inputs_text,
                peak_memory_source=peak_source,
                peak_bytes=peak,
                images=r_images,
                frames=r_frames,
            ),
        )


def main(argv=None) -> int:
    return cli.main(define_flags, run, argv, doc=__doc__)


if __name__ == "__main__":
    raise SystemExit(main())
