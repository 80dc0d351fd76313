"""Artifacts of real SDSS frames in the forward model: what the paper's simulator never draws.

Six artifacts, each a config switch and a rate (``config.artifacts`` in ``configs/default.py``; all off in every
shipped config, and with all of them off a batch is byte-identical to one simulated without this module):

=================  ============  =========================================================================
artifact           bit (label)   what is drawn, and where in the forward model
=================  ============  =========================================================================
``cosmic_rays``    1  CR         straight tracks of deposited charge (signal: added before the noise)
``saturation``     2  SATUR      counts clipped at the full well, the excess bled along the column
                                 (after the noise: the well fills with the noisy counts)
``spikes``         4  SPIKE      diffraction spikes of bright stars: part of their PSF (before the noise)
``bad_columns``    8  INTERP     whole columns replaced by the mean of their neighbours (after the noise)
``satellite``      16 SATELLITE  a trail across the image (signal: added before the noise)
``masked``         32 MASKED     rectangular blocks that carry no information, set to a fill value
=================  ============  =========================================================================

Everything here works in **electrons** of one image (``expected`` counts before the noise, ``counts`` after it,
sky included), because full well, deposited charge and Poisson noise are physics in electrons; the renderer
(:meth:`npejax.sim.render.Renderer.render`) converts to nmgy afterwards. The order, per image:
expected = sources + sky (+ spikes + satellite trail + cosmic rays) -> noise -> saturation and bleed -> bad
columns -> sky subtracted, nmgy -> masked blocks filled.

Each artifact is a pure function of a numpy Generator and the image (and the image's catalog and field where it
needs them) and returns what it adds or the modified image together with a boolean map of the pixels it affected.
:func:`apply_signal` and :func:`apply_detector` run the enabled ones and collect a per-pixel label map
``artifact_bits`` (uint8 [H, W], the bits above OR-ed) so that evaluation can count detections near an artifact
of each kind; :func:`mask_from_bits` gives ``mask`` (bool [H, W]): the pixels a real frame's mask flags as
carrying no or corrupted information (fpM planes SATUR, INTERP, CR, and masked pixels; not spikes or satellite
trails, which the SDSS pipeline does not flag).

The artifacts draw from their own stream, :func:`artifact_rng` ``(seed, batch index)``, not the batch's
(:func:`npejax.sim.pipeline.batch_rng`): a batch still depends only on ``(seed, i)``, and switching artifacts on
leaves the catalog, fields, crops and (for ``render.noise="gaussian"``) the noise draws of the batch unchanged, so
the same seed renders the same sky with and without artifacts.

Facts and their sources (``search`` of public SDSS documentation); where none was found, an assumption says so:

* Frames pipeline (Stoughton et al. 2002, the EDR paper, "Outline of frames",
  classic.sdss.org/dr7/products/general/edr_html/node38.php): "Cosmic rays are found as objects with gradients
  between adjacent pixels substantially steeper than allowed by the PSF and are interpolated over";
  "previously recognized bad columns are interpolated over using linear prediction ..., as are bleed trails from
  saturated stars"; objects on them get the CR / INTERP flags. The frame masks (fpM, classic.sdss.org/dr7/dm/
  flatFiles/fpM.php) hold 10 mask planes of 1489 x 2048 pixels (INTERP, SATUR, CR among them).
* Full well: the CCD calibration file opECalib (sdss.org/DR7/dm/flatFiles/opECalib.html) gives ``fullWellDN`` per
  amplifier in DN; the camera's values were not found. ASSUMPTION: 25000 DN above the bias (1.2e5 electrons at
  the bank's gain of 4.7 e-/DN), set so that SDSS r saturates near r 14 for a star in typical seeing: in the embedded
  bank's median-seeing field (FWHM 3.6 pixels) an r 14.0 star centred on a pixel peaks at 26200 DN with the sky, so
  stars saturate from r 14.05; from r 13.7 to 14.4 over the bank's 10th to 90th percentile fields (measured with
  the renderer; tests/test_artifacts.py checks the median field).
* Bleed: the excess charge of a saturated pixel spills into its neighbours along the column (the CCD's charge
  transfer direction), symmetric up and down (ASSUMPTION: no preferred direction), conserving the charge;
  what spills beyond the image's edge leaves the image.
* Cosmic rays: 0.9 events per cm^2 per minute at sea level (ben.davies.net/cosmicrays2.htm, the "expected"
  ambient rate); ASSUMPTION: twice that at Apache Point (2788 m). SDSS pixels are 24 um and each charge packet
  integrates for 53.9 s (drift scan), so 1e6 pixels = 5.76 cm^2 collect 1.8 * 5.76 * 0.898 = 9.3 events:
  ``rate_per_mpix = 9.3`` (0.06 per 80 x 80 image, 28 per 2048 x 1489 frame). Track lengths, charge per
  pixel and the fraction the pipeline finds (flags CR) and interpolates over: ASSUMPTIONS (see
  ``configs/default.py``); what is drawn is the residual that remains in the frame.
* Diffraction spikes: bright SDSS stars show four spikes "like the points of a compass" -- a horizontal and a
  vertical bar in north-up images (Galaxy Zoo Talk, talk.galaxyzoo.org, "diffraction spikes of the SDSS kind";
  "produced by ... the four vanes which hold the secondary mirror"). SDSS frame columns run along the scan,
  so in frame pixels the spikes lie along rows and columns: ``angle_deg = 0``. Flux in the spikes and their
  profile along the spike (I ~ r^-2, the far field of a straight vane): ASSUMPTIONS.
* Satellite trails: SDSS shows them (cas.sdss.org/dr4 "Famous places - Artefakte": satellites crossing the
  field, seen in one filter only); their rate per frame and brightness were not found: ASSUMPTIONS.
* Bad columns: SDSS lists "Bad CCD columns" among its imaging caveats (sdss3.org/dr10/imaging/caveats.php);
  their number per CCD was not found: ASSUMPTION 1e-3 per column (two per 2048-column CCD).
* Masked regions: pixels with no data (NaN or zero inverse variance in a frame or a coadd). Rate and sizes:
  ASSUMPTIONS.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

# Per-pixel labels (bits of ``artifact_bits``).
BITS = {"cosmic_rays": 1, "saturation": 2, "spikes": 4, "bad_columns": 8, "satellite": 16, "masked": 32}
ARTIFACTS = tuple(BITS)
# Bits a real frame's mask flags (fpM SATUR, INTERP, CR; NaN / zero inverse variance): the batch's ``mask``.
FLAGGED_BITS = BITS["saturation"] | BITS["bad_columns"] | BITS["cosmic_rays"] | BITS["masked"]
# Batch keys added when any artifact is on (npejax.schema.ARTIFACT_KEYS).
KEYS = ("mask", "artifact_bits")
ARTIFACT_STREAM = 0xA27  # third word of the artifacts' SeedSequence: a stream apart from batch_rng's
# A smooth artifact (spike, satellite trail) labels the pixels where it adds more than this many sigma of the
# sky's noise: elsewhere it is below what a detector could see.
LABEL_SIGMA = 1.0
FILLS = ("zero", "nan")


@dataclasses.dataclass(frozen=True)
class CosmicRays:
    enabled: bool
    rate_per_mpix: float  # Poisson mean of hits per 1e6 pixels per exposure
    length: tuple[float, float]  # track length in pixels, uniform
    electrons: tuple[float, float]  # residual charge per pixel of the track, log-uniform (electrons)
    flagged: float  # fraction of hits the pipeline finds (CR bit in ``mask``)


@dataclasses.dataclass(frozen=True)
class Saturation:
    enabled: bool
    full_well_dn: float  # DN above the bias; electrons = full_well_dn * the field's gain


@dataclasses.dataclass(frozen=True)
class Spikes:
    enabled: bool
    max_mag: float  # stars brighter than this r magnitude get spikes
    flux_fraction: float  # fraction of the star's flux in its four spikes (from the core radius outwards)
    angle_deg: float  # angle of the first spike from the +x (row) axis, counterclockwise; the others +90, ...
    core_radius: float  # pixels; spikes start here (inside it the PSF core dominates)


@dataclasses.dataclass(frozen=True)
class BadColumns:
    enabled: bool
    per_column: float  # probability that a column of the image is bad


@dataclasses.dataclass(frozen=True)
class Satellite:
    enabled: bool
    rate: float  # Poisson mean of trails per image
    nmgy_per_pixel: tuple[float, float]  # trail flux per pixel of its length, log-uniform (nmgy)


@dataclasses.dataclass(frozen=True)
class Masked:
    enabled: bool
    rate: float  # Poisson mean of masked blocks per image
    size: tuple[int, int]  # side of a block in pixels, uniform integers, each side drawn apart
    fill: str  # value of masked pixels in the image: "zero" or "nan"


_SECTIONS = {
    "cosmic_rays": CosmicRays,
    "saturation": Saturation,
    "spikes": Spikes,
    "bad_columns": BadColumns,
    "satellite": Satellite,
    "masked": Masked,
}


@dataclasses.dataclass(frozen=True)
class ArtifactSpec:
    """Settings of every artifact (``config.artifacts``; values in ``configs/default.py``, none here)."""

    cosmic_rays: CosmicRays
    saturation: Saturation
    spikes: Spikes
    bad_columns: BadColumns
    satellite: Satellite
    masked: Masked

    def __post_init__(self):
        def check(ok, what, value, expected):
            if not ok:
                raise ValueError(f"config.artifacts.{what} = {value!r}: expected {expected}")

        cr, sat, sp, bc, tr, ma = (getattr(self, name) for name in _SECTIONS)
        check(cr.rate_per_mpix >= 0, "cosmic_rays.rate_per_mpix", cr.rate_per_mpix, ">= 0")
        check(0 < cr.length[0] <= cr.length[1], "cosmic_rays.length", cr.length, "0 < min <= max pixels")
        check(0 < cr.electrons[0] <= cr.electrons[1], "cosmic_rays.electrons", cr.electrons, "0 < min <= max")
        check(0 <= cr.flagged <= 1, "cosmic_rays.flagged", cr.flagged, "a fraction in [0, 1]")
        check(sat.full_well_dn > 0, "saturation.full_well_dn", sat.full_well_dn, "> 0 DN")
        check(0 <= sp.flux_fraction < 1, "spikes.flux_fraction", sp.flux_fraction, "in [0, 1)")
        check(sp.core_radius > 0, "spikes.core_radius", sp.core_radius, "> 0 pixels")
        check(0 <= bc.per_column <= 1, "bad_columns.per_column", bc.per_column, "a probability in [0, 1]")
        check(tr.rate >= 0, "satellite.rate", tr.rate, ">= 0")
        lo, hi = tr.nmgy_per_pixel
        check(0 < lo <= hi, "satellite.nmgy_per_pixel", tr.nmgy_per_pixel, "0 < min <= max nmgy")
        check(ma.rate >= 0, "masked.rate", ma.rate, ">= 0")
        check(1 <= ma.size[0] <= ma.size[1], "masked.size", ma.size, "1 <= min <= max pixels")
        check(ma.fill in FILLS, "masked.fill", ma.fill, f"one of {FILLS}")

    @classmethod
    def from_config(cls, config) -> ArtifactSpec:
        """From the ``config.artifacts`` ConfigDict: one sub-section per artifact, one key per field (lists become
        tuples); ValueError naming an unknown or missing key."""
        sections = {}
        given = dict(config)
        unknown = sorted(set(given) - set(_SECTIONS))
        if unknown:
            raise ValueError(f"config.artifacts: unknown sections {unknown}; expected {sorted(_SECTIONS)}")
        for name, kind in _SECTIONS.items():
            if name not in given:
                raise ValueError(f"config.artifacts: missing section {name!r} (configs/default.py sets every one)")
            values = dict(given[name])
            fields = {f.name for f in dataclasses.fields(kind)}
            if set(values) != fields:
                raise ValueError(
                    f"config.artifacts.{name}: keys {sorted(values)} differ from the expected {sorted(fields)}"
                )
            sections[name] = kind(**{k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in values.items()})
        return cls(**sections)

    @property
    def enabled(self) -> tuple[str, ...]:
        """Names of the artifacts that are on."""
        return tuple(name for name in _SECTIONS if getattr(self, name).enabled)


def artifact_rng(seed: int, batch_index: int) -> np.random.Generator:
    """The artifacts' stream for batch ``batch_index`` of the simulation seeded by ``seed``: independent of
    :func:`npejax.sim.pipeline.batch_rng` ``(seed, batch_index)``, and like it a function of the two only."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(batch_index), ARTIFACT_STREAM]))


