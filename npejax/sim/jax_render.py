"""JAX renderer: the GalSim renderer's forward model (:mod:`npejax.sim.render`) as one jit-compiled, batched
float32 function, for accelerators.

Inputs and outputs are those of :meth:`npejax.sim.render.Renderer.render`: a batch of full catalogs from the
prior (``n_sources`` [B] and :data:`npejax.schema.CATALOG_KEYS` [B, M], M = ``prior.max_sources``; ``x``, ``y``
edge-based pixels, ``flux`` nmgy, ``disk_a``, ``bulge_a`` semi-major half-light radii in arcsec, axis ratios
``disk_q``, ``bulge_q``, ``angle`` radians, ``disk_frac``), ``field_index`` [B] into the field bank (its PSF
parameters, sky grid, gain and calibration) and crop ``origins`` [B, 2]; out come ``images`` (sky-subtracted,
noisy per ``config.noise``) and ``background`` [B, H, W] float32 in nmgy. Rendering works in electrons
(nmgy * gain / calibration), as render.py does. Noise comes from ``jax.random`` with the key
:func:`batch_key` ``(seed, batch_index)``, so batch i depends only on (seed, i); the catalogs, fields and crops
of a batch are drawn by the pipeline's numpy generator as for the GalSim backend, so noiseless images of the two
backends show the same sources.

Method (the batch's stars and its galaxies are gathered into two lists, padded with zero-flux entries to one of
a few lengths (:func:`_bucket`): the work follows the sources drawn, not the catalogs' padding, and each image's
light is a segment sum over its own entries):

* stars, all of them, in real space as render.py's bright-star path (``_add_star_pixels``): the PSF's two
  Gaussians integrated exactly over every pixel of the image (erf/erfc differences, accurate in both tails;
  separable: an outer product per star); its Moffat term, truncated at ``psf_trunc_pixels`` T, on a (2 ceil(T) + 3)^2
  stamp around each star by 3 x 3 Gauss-Legendre nodes per pixel, and in the pixels that the truncation circle
  crosses (a fixed list of candidate offsets) by 8 rows x 3 nodes over the exact chords inside the circle;
  stamps are scatter-added into a canvas padded by the stamp radius and cropped. No k-space cut, so no ringing
  (the GalSim renderer's k-space stars err by up to ``render.STAR_KSPACE_TOLERANCE`` sigma below its switch).
* galaxies: exponential disk + de Vaucouleurs bulge, each sheared by its axis ratio at the shared angle, in
  Fourier space: F(k) = flux [f_d E(|J_d k|) + (1 - f_d) D(|J_b k|)] with J the shear of render.py's
  ``_galaxy_jacobian``; E(u) = (1 + (u r0)^2)^(-3/2) analytic (GalSim's Exponential), D tabulated once from
  GalSim's own ``DeVaucouleurs(half_light_radius=1).kValue`` (untruncated, unit flux, as render.py draws it;
  :func:`devaucouleurs_table`, 4096 log-spaced points, interpolated in log-log); times the PSF transfer function
  (render.py's radial table and its linear interpolation) and the pixel's sinc. The sum over a batch image's
  galaxies is built on the half-plane grid of an Ny x Nx canvas, Ny >= H + ``pad``, and inverse-FFT'd once; the
  image is the canvas's top-left H x W corner, so light wraps around only from beyond ``pad`` pixels of the
  image's far edge (:data:`DEFAULT_PAD`), never across the image. All wavenumbers up to Nyquist are kept.
  Why this way: the transform of galaxy x PSF x pixel is known in closed form (or from a table), so sampling it
  on a grid and one FFT per image gives the pixel values exactly but for the wrap-around, whose size ``pad``
  sets (measured: 432 meets the targets for the largest galaxies of the prior, 176 does not); stamps per galaxy
  would need the largest galaxy's size for every galaxy under static shapes. Contractions run at
  ``Precision.HIGHEST`` (no TF32 on GPUs); positions enter the phases as an integer part reduced exactly
  modulo the canvas and a fraction, so float32 keeps them to about 1e-7 pixel.

Measured accuracy (``python benchmarks/render_agreement.py``, 1000 prior draws of both field priors plus the
brightest stars, the largest galaxies and sources on edges and corners, 4237 sources; benchmarks/RESULTS.md,
"JAX renderer against GalSim"): against the GalSim renderer drawn accurately (:func:`reference_renderer`), the
largest per-pixel difference is 0.0025 sigma of the pixel's noise for stars (the brightest included), 0.027
sigma for galaxies brighter than r 16 (the largest ones), 0.0005 sigma for r > 16; fluxes agree to 3e-7 for
stars, 0.26% for the largest galaxies (their light beyond the canvas). Against the GalSim renderer with the
training defaults the differences are that renderer's own errors: up to 0.10 sigma for its k-space stars
(r 16-18) and 1.7 sigma for the largest bright galaxies, which its 256-pixel stamps fold.

The batch's shapes: catalogs [B, M] (any M), two source lists of :func:`_bucket` lengths, a [B, Ny, Nx/2 + 1]
spectrum; one compile per (B, list lengths). Speed: benchmarks/simulate_throughput.py ``--backend``.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import galsim
import jax
import jax.numpy as jnp
import numpy as np

from npejax.sim import fields as fields_lib
from npejax.sim import psf as psf_lib
from npejax.sim import render as render_lib

DEFAULT_PAD = 432  # pixels of canvas beyond the image (80 x 80 images: a 512 x 512 canvas)
GALAXY_CHUNK = 256  # galaxies per step when a batch's list is longer than 4 chunks (memory: C x Ny x Nx/2 floats)
_FFT_SIZES = sorted({2**a * 3**b * 5**c for a in range(13) for b in range(4) for c in range(3)})
_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(3)  # as render.py's star quadrature, on [0, 1]
_GL_NODES, _GL_WEIGHTS = (_GL_NODES + 1) / 2, _GL_WEIGHTS / 2
_EDGE_ROWS = 8  # render.py's _STAR_EDGE_ROWS
_DEV_POINTS, _DEV_UMIN, _DEV_UMAX = 4096, 1e-4, 1e5  # de Vaucouleurs table: |J k| for unit half-light radius
_HIGHEST = jax.lax.Precision.HIGHEST  # no TF32 / bfloat16 passes in the contractions


REFERENCE_GSPARAMS = dict(folding_threshold=1e-3, maxk_threshold=1e-5, max_stamp_size=1024)  # see reference_renderer


class _RealSpaceStars(render_lib.Renderer):
    def _star_kspace_limit(self, field: int) -> float:
        return 0.0  # every star on the real-space path


def reference_renderer(bank: fields_lib.FieldBank, image_shape, config: render_lib.RenderConfig):
    """The GalSim renderer (:class:`npejax.sim.render.Renderer`, k-space method) drawn accurately: every star on
    its real-space path and GalSim's GSParams tightened to :data:`REFERENCE_GSPARAMS` (folding and k-space cut
    100x and 300x below the training defaults, stamps up to 1024 pixels). What this module is measured against
    (benchmarks/render_agreement.py); the defaults' own errors are reported there too."""
    return _RealSpaceStars(bank, image_shape, dataclasses.replace(config, method="kspace", **REFERENCE_GSPARAMS))


