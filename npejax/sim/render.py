"""GalSim renderer: catalog + field (PSF, background, gain, calibration) -> sky-subtracted image in nmgy.

Rendering works in electrons (electrons = nmgy * gain / calibration). Stars are the field PSF (two
Gaussians + a Moffat truncated at ``psf_trunc_pixels``, :mod:`npejax.sim.psf`) scaled by their flux; galaxies
are an exponential disk plus a de Vaucouleurs bulge, each sheared by its own axis ratio at the shared
angle, convolved with the PSF and the 1-pixel box.

``method='kspace'`` (default) works the way GalSim's own FFT drawing does, with less repeated work:
GalSim evaluates each galaxy's Fourier transform (``_drawKImage``) on the half-plane grid of a periodic
stamp whose size is GalSim's folding size 2 pi / stepk, up to the PSF's maxk; that is multiplied by the
PSF x pixel transfer function (analytic Gaussians + Hankel-transformed Moffat, tabulated once per bank)
and summed back to real space only at the pixels where stamp and image overlap. Stars need no GalSim
call at all. ``method='drawimage'`` calls GalSim's ``drawImage(method='fft')`` per source: slower,
kept as the reference (the two agree to about 0.2% of the peak; tests check 0.5%).

Bright stars are drawn in real space. The k-space star is cut at the PSF's maxk (``maxk_threshold``), which
rings at about 1e-5 of the flux per pixel out to the stamp edge, both signs: invisible for faint stars but,
for the brightest stars of the prior (r 7.85, 7e5 nmgy, SPEC.md), 100+ sigma of pixel noise and negative
expected counts (NaN pixels under Gaussian noise). So a star whose k-space error (measured once per field
against the real-space star) would exceed :data:`STAR_KSPACE_TOLERANCE` of the pixel noise is integrated
over pixels directly (:func:`_add_star_pixels`): Gaussians exactly (erf), the truncated Moffat by
Gauss-Legendre quadrature, exact chords where its truncation circle crosses a pixel. That is the
six-parameter formula of :func:`npejax.sim.psf.profile` to about 5e-9 of the flux per pixel (a few electrons
for the brightest star), at about 1 ms per star. With the default settings the switch sits near r 16.9
(r 15.4 to 19.8 over the synthetic bank). The ``drawimage`` reference path rings the same way; above the
same switch it draws stars with GalSim's ``maxk_threshold`` lowered to 1e-5 (within about 3 sigma, no
negative counts).

Sources near the edge are drawn partially, never wrapped. The expected counts lambda = sources +
background get noise (``gaussian``: N(lambda, lambda), the paper's approximation; ``poisson``: exact;
``none``: noiseless), then the background is subtracted and the image converted back to nmgy.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings

import galsim
import numpy as np
from scipy import special

from npejax.sim import artifacts as artifacts_lib
from npejax.sim import fields as fields_lib
from npejax.sim import psf as psf_lib
from npejax.sim import settings

NOISE_MODELS = ("gaussian", "poisson", "none")


@dataclasses.dataclass(frozen=True)
class RenderConfig:
    """Renderer settings (``config.render``; the values are in ``configs/default.py``, none here). Lengths in
    pixels unless named otherwise."""

    pixel_scale_arcsec: float  # arcsec per pixel (galaxy radii are in arcsec)
    noise: str  # one of NOISE_MODELS
    psf_trunc_pixels: float  # radius at which the PSF's Moffat term is truncated
    max_stamp_size: int  # pixels; caps the periodic stamp of the largest galaxies
    method: str  # "kspace", or "drawimage": one GalSim drawImage per source (slower reference)
    folding_threshold: float  # GalSim GSParams
    maxk_threshold: float

    def __post_init__(self):
        if self.noise not in NOISE_MODELS:
            raise ValueError(f"render.noise must be one of {NOISE_MODELS}, got {self.noise!r}")
        if self.method not in ("kspace", "drawimage"):
            raise ValueError(f"render.method must be 'kspace' or 'drawimage', got {self.method!r}")
        if self.pixel_scale_arcsec <= 0 or self.psf_trunc_pixels <= 0:
            raise ValueError("render: pixel_scale_arcsec and psf_trunc_pixels must be positive")

    @classmethod
    def from_config(cls, config) -> RenderConfig:
        """Builds the settings from the ``config.render`` ConfigDict (one key per field)."""
        return settings.from_config(cls, "render", config)


STAR_KSPACE_TOLERANCE = 0.1  # largest k-space star error in pixel-noise sigmas (sky + star); brighter: real space
_STAR_NODES, _STAR_WEIGHTS = np.polynomial.legendre.leggauss(3)  # Moffat quadrature per pixel side
_STAR_NODES, _STAR_WEIGHTS = (_STAR_NODES + 1) / 2, _STAR_WEIGHTS / 2  # on [0, 1]
_STAR_EDGE_ROWS = 8  # midpoint rows per pixel where the Moffat's truncation circle crosses
_BRIGHT_STAR_MAXK_THRESHOLD = 1e-5  # GalSim maxk_threshold of bright stars in the drawimage path
_FFT_SIZES = (32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
_TABLE_POINTS = 385
_TABLE_KMAX = 1.5 * math.pi  # radians per pixel; beyond the Nyquist frequency pi


def _k_grid(size: int, maxk: float) -> tuple[np.ndarray, np.ndarray]:
    """Wavenumbers (ky [2M+1], kx [M+1], radians per pixel) of a ``size``-periodic stamp up to ``maxk``."""
    dk = 2 * math.pi / size
    m = min(size // 2 - 1, math.ceil(maxk / dk))
    return dk * np.arange(-m, m + 1), dk * np.arange(m + 1)


def _draw_kimage(obj: galsim.GSObject, size: int, m: int) -> np.ndarray:
    """GalSim k-space values of ``obj`` on the half-plane sub-grid of :func:`_k_grid`, [2m+1, m+1] complex."""
    kimage = galsim.ImageCD(galsim.BoundsI(0, m, -m, m), scale=2 * math.pi / size)
    obj._drawKImage(kimage)  # the half-plane fill GalSim's own drawFFT uses
    return kimage.array


@functools.lru_cache(maxsize=16)
def _phase_table(size: int) -> np.ndarray:
    """exp(i k_j r) for integer pixel offsets r and wavenumbers k_j = 2 pi j / size, both in
    [-size/2, size/2); indexed [r + size/2, j + size/2]."""
    n = np.arange(-(size // 2), size - size // 2)
    return np.exp(2j * math.pi / size * np.outer(n, n))


def _add_band_limited(
    image: np.ndarray, kvalues: np.ndarray, ky: np.ndarray, kx: np.ndarray, size: int, x: float, y: float
) -> None:
    """Adds a profile given by its k-space values (half plane, kx >= 0) centred at edge-based (x, y).

    Evaluates the inverse DFT of a ``size``-periodic stamp directly at the pixel centres where stamp and
    image overlap: exact for the band-limited (PSF-convolved) profile, and no FFT of the whole stamp.
    The sub-pixel part of the position is a phase on ``kvalues``; integer offsets come from a table.
    """
    h, w = image.shape
    half = size // 2
    col, row = math.floor(x), math.floor(y)
    r0, r1 = max(row - half + 1, 0), min(row + half, h)
    c0, c1 = max(col - half + 1, 0), min(col + half, w)
    if r0 >= r1 or c0 >= c1:
        return
    m = kx.size - 1  # ky = dk * (-m..m), kx = dk * (0..m)
    weights = np.full(kx.shape, 2.0)
    weights[0] = 1.0  # kx > 0 stands for +kx and -kx (Hermitian); kx = 0 once
    phase_y = np.exp(1j * ky * (row + 0.5 - y))
    phase_x = np.exp(1j * kx * (col + 0.5 - x)) * weights
    table = _phase_table(size)
    ey = table[r0 - row + half : r1 - row + half, half - m : half + m + 1]
    ex = table[half : half + m + 1, c0 - col + half : c1 - col + half]
    stamp = ey @ ((kvalues * phase_y[:, None] * phase_x[None, :]) @ ex)
    image[r0:r1, c0:c1] += stamp.real / size**2


def _add_star_pixels(image: np.ndarray, params: np.ndarray, trunc: float, x: float, y: float, flux: float) -> None:
    """Adds a star of ``flux`` centred at edge-based (x, y): :func:`npejax.sim.psf.profile` (``params``,
    Moffat truncated at radius ``trunc`` pixels) integrated over each pixel of ``image``, in real space.

    The Gaussians are separable, so their pixel integrals are products of erf differences (exact). The
    Moffat is integrated by Gauss-Legendre quadrature (:data:`_STAR_NODES` per pixel side); in the pixels that
    its truncation circle crosses, by :data:`_STAR_EDGE_ROWS` midpoint rows (columns near the circle's top and
    bottom), each integrated exactly over its chord inside the circle (Gauss-Legendre again), so the jump at
    the circle costs little accuracy.
    """
    h, w = image.shape
    s1, s2, sp, beta, b, p0 = (float(v) for v in params)
    total = float(psf_lib.term_fluxes(params, trunc).sum())
    rows, cols = np.arange(h + 1) - y, np.arange(w + 1) - x  # pixel edges relative to the centre
    for sigma, peak in ((s1, 1.0), (s2, b)):
        if peak > 0:
            scale = math.sqrt(2.0) * sigma
            iy, ix = np.diff(special.erf(rows / scale)) / 2, np.diff(special.erf(cols / scale)) / 2
            image += (flux * peak * 2 * math.pi * sigma**2 / total) * np.outer(iy, ix)
    r0, r1 = max(math.floor(y - trunc), 0), min(math.floor(y + trunc) + 1, h)
    c0, c1 = max(math.floor(x - trunc), 0), min(math.floor(x + trunc) + 1, w)
    if p0 <= 0 or r0 >= r1 or c0 >= c1:
        return
    width2, trunc2 = beta * sp**2, trunc**2

    def moffat(r2):  # peak-normalized Moffat where r2 <= trunc^2, 0 outside
        out = np.zeros(r2.shape)
        inside = r2 <= trunc2
        out[inside] = np.exp(np.log(1.0 + r2[inside] / width2) * (-beta / 2))
        return out

    lo_y, lo_x = np.arange(r0, r1) - y, np.arange(c0, c1) - x  # pixel's low edges relative to the centre
    dy, dx = lo_y[:, None] + _STAR_NODES[None, :], lo_x[:, None] + _STAR_NODES[None, :]  # [pixels, nodes]
    values = moffat(dy[:, :, None, None] ** 2 + dx[None, None, :, :] ** 2)
    pixels = np.einsum("ajbk,j,k->ab", values, _STAR_WEIGHTS, _STAR_WEIGHTS)
    # pixels the circle crosses: nearest point inside it, farthest corner outside
    near_y = np.where((lo_y <= 0) & (lo_y + 1 >= 0), 0.0, np.minimum(np.abs(lo_y), np.abs(lo_y + 1)))
    near_x = np.where((lo_x <= 0) & (lo_x + 1 >= 0), 0.0, np.minimum(np.abs(lo_x), np.abs(lo_x + 1)))
    far_y, far_x = np.maximum(np.abs(lo_y), np.abs(lo_y + 1)), np.maximum(np.abs(lo_x), np.abs(lo_x + 1))
    ey, ex = np.nonzero(
        (near_y[:, None] ** 2 + near_x[None, :] ** 2 < trunc2) & (far_y[:, None] ** 2 + far_x[None, :] ** 2 > trunc2)
    )
    if ey.size:
        # rows across the circle's sides (|dx| >= |dy|), columns across its top and bottom: there the
        # circle's edge is a smooth function of the sampled coordinate
        across, along = lo_y[ey], lo_x[ex]
        swap = np.abs(across + 0.5) > np.abs(along + 0.5)
        across, along = np.where(swap, along, across), np.where(swap, across, along)
        sub = across[:, None] + (np.arange(_STAR_EDGE_ROWS) + 0.5) / _STAR_EDGE_ROWS  # [edge, rows]
        half = np.sqrt(np.maximum(trunc2 - sub**2, 0.0))  # half chord of the circle at each row
        start, end = np.clip(along[:, None], -half, half), np.clip(along[:, None] + 1.0, -half, half)
        nodes = start[:, :, None] + (end - start)[:, :, None] * _STAR_NODES  # [edge, rows, nodes] in the chord
        r2 = np.minimum(sub[:, :, None] ** 2 + nodes**2, trunc2)  # rounding must not drop a node
        pixels[ey, ex] = ((moffat(r2) * _STAR_WEIGHTS).sum(axis=2) * (end - start)).mean(axis=1)
    image[r0:r1, c0:c1] += (flux * p0 / total) * pixels


def _galaxy_jacobian(radius: float, q: float, angle: float) -> np.ndarray:
    """Maps a round unit-half-light-radius profile to circularized radius ``radius``, axis ratio q, angle."""
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    sq = math.sqrt(q)
    return rot @ np.diag([radius / sq, radius * sq]) @ rot.T


class Renderer:
    """Draws ``image_shape`` (H, W) images for one field bank with ``config``'s settings; caches the GalSim
    PSF of each field it has seen."""

    def __init__(self, bank: fields_lib.FieldBank, image_shape, config: RenderConfig):
        self.bank = bank
        self.image_shape = tuple(int(v) for v in image_shape)
        self.config = config
        self.gsparams = galsim.GSParams(
            folding_threshold=config.folding_threshold, maxk_threshold=config.maxk_threshold
        )
        self._disk = galsim.Exponential(half_light_radius=1.0, gsparams=self.gsparams)
        self._bulge = galsim.DeVaucouleurs(half_light_radius=1.0, gsparams=self.gsparams)
        # GalSim recomputes a Sersic's stepk/maxk on every access: keep the unit-radius values
        self._base_k = {id(b): (b.stepk, b.maxk) for b in (self._disk, self._bulge)}
        self._psf_cache: dict[int, galsim.GSObject] = {}
        self._bright_psf_cache: dict[int, galsim.GSObject] = {}
        self._tables = None
        self._star_cache: dict[int, tuple] = {}
        self._star_limit: dict[int, float] = {}
        self._psf_stepk = math.pi / config.psf_trunc_pixels  # GalSim's stepk of the truncated PSF

    def psf(self, field: int) -> galsim.GSObject:
        """Unit-flux GalSim PSF of bank field index ``field`` (cached)."""
        field = int(field)
        if field not in self._psf_cache:
            self.bank.check_index(field)
            self._psf_cache[field] = psf_lib.galsim_psf(
                self.bank.psf_params[field], self.config.psf_trunc_pixels, gsparams=self.gsparams
            )
        return self._psf_cache[field]

    def _bright_psf(self, field: int) -> galsim.GSObject:
        """The field's PSF with ``maxk_threshold`` :data:`_BRIGHT_STAR_MAXK_THRESHOLD`, for bright stars in the
        ``drawimage`` path (cached)."""
        field = int(field)
        if field not in self._bright_psf_cache:
            gsparams = galsim.GSParams(
                folding_threshold=self.config.folding_threshold, maxk_threshold=_BRIGHT_STAR_MAXK_THRESHOLD
            )
            self._bright_psf_cache[field] = psf_lib.galsim_psf(
                self.bank.psf_params[field], self.config.psf_trunc_pixels, gsparams=gsparams
            )
        return self._bright_psf_cache[field]

    def _psf_table(self, field: int) -> tuple[float, np.ndarray, float]:
        """(table step, radial transfer table of the PSF, maxk) for bank field ``field``."""
        if self._tables is None:  # the whole bank at once: one shared Bessel matrix, milliseconds
            k = np.linspace(0.0, _TABLE_KMAX, _TABLE_POINTS)
            tables = psf_lib.radial_transfer(k, self.bank.psf_params, self.config.psf_trunc_pixels)
            above = np.abs(tables) >= self.config.maxk_threshold
            last = np.where(above.any(axis=1), k.size - 1 - np.argmax(above[:, ::-1], axis=1), 1)
            self._tables = (k[1], tables, k[np.minimum(last + 1, k.size - 1)])
        step, tables, maxk = self._tables
        field = int(self.bank.check_index(field))
        return step, tables[field], float(maxk[field])

    def _psf_transfer(self, field: int, ky: np.ndarray, kx: np.ndarray) -> np.ndarray:
        """Fourier transform of PSF (x) 1-pixel box at (ky, kx), [len(ky), len(kx)]."""
        step, table, _ = self._psf_table(field)
        radius = np.hypot(ky[:, None], kx[None, :])
        transfer = np.interp(radius / step, np.arange(table.size), table, right=0.0)
        pixel = np.sinc(ky / (2 * math.pi))[:, None] * np.sinc(kx / (2 * math.pi))[None, :]
        return transfer * pixel

    def _star_kimage(self, field: int):
        """(k-values, ky, kx, size) of a unit-flux star in field ``field`` (cached)."""
        field = int(field)
        if field not in self._star_cache:
            size = self._stamp_size(self._psf_stepk)
            ky, kx = _k_grid(size, self._psf_table(field)[2])
            self._star_cache[field] = (self._psf_transfer(field, ky, kx), ky, kx, size)
        return self._star_cache[field]

    def _star_kspace_limit(self, field: int) -> float:
        """Brightest star (electrons) that the k-space path draws within :data:`STAR_KSPACE_TOLERANCE` of the
        pixel noise in field ``field`` (cached); brighter stars take :func:`_add_star_pixels`.

        The k-space error e (per unit flux, per pixel) is measured once, for a unit star at two sub-pixel
        positions, against the real-space star f. A star of F electrons stays within tolerance t in a pixel
        while F e <= t sqrt(sky + F f), i.e. F <= (t^2 f + sqrt(t^4 f^2 + 4 t^2 e^2 sky)) / (2 e^2); the sky is
        the field's lowest (``sky_grid`` minimum, a lower bound of every crop's interpolated sky) and the
        limit the smallest over the pixels.
        """
        field = int(field)
        if field not in self._star_limit:
            star_k, ky, kx, size = self._star_kimage(field)
            params, trunc = self.bank.psf_params[field], self.config.psf_trunc_pixels
            sky, tol = max(float(self.bank.sky_grid[field].min()), 0.0), STAR_KSPACE_TOLERANCE
            limit = math.inf
            for dx, dy in ((0.5, 0.5), (0.13, 0.91)):
                kspace, real = np.zeros((size, size)), np.zeros((size, size))
                _add_band_limited(kspace, star_k, ky, kx, size, size / 2 + dx, size / 2 + dy)
                _add_star_pixels(real, params, trunc, size / 2 + dx, size / 2 + dy, 1.0)
                e2 = np.maximum((kspace - real) ** 2, 1e-300)
                real = np.maximum(real, 0.0)
                bound = (tol**2 * real + np.sqrt(tol**4 * real**2 + 4 * tol**2 * e2 * sky)) / (2 * e2)
                limit = min(limit, float(bound.min()))
            self._star_limit[field] = limit
        return self._star_limit[field]

    def _galaxy(self, catalog, s: int, flux_e: float) -> tuple[galsim.GSObject, float, float]:
        """Unconvolved bulge + disk of source ``s`` in electrons, with its stepk and maxk (radians/pixel).

        stepk and maxk follow from the unit-radius bases by the shear's singular values (what GalSim
        would compute for the Transformation and Sum, without building them twice).
        """
        frac, angle = float(catalog["disk_frac"][s]), float(catalog["angle"][s])
        scale = self.config.pixel_scale_arcsec
        parts, stepk, maxk = [], math.inf, 0.0
        for base, a, q, part_flux in (
            (self._disk, catalog["disk_a"][s], catalog["disk_q"][s], flux_e * frac),
            (self._bulge, catalog["bulge_a"][s], catalog["bulge_q"][s], flux_e * (1.0 - frac)),
        ):
            if part_flux <= 0:
                continue
            a_pix, q = float(a) / scale, float(q)
            radius = a_pix * math.sqrt(q)  # circularized half-light radius, pixels
            jac = _galaxy_jacobian(radius, q, angle)
            parts.append(galsim.Transform(base, jac=jac, flux_ratio=part_flux / radius**2))
            base_stepk, base_maxk = self._base_k[id(base)]
            stepk = min(stepk, base_stepk / a_pix)  # major semi-axis a_pix = radius / sqrt(q)
            maxk = max(maxk, base_maxk / (radius * math.sqrt(q)))
        return (galsim.Add(parts) if len(parts) > 1 else parts[0]), stepk, maxk

    def _stamp_size(self, stepk: float) -> int:
        """Periodic stamp size covering GalSim's folding diameter 2 pi / stepk, capped (pixels)."""
        needed = min(2.0 * math.pi / stepk, self.config.max_stamp_size)
        return next((size for size in _FFT_SIZES if size >= needed), _FFT_SIZES[-1])

    def source_electrons(self, catalog: dict[str, np.ndarray], field: int) -> np.ndarray:
        """Noiseless source light in electrons per pixel [H, W] for one image's catalog (1-D arrays)."""
        if self.config.method == "drawimage":
            return self._source_electrons_drawimage(catalog, field)
        image = np.zeros(self.image_shape)
        to_e = float(self.bank.to_electrons(field))
        psf_maxk = self._psf_table(field)[2]
        star_k, star_ky, star_kx, star_size = self._star_kimage(field)
        for s in range(int(catalog["n_sources"])):
            x, y = float(catalog["x"][s]), float(catalog["y"][s])
            flux = float(catalog["flux"][s]) * to_e
            if not catalog["is_galaxy"][s]:
                if flux > self._star_kspace_limit(field):
                    _add_star_pixels(image, self.bank.psf_params[field], self.config.psf_trunc_pixels, x, y, flux)
                else:
                    _add_band_limited(image, flux * star_k, star_ky, star_kx, star_size, x, y)
                continue
            galaxy, stepk, maxk = self._galaxy(catalog, s, flux)
            stepk = 1.0 / math.sqrt(stepk**-2 + self._psf_stepk**-2)  # as galsim.Convolve combines them
            size = max(self._stamp_size(stepk), star_size)
            ky, kx = _k_grid(size, min(maxk, psf_maxk))
            kvalues = _draw_kimage(galaxy, size, len(kx) - 1) * self._psf_transfer(field, ky, kx)
            _add_band_limited(image, kvalues, ky, kx, size, x, y)
        return image

    def _source_electrons_drawimage(self, catalog, field: int) -> np.ndarray:
        """Reference path: one GalSim ``drawImage`` (FFT) per source onto its part of the image."""
        h, w = self.image_shape
        image = galsim.ImageD(w, h, scale=1.0)
        psf = self.psf(field)
        to_e = float(self.bank.to_electrons(field))
        for s in range(int(catalog["n_sources"])):
            x, y = float(catalog["x"][s]), float(catalog["y"][s])
            flux = float(catalog["flux"][s]) * to_e
            if catalog["is_galaxy"][s]:
                obj = galsim.Convolve([self._galaxy(catalog, s, flux)[0], psf])
            elif flux > self._star_kspace_limit(field):  # GalSim's maxk cut would ring below zero
                obj = self._bright_psf(field).withFlux(flux)
            else:
                obj = psf.withFlux(flux)
            radius = self._stamp_size(obj.stepk) // 2
            gx, gy = x + 0.5, y + 0.5  # GalSim pixel (1, 1) is centred at (1, 1); ours at (0.5, 0.5)
            ix, iy = int(round(gx)), int(round(gy))
            bounds = galsim.BoundsI(ix - radius, ix + radius, iy - radius, iy + radius) & image.bounds
            if bounds.isDefined():
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", galsim.GalSimWarning)  # "2 objects with hard edges"
                    obj.drawImage(image=image[bounds], center=galsim.PositionD(gx, gy), add_to_image=True, method="fft")
        return image.array.copy()

    def render(self, catalog, field_index, origins, rng: np.random.Generator):
        """Renders a batch. Returns ``(images, background)``, each [B, H, W] float32 in nmgy.

        ``images`` are sky-subtracted and noisy per ``config.noise``; ``background`` is the sky that was
        added and subtracted. ``field_index`` [B] indexes the bank; ``origins`` [B, 2] are crop positions.
        """
        images, background, _, _ = self._render(catalog, field_index, origins, rng, None, None)
        return images, background

    def render_artifacts(self, catalog, field_index, origins, rng, artifacts, artifact_rng):
        """:meth:`render` with the artifacts of real frames (:mod:`npejax.sim.artifacts`; ``artifacts`` an
        ArtifactSpec, drawn from ``artifact_rng``). Returns ``(images, background, mask, artifact_bits)``:
        ``mask`` [B, H, W] bool, ``artifact_bits`` [B, H, W] uint8. The noise draws from ``rng`` are the same as
        :meth:`render`'s (so with ``noise="gaussian"`` the same noise realization, with and without artifacts)."""
        return self._render(catalog, field_index, origins, rng, artifacts, artifact_rng)

    def _render(self, catalog, field_index, origins, rng, artifacts, artifact_rng):
        field_index = self.bank.check_index(field_index)
        b = len(field_index)
        h, w = self.image_shape
        images = np.empty((b, h, w), np.float32)
        background = np.empty((b, h, w), np.float32)
        mask = np.zeros((b, h, w), bool) if artifacts is not None else None
        bits = np.zeros((b, h, w), np.uint8) if artifacts is not None else None
        for i in range(b):
            single = {key: value[i] for key, value in catalog.items()}
            field = int(field_index[i])
            sources = self.source_electrons(single, field)
            sky = self.bank.background_electrons(field, origins[i], self.image_shape)
            expected = sources + sky
            if artifacts is not None:  # light that reaches the detector: spikes, satellite trails, cosmic rays
                expected, bits[i] = artifacts_lib.apply_signal(
                    artifact_rng,
                    artifacts,
                    expected,
                    sky,
                    single,
                    self.bank.psf_params[field],
                    float(self.bank.to_electrons(field)),
                )
            if self.config.noise == "gaussian":
                counts = expected + np.sqrt(expected) * rng.standard_normal(expected.shape)
            elif self.config.noise == "poisson":
                counts = rng.poisson(expected).astype(np.float64)
            else:
                counts = expected
            if artifacts is not None:  # the detector: full well and bleed, bad columns
                counts, bits[i] = artifacts_lib.apply_detector(
                    artifact_rng, artifacts, counts, bits[i], float(self.bank.gain[field])
                )
            to_nmgy = 1.0 / float(self.bank.to_electrons(field))
            images[i] = (counts - sky) * to_nmgy
            background[i] = sky * to_nmgy
            if artifacts is not None:  # masked pixels, filled in the sky-subtracted image
                images[i], mask[i], bits[i] = artifacts_lib.apply_mask(artifact_rng, artifacts, images[i], bits[i])
        return images, background, mask, bits