def _log_uniform(rng: np.random.Generator, lo: float, hi: float, size=None):
    return np.exp(rng.uniform(math.log(lo), math.log(hi), size))


# --- signal: added to the expected counts, before the noise --------------------------------------------------


def cosmic_rays(rng: np.random.Generator, shape, spec: CosmicRays) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cosmic-ray residuals: ``(electrons [H, W], hit [H, W] bool, flagged [H, W] bool)``.

    Poisson(rate_per_mpix * H * W / 1e6) hits, each a straight track of uniform length and direction from a
    uniform start, depositing a log-uniform charge in every pixel it crosses (sampled every 0.25 pixel; a pixel
    crossed twice counts once per track). ``flagged``: the hits the pipeline finds (each with probability
    ``spec.flagged``), which a real frame's mask flags CR.
    """
    h, w = shape
    added = np.zeros(shape)
    hit = np.zeros(shape, bool)
    flagged = np.zeros(shape, bool)
    for _ in range(rng.poisson(spec.rate_per_mpix * h * w / 1e6)):
        y0, x0 = rng.uniform(0, h), rng.uniform(0, w)
        length, theta = rng.uniform(*spec.length), rng.uniform(0, np.pi)
        charge = _log_uniform(rng, *spec.electrons)
        found = rng.random() < spec.flagged
        t = np.linspace(0.0, length, max(2, int(math.ceil(length * 4)) + 1))
        rows, cols = np.floor(y0 + t * math.sin(theta)).astype(int), np.floor(x0 + t * math.cos(theta)).astype(int)
        inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
        track = np.zeros(shape, bool)
        track[rows[inside], cols[inside]] = True
        added[track] += charge
        hit |= track
        if found:
            flagged |= track
    return added, hit, flagged


def _line_profile(shape, y0, x0, theta, sigma):
    """(along [H, W], across [H, W]): pixel centres' coordinates along and across the line through (y0, x0) at
    angle ``theta`` from +x (counterclockwise in (x, y))."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    dy, dx = yy - y0, xx - x0
    c, s = math.cos(theta), math.sin(theta)
    return dx * c + dy * s, -dx * s + dy * c