@functools.lru_cache(maxsize=4)
def cached_renderer(bank: fields_lib.FieldBank, image_shape, config: render_lib.RenderConfig) -> JaxRenderer:
    """One :class:`JaxRenderer` per (bank, image shape, settings): its compiled function is kept across calls
    (:func:`npejax.sim.pipeline.make_renderer`)."""
    return JaxRenderer(bank, tuple(int(v) for v in image_shape), config)


def batch_key(seed: int, batch_index: int) -> jax.Array:
    """The noise key of batch ``batch_index`` of the simulation seeded by ``seed`` (depends on nothing else): each
    integer, taken modulo 2^64, folded into the key as two 32-bit words (batch indices reach 2^40: the
    normalizer's batch, npejax.nn.input_pipeline)."""
    key = jax.random.PRNGKey(0)
    for value in (int(seed), int(batch_index)):
        value %= 2**64
        for word in (value >> 32, value & 0xFFFFFFFF):
            key = jax.random.fold_in(key, np.uint32(word))
    return key


@functools.lru_cache(maxsize=4)
def devaucouleurs_table(folding_threshold: float, maxk_threshold: float) -> np.ndarray:
    """ln of GalSim's unit-flux, unit-half-light-radius de Vaucouleurs Fourier transform at
    :data:`_DEV_POINTS` wavenumbers log-spaced from :data:`_DEV_UMIN` to :data:`_DEV_UMAX` (radians per unit
    half-light radius), float64 [_DEV_POINTS]; cached (about 20 ms)."""
    gsparams = galsim.GSParams(folding_threshold=folding_threshold, maxk_threshold=maxk_threshold)
    bulge = galsim.DeVaucouleurs(half_light_radius=1.0, gsparams=gsparams)
    u = np.geomspace(_DEV_UMIN, _DEV_UMAX, _DEV_POINTS)
    values = np.array([bulge.kValue(float(v), 0.0).real for v in u])
    if not np.all(values > 0):
        raise RuntimeError("GalSim's de Vaucouleurs transform is not positive on the table's range")
    return np.log(values)