@functools.lru_cache(maxsize=4)
def _cached_renderer(bank, image_shape, config) -> Renderer:
    # Renderers cache per-field PSF tables (tens of ms per field when first seen): keep them across calls.
    return Renderer(bank, image_shape, config)


def renderer_for(spec_or_renderer, image_shape, what: str) -> Renderer:
    """A renderer of ``image_shape`` images for a ``pipeline.SimulationSpec`` (its bank and render settings;
    cached across calls) or a Renderer itself; ``what`` names the caller in errors (TypeError for anything
    else, ValueError for a renderer of another image shape)."""
    image_shape = tuple(int(v) for v in image_shape)
    if isinstance(spec_or_renderer, Renderer):
        renderer = spec_or_renderer
    elif hasattr(spec_or_renderer, "bank") and hasattr(spec_or_renderer, "render"):  # pipeline.SimulationSpec
        renderer = _cached_renderer(spec_or_renderer.bank, image_shape, spec_or_renderer.render)
    else:
        raise TypeError(
            f"{what}: expected a SimulationSpec or a Renderer (a field bank alone has no render "
            f"settings), got {type(spec_or_renderer).__name__}"
        )
    if tuple(renderer.image_shape) != image_shape:
        raise ValueError(f"{what}: the renderer draws {renderer.image_shape} images, the batch has {image_shape}")
    return renderer