def satellite_trail(
    rng: np.random.Generator, shape, spec: Satellite, to_electrons: float, sigma: float, sky: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Satellite trails: ``(electrons [H, W], label [H, W] bool)``.

    Poisson(rate) straight trails through a uniform point of the image at a uniform angle, with a log-uniform flux
    per pixel of length (``nmgy_per_pixel``, times ``to_electrons``) and a Gaussian profile across of the PSF's
    core width ``sigma`` (pixels; the satellite is a moving point source). Labelled where the trail adds more than
    :data:`LABEL_SIGMA` sigma of the sky's noise (``sky``: electrons per pixel).
    """
    added = np.zeros(shape)
    for _ in range(rng.poisson(spec.rate)):
        y0, x0 = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        theta = rng.uniform(0, np.pi)
        per_pixel = _log_uniform(rng, *spec.nmgy_per_pixel) * to_electrons
        _, across = _line_profile(shape, y0, x0, theta, sigma)
        added += per_pixel * np.exp(-(across**2) / (2 * sigma**2)) / (math.sqrt(2 * math.pi) * sigma)
    return added, added > LABEL_SIGMA * np.sqrt(sky)


def spikes(
    stars_xy: np.ndarray, stars_electrons: np.ndarray, spec: Spikes, sigma: float, shape, sky: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Diffraction spikes of the given stars: ``(electrons [H, W], label [H, W] bool)``.

    Four spikes per star at ``angle_deg + k * 90`` degrees, each carrying ``flux_fraction / 4`` of the star's
    electrons (on an unbounded image) from ``core_radius`` r0 outwards with a profile r0 / r^2 along the spike
    (integral 1 from r0 to infinity) and a Gaussian of the PSF core width ``sigma`` across it. No randomness: the
    spikes are part of the star's PSF. Labelled where they add more than :data:`LABEL_SIGMA` sigma of the sky's
    noise (``sky``: electrons per pixel).
    """
    added = np.zeros(shape)
    r0 = spec.core_radius
    for (x, y), flux in zip(np.asarray(stars_xy, float), np.asarray(stars_electrons, float)):
        for k in range(4):
            theta = math.radians(spec.angle_deg) + k * math.pi / 2
            along, across = _line_profile(shape, y, x, theta, sigma)
            radial = np.where(along >= r0, r0 / np.maximum(along, r0) ** 2, 0.0)
            gauss = np.exp(-(across**2) / (2 * sigma**2)) / (math.sqrt(2 * math.pi) * sigma)
            added += flux * spec.flux_fraction / 4 * radial * gauss
    return added, added > LABEL_SIGMA * np.sqrt(sky)


# --- detector: applied to the noisy counts --------------------------------------------------------------------


def saturate(counts: np.ndarray, full_well: float) -> tuple[np.ndarray, np.ndarray]:
    """Saturation with bleed along the columns: ``(counts [H, W], label [H, W] bool)``.

    Every run of pixels above ``full_well`` (electrons) in a column is clipped to it; its excess charge spills
    into the pixels above and below the run (half each way), each filled up to the full well before the charge
    moves on; charge reaching the image's edge leaves the image. So the image's charge is conserved up to what
    leaves it. The label covers the clipped pixels and every pixel the charge reached.
    """
    out = np.array(counts, dtype=np.float64)
    label = np.zeros(out.shape, bool)
    h = out.shape[0]
    for c in np.flatnonzero((out > full_well).any(axis=0)):
        col = out[:, c]
        over = col > full_well
        starts = np.flatnonzero(over & ~np.r_[False, over[:-1]])
        ends = np.flatnonzero(over & ~np.r_[over[1:], False]) + 1
        for r0, r1 in zip(starts, ends):
            excess = float((col[r0:r1] - full_well).sum())
            col[r0:r1] = full_well
            label[r0:r1, c] = True
            for step, remaining, r in ((-1, excess / 2, r0 - 1), (1, excess / 2, r1)):
                while remaining > 0 and 0 <= r < h:
                    take = min(max(full_well - col[r], 0.0), remaining)
                    col[r] += take
                    remaining -= take
                    label[r, c] = True
                    r += step
    return out, label


def bad_columns(rng: np.random.Generator, counts: np.ndarray, spec: BadColumns) -> tuple[np.ndarray, np.ndarray]:
    """Bad columns, interpolated over as the frames pipeline does: ``(counts [H, W], label [H, W] bool)``.

    Each column is bad with probability ``per_column``; a run of adjacent bad columns is replaced by the linear
    interpolation between the good columns on either side (or a copy of the one good side at the image's edge;
    left as it was when every column is bad). The label is the bad columns.
    """
    out = np.array(counts, dtype=np.float64)
    h, w = out.shape
    bad = rng.random(w) < spec.per_column
    label = np.zeros(out.shape, bool)
    label[:, bad] = True
    good = np.flatnonzero(~bad)
    if bad.any() and good.size:
        for c in np.flatnonzero(bad):
            left, right = good[good < c], good[good > c]
            if left.size and right.size:
                a, b = left[-1], right[0]
                f = (c - a) / (b - a)
                out[:, c] = (1 - f) * out[:, a] + f * out[:, b]
            else:
                out[:, c] = out[:, left[-1] if left.size else right[0]]
    return out, label


def masked_regions(rng: np.random.Generator, shape, spec: Masked) -> np.ndarray:
    """Masked blocks: label [H, W] bool of Poisson(rate) rectangles with sides uniform in ``size`` at uniform
    positions (clipped at the edge). The caller sets them to the fill value (:func:`fill_value`)."""
    h, w = shape
    label = np.zeros(shape, bool)
    for _ in range(rng.poisson(spec.rate)):
        bh, bw = (int(rng.integers(spec.size[0], spec.size[1] + 1)) for _ in range(2))
        r, c = int(rng.integers(0, h)), int(rng.integers(0, w))
        label[r : r + bh, c : c + bw] = True
    return label


def fill_value(spec: Masked) -> float:
    """The image value of masked pixels: 0.0 (the documented stand-in until a network reads ``mask``) or NaN."""
    return float("nan") if spec.fill == "nan" else 0.0


# --- one image ------------------------------------------------------------------------------------------------


def apply_signal(
    rng: np.random.Generator,
    spec: ArtifactSpec,
    expected: np.ndarray,
    sky: np.ndarray,
    catalog: dict,
    psf_params: np.ndarray,
    to_electrons: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Adds the enabled signal artifacts (spikes, satellite trails, cosmic rays) to one image's ``expected``
    electrons (sky included; ``sky`` alone gives the noise level for labels); ``catalog`` is the image's (1-D
    arrays, fluxes in nmgy). Returns ``(expected, artifact_bits [H, W] uint8)``."""
    bits = np.zeros(expected.shape, np.uint8)
    expected = np.array(expected, dtype=np.float64)
    sigma = float(psf_params[0])  # psField s1: the core's Gaussian width, pixels
    if spec.spikes.enabled:
        n = int(catalog["n_sources"])
        flux = np.asarray(catalog["flux"][:n], float)
        is_star = ~np.asarray(catalog["is_galaxy"][:n], bool)
        bright = is_star & (flux > 10 ** ((22.5 - spec.spikes.max_mag) / 2.5))
        xy = np.stack([catalog["x"][:n], catalog["y"][:n]], axis=1)[bright]
        added, label = spikes(xy, flux[bright] * to_electrons, spec.spikes, sigma, expected.shape, sky)
        expected += added
        bits[label] |= BITS["spikes"]
    if spec.satellite.enabled:
        added, label = satellite_trail(rng, expected.shape, spec.satellite, to_electrons, sigma, sky)
        expected += added
        bits[label] |= BITS["satellite"]
    if spec.cosmic_rays.enabled:
        added, hit, flagged = cosmic_rays(rng, expected.shape, spec.cosmic_rays)
        expected += added
        bits[hit] |= BITS["cosmic_rays"]
        bits[hit & ~flagged] |= _UNFLAGGED_CR
    return expected, bits


_UNFLAGGED_CR = 128  # internal: a cosmic ray the pipeline missed (not in ``mask``); dropped from the labels


def apply_detector(
    rng: np.random.Generator, spec: ArtifactSpec, counts: np.ndarray, bits: np.ndarray, gain: float
) -> tuple[np.ndarray, np.ndarray]:
    """Applies saturation (full well ``full_well_dn * gain`` electrons) and bad columns to one image's noisy
    ``counts`` (electrons, sky included); returns ``(counts, bits)``."""
    bits = bits.copy()
    if spec.saturation.enabled:
        counts, label = saturate(counts, spec.saturation.full_well_dn * gain)
        bits[label] |= BITS["saturation"]
    if spec.bad_columns.enabled:
        counts, label = bad_columns(rng, counts, spec.bad_columns)
        bits[label] |= BITS["bad_columns"]
    return counts, bits


def apply_mask(
    rng: np.random.Generator, spec: ArtifactSpec, image: np.ndarray, bits: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fills the masked blocks of one sky-subtracted image (nmgy); returns ``(image, mask [H, W] bool,
    artifact_bits [H, W] uint8)``."""
    image, bits = image.copy(), bits.copy()
    if spec.masked.enabled:
        label = masked_regions(rng, image.shape, spec.masked)
        image[label] = fill_value(spec.masked)
        bits[label] |= BITS["masked"]
    missed = (bits & _UNFLAGGED_CR).astype(bool)  # cosmic rays the pipeline did not find: not flagged CR
    effective = np.where(missed, bits & ~np.uint8(BITS["cosmic_rays"]), bits)
    return image, mask_from_bits(effective), bits & ~np.uint8(_UNFLAGGED_CR)


def mask_from_bits(bits: np.ndarray) -> np.ndarray:
    """``mask``: the pixels whose ``artifact_bits`` include a bit a frame's mask flags (:data:`FLAGGED_BITS`)."""
    return (np.asarray(bits) & FLAGGED_BITS).astype(bool)


def describe(spec: ArtifactSpec) -> dict:
    """The settings as a JSON-able dict (a dataset manifest's ``spec.artifacts``)."""
    return dataclasses.asdict(spec)