_GALAXY_KEYS = ("x", "y", "disk_frac", "angle", "disk_q", "bulge_q", "disk_a", "bulge_a")


def _bucket(n: int) -> int:
    """Length of a padded source list holding ``n``: 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, ... (four sizes per
    doubling: at most 25% padding, and few shapes to compile)."""
    size = 8
    while True:
        for step in (size, size * 5 // 4, size * 3 // 2, size * 7 // 4):
            if step >= n:
                return step
        size *= 2


def _fft_size(n: int) -> int:
    return next(s for s in _FFT_SIZES if s >= n)


def _edge_offsets(trunc: float, radius: int) -> np.ndarray:
    """Integer (row, column) offsets from (floor(y), floor(x)) of every pixel the Moffat's truncation circle
    can cross for some sub-pixel position of the star, [E, 2] int32."""
    d = np.arange(-radius, radius + 1)
    dy, dx = np.meshgrid(d, d, indexing="ij")
    # pixel (dy, dx) spans [dy - f, dy + 1 - f] relative to the star, f in [0, 1): its centre lies within
    # sqrt(2)/2 of (dy, dx), and it crosses the circle only if its centre lies within sqrt(2)/2 of the circle
    near = np.abs(np.hypot(dy, dx) - trunc) <= math.sqrt(2.0) + 1e-9
    return np.stack([dy[near], dx[near]], axis=-1).astype(np.int32)


def _interval_mass(lo, hi, scale):
    """Integral of the unit Gaussian density of width ``scale / sqrt(2)`` over [lo, hi] (lo <= hi), accurate in
    both tails (erfc of the side away from zero; erf where the interval straddles zero)."""
    a, b = lo / scale, hi / scale
    upper = 0.5 * (jax.scipy.special.erfc(a) - jax.scipy.special.erfc(b))
    lower = 0.5 * (jax.scipy.special.erfc(-b) - jax.scipy.special.erfc(-a))
    middle = 0.5 * (jax.scipy.special.erf(b) - jax.scipy.special.erf(a))
    return jnp.where(a >= 0, upper, jnp.where(b <= 0, lower, middle))


class JaxRenderer:
    """Draws ``image_shape`` (H, W) images for one field bank with ``config``'s settings (``noise``,
    ``pixel_scale_arcsec``, ``psf_trunc_pixels``; GalSim's ``folding_threshold`` and ``maxk_threshold`` only
    for the de Vaucouleurs table; ``method`` and ``max_stamp_size`` do not apply). ``pad``: canvas pixels beyond
    the image for the galaxies' Fourier sum (wrap-around only from beyond it)."""

    def __init__(
        self, bank: fields_lib.FieldBank, image_shape, config: render_lib.RenderConfig, pad: int = DEFAULT_PAD
    ):
        self.bank = bank
        self.image_shape = tuple(int(v) for v in image_shape)
        self.config = config
        if int(pad) < 0:
            raise ValueError(f"JaxRenderer: pad must be >= 0 pixels, got {pad}")
        self.pad = int(pad)
        h, w = self.image_shape
        self.canvas_shape = (_fft_size(h + self.pad), _fft_size(w + self.pad))
        self.galaxy_chunk = GALAXY_CHUNK
        trunc = float(config.psf_trunc_pixels)
        self.stamp_radius = math.ceil(trunc) + 1
        self._edges = _edge_offsets(trunc, self.stamp_radius)
        params = bank.psf_params
        totals = np.array([psf_lib.term_fluxes(p, trunc).sum() for p in params])
        k = np.linspace(0.0, render_lib._TABLE_KMAX, render_lib._TABLE_POINTS)  # render.py's PSF table
        transfer = psf_lib.radial_transfer(k, params, trunc)
        self._arrays = dict(
            psf_params=jnp.asarray(params, jnp.float32),
            psf_total=jnp.asarray(totals, jnp.float32),
            psf_table=jnp.asarray(transfer, jnp.float32),
            to_e=jnp.asarray(bank.to_electrons(np.arange(len(bank))), jnp.float32),
            sky_grid=jnp.asarray(bank.sky_grid, jnp.float32),
            dev_table=jnp.asarray(devaucouleurs_table(config.folding_threshold, config.maxk_threshold), jnp.float32),
        )
        self._table_step = float(k[1])
        self._disk_r0 = galsim.Exponential(half_light_radius=1.0).scale_radius  # r0 / half-light radius
        self._render = jax.jit(self._render_batch, static_argnames=("noise",))

    # --- sources, as lists over the whole batch --------------------------------------------------------------

    def _stars(self, src, field_index):
        """Star light in electrons [B, H, W]. ``src``: the batch's stars as a list (``x``, ``y``, ``flux``
        electrons, 0 for padding, ``image`` index into the batch), [S] each."""
        h, w = self.image_shape
        b = field_index.shape[0]
        trunc = float(self.config.psf_trunc_pixels)
        arrays = self._arrays
        field = field_index[src["image"]]
        params = arrays["psf_params"][field]  # [S, 6]
        s1, s2, sp, beta, peak2, p0 = (params[:, i] for i in range(6))
        flux = src["flux"] / arrays["psf_total"][field]  # electrons per unit peak-normalized term
        x, y = src["x"], src["y"]
        rows, cols = jnp.arange(h + 1, dtype=jnp.float32), jnp.arange(w + 1, dtype=jnp.float32)
        ey, ex = rows[None, :] - y[:, None], cols[None, :] - x[:, None]  # [S, H + 1], [S, W + 1]
        light = jnp.zeros((x.shape[0], h, w), jnp.float32)
        for sigma, peak in ((s1, 1.0), (s2, peak2)):
            scale = (math.sqrt(2.0) * sigma)[:, None]
            iy = _interval_mass(ey[:, :-1], ey[:, 1:], scale)
            ix = _interval_mass(ex[:, :-1], ex[:, 1:], scale)
            weight = flux * peak * 2 * math.pi * sigma**2
            light = light + weight[:, None, None] * iy[:, :, None] * ix[:, None, :]
        image = jax.ops.segment_sum(light, src["image"], num_segments=b)

        # Moffat: stamps of offsets -r..r around floor(y), floor(x)
        r = self.stamp_radius
        d = jnp.arange(-r, r + 1, dtype=jnp.float32)
        fy, fx = jnp.floor(y), jnp.floor(x)
        width2, trunc2 = (beta * sp**2), trunc**2
        half_beta = beta / 2

        def moffat(r2, w2, hb):  # peak-normalized, zero beyond the truncation; w2, hb broadcast against r2
            inside = r2 <= trunc2
            return jnp.where(inside, jnp.exp(jnp.log1p(jnp.where(inside, r2, 0.0) / w2) * (-hb)), 0.0)

        nodes, gw = jnp.asarray(_GL_NODES, jnp.float32), jnp.asarray(_GL_WEIGHTS, jnp.float32)
        lo_y = (fy[:, None] + d[None, :]) - y[:, None]  # [S, P] pixels' low edges relative to the star
        lo_x = (fx[:, None] + d[None, :]) - x[:, None]
        dy, dx = lo_y[:, :, None] + nodes, lo_x[:, :, None] + nodes  # [S, P, 3]
        r2 = dy[:, :, :, None, None] ** 2 + dx[:, None, None, :, :] ** 2  # [S, P, 3, P, 3]
        values = moffat(r2, width2[:, None, None, None, None], half_beta[:, None, None, None, None])
        stamp = jnp.einsum("majbk,j,k->mab", values, gw, gw, precision=_HIGHEST)

        # pixels the truncation circle crosses: exact chords, as render.py
        e = jnp.asarray(self._edges)
        ly, lx = fy[:, None] + e[None, :, 0] - y[:, None], fx[:, None] + e[None, :, 1] - x[:, None]  # [S, E]
        near_y = jnp.where((ly <= 0) & (ly + 1 >= 0), 0.0, jnp.minimum(jnp.abs(ly), jnp.abs(ly + 1)))
        near_x = jnp.where((lx <= 0) & (lx + 1 >= 0), 0.0, jnp.minimum(jnp.abs(lx), jnp.abs(lx + 1)))
        far_y, far_x = jnp.maximum(jnp.abs(ly), jnp.abs(ly + 1)), jnp.maximum(jnp.abs(lx), jnp.abs(lx + 1))
        crossing = (near_y**2 + near_x**2 < trunc2) & (far_y**2 + far_x**2 > trunc2)
        swap = jnp.abs(ly + 0.5) > jnp.abs(lx + 0.5)
        across, along = jnp.where(swap, lx, ly), jnp.where(swap, ly, lx)
        sub = across[..., None] + (jnp.arange(_EDGE_ROWS, dtype=jnp.float32) + 0.5) / _EDGE_ROWS  # [S, E, R]
        half = jnp.sqrt(jnp.maximum(trunc2 - sub**2, 0.0))
        start, end = jnp.clip(along[..., None], -half, half), jnp.clip(along[..., None] + 1.0, -half, half)
        chord_nodes = start[..., None] + (end - start)[..., None] * nodes  # [S, E, R, 3]
        r2 = jnp.minimum(sub[..., None] ** 2 + chord_nodes**2, trunc2)
        chord = moffat(r2, width2[:, None, None, None], half_beta[:, None, None, None])
        chord = ((chord * gw).sum(axis=-1) * (end - start)).mean(axis=-1)  # [S, E]
        ei, ej = e[:, 0] + r, e[:, 1] + r
        stamp = stamp.at[:, ei, ej].set(jnp.where(crossing, chord, stamp[:, ei, ej]))

        canvas = jnp.zeros((b, h + 2 * r, w + 2 * r), jnp.float32)
        bi = src["image"][:, None, None]
        ri = (fy.astype(jnp.int32)[:, None] + jnp.arange(2 * r + 1)[None, :])[:, :, None]  # canvas row of offset -r
        ci = (fx.astype(jnp.int32)[:, None] + jnp.arange(2 * r + 1)[None, :])[:, None, :]
        # a star outside the image (not from the prior) lands partly outside the canvas: dropped, never wrapped
        ri, ci = jnp.where(ri < 0, canvas.shape[1], ri), jnp.where(ci < 0, canvas.shape[2], ci)
        canvas = canvas.at[bi, ri, ci].add(stamp * (flux * p0)[:, None, None], mode="drop")
        return image + canvas[:, r : r + h, r : r + w]

    def _galaxies(self, src, field_index):
        """Galaxy light in electrons [B, H, W]. ``src``: the batch's galaxies as a list (positions, ``flux``
        electrons, 0 for padding, shapes, ``image`` index into the batch), [G] each."""
        h, w = self.image_shape
        ny, nx = self.canvas_shape
        b = field_index.shape[0]
        arrays = self._arrays
        jy = jnp.fft.fftfreq(ny, 1.0 / ny).astype(jnp.int32)  # integer wavenumbers along rows, [Ny]
        jx = jnp.arange(nx // 2 + 1, dtype=jnp.int32)  # half plane along columns, [Nx/2 + 1]
        ky, kx = (2 * math.pi / ny) * jy.astype(jnp.float32), (2 * math.pi / nx) * jx.astype(jnp.float32)

        def chunk_spectrum(src):  # [C, Ny, Nx/2 + 1] complex: each galaxy's transform, placed by its phase
            scale = float(self.config.pixel_scale_arcsec)
            c, s = jnp.cos(src["angle"]), jnp.sin(src["angle"])
            u_ = c[:, None, None] * kx[None, None, :] + s[:, None, None] * ky[None, :, None]  # [G, Ny, Nx/2+1]
            v_ = -s[:, None, None] * kx[None, None, :] + c[:, None, None] * ky[None, :, None]

            def radial(a_arcsec, q):  # |J k| for semi-major half-light radius a, axis ratio q
                a = (a_arcsec / scale)[:, None, None]
                return a * jnp.sqrt(u_**2 + (q[:, None, None] * v_) ** 2)

            ud = radial(src["disk_a"], src["disk_q"])
            disk = (1.0 + (ud * self._disk_r0) ** 2) ** -1.5
            ub = radial(src["bulge_a"], src["bulge_q"])
            dev = arrays["dev_table"]
            step = math.log(_DEV_UMAX / _DEV_UMIN) / (_DEV_POINTS - 1)
            lpos = jnp.clip((jnp.log(jnp.maximum(ub, _DEV_UMIN)) - math.log(_DEV_UMIN)) / step, 0.0, _DEV_POINTS - 1.0)
            b0 = jnp.minimum(jnp.floor(lpos).astype(jnp.int32), _DEV_POINTS - 2)
            bt = lpos - b0
            bulge = jnp.where(ub < _DEV_UMAX, jnp.exp(dev[b0] * (1 - bt) + dev[b0 + 1] * bt), 0.0)
            frac = src["disk_frac"][:, None, None]
            shape = src["flux"][:, None, None] * (frac * disk + (1.0 - frac) * bulge)  # [G, Ny, Nx/2+1], real

            # phase exp(-i k (x - 0.5)) of each source, the integer part of x reduced exactly modulo N
            def phase(pos_, n, j):
                whole = jnp.floor(pos_).astype(jnp.int32)
                rest = pos_ - whole.astype(jnp.float32) - 0.5
                turns = jnp.mod(j[None, :] * whole[:, None], n).astype(jnp.float32)
                angle = (-2 * math.pi / n) * (turns + j[None, :].astype(jnp.float32) * rest[:, None])
                return jnp.exp(1j * angle)

            return shape * phase(src["y"], ny, jy)[:, :, None] * phase(src["x"], nx, jx)[:, None, :]

        n = src["x"].shape[0]
        chunk = self.galaxy_chunk
        if n > 4 * chunk and n % chunk == 0:  # long lists (large batches) in chunks: bounded memory
            chunks = {k: v.reshape(n // chunk, chunk) for k, v in src.items()}
            zero = jnp.zeros((b, ny, nx // 2 + 1), jnp.complex64)
            spectrum = jax.lax.scan(lambda acc, c: (acc.at[c["image"]].add(chunk_spectrum(c)), None), zero, chunks)[0]
        else:
            spectrum = jax.ops.segment_sum(chunk_spectrum(src), src["image"], num_segments=b)  # [B, Ny, Nx/2+1]

        # PSF x pixel transfer function of each image's field: render.py's radial table, linear interpolation
        table = arrays["psf_table"][field_index]  # [B, T]
        pos = jnp.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2) / self._table_step
        i0 = jnp.clip(jnp.floor(pos).astype(jnp.int32), 0, table.shape[1] - 2)
        t = pos - i0
        transfer = jnp.where(pos <= table.shape[1] - 1, table[:, i0] * (1 - t) + table[:, i0 + 1] * t, 0.0)
        pixel = jnp.sinc(ky / (2 * math.pi))[:, None] * jnp.sinc(kx / (2 * math.pi))[None, :]
        keep = (jnp.abs(jy) < ny / 2)[:, None] & (jx < nx / 2)[None, :]  # Nyquist bins dropped, as render.py
        transfer = transfer * jnp.where(keep, pixel, 0.0)
        canvas = jnp.fft.irfft2(spectrum * transfer, s=(ny, nx))
        return canvas[:, :h, :w]

    def _background(self, field, origin):
        """Sky in electrons [H, W] on the crop at ``origin``: the bank's sky grid interpolated bilinearly
        (:meth:`npejax.sim.fields.FieldBank.background_electrons`)."""
        grid = self._arrays["sky_grid"][field]
        fh, fw = self.bank.frame_shape

        def weights(start, length, frame_length, nodes):
            centers = start.astype(jnp.float32) + jnp.arange(length, dtype=jnp.float32) + 0.5
            p = jnp.clip(centers * nodes / frame_length - 0.5, 0.0, nodes - 1.0)
            lo = jnp.minimum(jnp.floor(p).astype(jnp.int32), max(nodes - 2, 0))
            frac = p - lo
            return jax.nn.one_hot(lo, nodes) * (1 - frac)[:, None] + jax.nn.one_hot(lo + 1, nodes) * frac[:, None]

        wr = weights(origin[0], self.image_shape[0], fh, grid.shape[0])
        wc = weights(origin[1], self.image_shape[1], fw, grid.shape[1])
        return jnp.einsum("ha,ab,wb->hw", wr, grid, wc, precision=_HIGHEST)

    def _render_batch(self, stars, galaxies, field_index, origins, key, noise):
        arrays = self._arrays
        sources = self._stars(stars, field_index) + self._galaxies(galaxies, field_index)

        def one(light, field, origin, k):
            to_e = arrays["to_e"][field]
            sky = self._background(field, origin)
            if noise == "none":
                counts = light
            else:
                expected = jnp.maximum(light + sky, 0.0)
                if noise == "gaussian":
                    counts = expected + jnp.sqrt(expected) * jax.random.normal(k, expected.shape) - sky
                else:
                    counts = jax.random.poisson(k, expected).astype(jnp.float32) - sky
            return counts / to_e, sky / to_e

        keys = jax.random.split(key, field_index.shape[0])
        return jax.vmap(one)(sources, field_index, origins, keys)

    # --- public -----------------------------------------------------------------------------------------------

    def render_device(self, catalog, field_index, origins, key):
        """:meth:`render` without the transfer back: jax arrays on the default device.

        The batch's stars and galaxies are gathered into two lists (on the host, from ``n_sources`` and
        ``is_galaxy``), each padded with zero-flux entries to :func:`_bucket` of its length, so that the work
        follows the sources drawn rather than the catalog's padding, and few shapes are compiled."""
        field_index = self.bank.check_index(field_index)
        n = np.asarray(catalog["n_sources"])
        is_galaxy = np.asarray(catalog["is_galaxy"], bool)
        valid = np.arange(is_galaxy.shape[1])[None, :] < n[:, None]
        to_e = self.bank.to_electrons(field_index)[:, None]
        lists = []
        for which, keys in ((valid & ~is_galaxy, ("x", "y")), (valid & is_galaxy, _GALAXY_KEYS)):
            image, slot = np.nonzero(which)
            size = _bucket(image.size)
            pad = size - image.size
            src = {key_: np.pad(np.asarray(catalog[key_], np.float32)[image, slot], (0, pad)) for key_ in keys}
            src["flux"] = np.pad((np.asarray(catalog["flux"], np.float64) * to_e)[image, slot], (0, pad))
            src["image"] = np.pad(image, (0, pad)).astype(np.int32)
            lists.append(
                {key_: jnp.asarray(v, jnp.int32 if key_ == "image" else jnp.float32) for key_, v in src.items()}
            )
        return self._render(
            *lists, jnp.asarray(field_index, jnp.int32), jnp.asarray(origins, jnp.int32), key, noise=self.config.noise
        )

    def render(self, catalog, field_index, origins, key):
        """Renders a batch. Returns ``(images, background)``, each [B, H, W] float32 numpy in nmgy, as
        :meth:`npejax.sim.render.Renderer.render` (``key``: a ``jax.random`` key, e.g. :func:`batch_key`)."""
        images, background = self.render_device(catalog, field_index, origins, key)
        return np.asarray(images), np.asarray(background)
