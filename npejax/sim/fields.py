"""Bank of survey fields: per field the r-band PSF, the sky background and its spatial variation.

A :class:`FieldBank` holds, for K fields,

* ``names``        [K] str: ``"RUN-CAMCOL-FIELD"`` for SDSS fields, ``"synthetic-NNNN"`` for synthetic ones;
* ``psf_params``   [K, 6] float64: psField parameters ``(s1, s2, sP, beta, b, p0)`` (see :mod:`npejax.sim.psf`);
* ``sky_grid``     [K, gh, gw] float64: sky background in electrons per pixel on a coarse grid of nodes
  that spans the frame (node (a, b) sits at frame row ``(a + 0.5) * H / gh``, column ``(b + 0.5) * W / gw``,
  edge-based pixel coordinates); interpolated bilinearly to full resolution;
* ``gain``         [K] float64, electrons per DN;
* ``calibration``  [K] float64, nmgy per DN (so electrons = nmgy * gain / calibration);
* ``frame_shape``  (H, W) of the survey frame in pixels (SDSS: 1489 x 2048);
* ``reference``    index of the reference field used by the single-field prior ``p_one``;
* ``synthetic``    whether the fields are synthetic (never real survey measurements) and a ``description``.

``p_many`` picks a field uniformly from the bank; ``p_one`` always returns the reference field. Every image
is a crop of the frame at a uniformly drawn position, and its background is the sky grid interpolated there.

Two banks are embedded (:data:`EMBEDDED_BANKS`, named in ``config.fields.bank``), both SYNTHETIC: ``"synthetic"``,
the default (:mod:`npejax.sim.synthetic_bank`, a one-parameter PSF family), and ``"survey"``
(:mod:`npejax.sim.survey_bank`, all six PSF parameters and the sky varying over the survey's range).

:meth:`FieldBank.distance` measures how far an image's PSF parameters and background lie from a bank (a
Mahalanobis distance on :func:`field_features`), and :meth:`FieldBank.distance_threshold` is the bank's own
99.9th percentile of it: an image above it has field covariates outside the range a network trained on the bank
has seen.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import json
import os

import numpy as np

from npejax import io
from npejax.sim import interp
from npejax.sim import psf as psf_lib

SYNTHETIC_BANK_FILE = "synthetic_sdss_r_bank.npz"
SURVEY_BANK_FILE = "synthetic_sdss_r_survey_bank.npz"
EMBEDDED_BANKS = {"synthetic": SYNTHETIC_BANK_FILE, "survey": SURVEY_BANK_FILE}  # config.fields.bank name -> asset
FEATURE_NAMES = ("log s1", "log s2", "log sP", "log(beta - 2)", "log(b + 1e-3)", "log(p0 + 1e-4)", "log background")
DISTANCE_RIDGE = 0.05  # added to each feature's standard deviation (log units): differences under ~5% don't count
DISTANCE_PERCENTILE = 99.9
SDSS_FRAME_SHAPE = (1489, 2048)
_FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True, eq=False)
class FieldBank:
    names: np.ndarray
    psf_params: np.ndarray
    sky_grid: np.ndarray
    gain: np.ndarray
    calibration: np.ndarray
    frame_shape: tuple[int, int] = SDSS_FRAME_SHAPE
    reference: int = 0
    synthetic: bool = False
    description: str = ""
    source: str = "<memory>"

    def __post_init__(self):
        object.__setattr__(self, "names", np.asarray(self.names, dtype=str))
        for key in ("psf_params", "sky_grid", "gain", "calibration"):
            object.__setattr__(self, key, np.asarray(getattr(self, key), dtype=np.float64))
        object.__setattr__(self, "frame_shape", tuple(int(v) for v in self.frame_shape))
        object.__setattr__(self, "reference", int(self.reference))
        self.validate()

    def __len__(self) -> int:
        return len(self.names)

    def validate(self) -> None:
        """Raises ValueError naming the bank source, the field and the bad value."""
        k = len(self.names)
        where = f"field bank {self.source}"
        if k == 0:
            raise ValueError(f"{where}: the bank holds no fields")
        expected = {"psf_params": (k, 6), "gain": (k,), "calibration": (k,)}
        for key, shape in expected.items():
            if getattr(self, key).shape != shape:
                raise ValueError(f"{where}: {key} has shape {getattr(self, key).shape}, expected {shape}")
        if self.sky_grid.ndim != 3 or self.sky_grid.shape[0] != k or min(self.sky_grid.shape[1:]) < 1:
            raise ValueError(f"{where}: sky_grid has shape {self.sky_grid.shape}, expected ({k}, gh, gw)")
        if len(set(self.names.tolist())) != k:
            raise ValueError(f"{where}: field names are not unique")
        if not 0 <= self.reference < k:
            raise ValueError(f"{where}: reference index {self.reference} outside 0..{k - 1}")
        if min(self.frame_shape) < 1:
            raise ValueError(f"{where}: frame_shape {self.frame_shape} must be positive")
        for i, name in enumerate(self.names):
            field = f"{where}, field {str(name)!r} (index {i})"
            psf_lib.validate_psf_params(self.psf_params[i], where=field)
            for key in ("gain", "calibration"):
                value = getattr(self, key)[i]
                if not (np.isfinite(value) and value > 0):
                    raise ValueError(f"{field}: {key} must be a positive finite number, got {value}")
            sky = self.sky_grid[i]
            if not np.all(np.isfinite(sky)):
                raise ValueError(f"{field}: sky_grid contains NaN or infinite values")
            if np.any(sky <= 0):
                raise ValueError(f"{field}: sky_grid must be positive electrons per pixel, min {sky.min()}")

    def index(self, name) -> int:
        """Index of the field called ``name``, or of the field numbered ``name`` (an int or a string of digits,
        0-based: the ``field_id`` that datasets and truth catalogs store, so ``493`` is ``synthetic-0493`` of the
        embedded bank); a name is matched first. KeyError listing a few known names for an unknown name, or
        naming the bank's size for a number outside it."""
        hits = np.flatnonzero(self.names == str(name))
        if hits.size:
            return int(hits[0])
        number = name if isinstance(name, (int, np.integer)) and not isinstance(name, bool) else None
        if isinstance(name, str) and name.strip().isdigit():
            number = int(name)
        if number is not None:
            if not 0 <= number < len(self):
                raise KeyError(
                    f"field index {number} outside field bank {self.source}: it holds {len(self)} fields, "
                    f"0 to {len(self) - 1}"
                )
            return int(number)
        shown = ", ".join(self.names[:5].tolist())
        raise KeyError(
            f"unknown field id {name!r} in field bank {self.source} ({len(self)} fields, e.g. {shown}; "
            "or a field index)"
        )

    def check_index(self, index) -> np.ndarray:
        """Returns ``index`` as an int array; raises IndexError for an index outside the bank."""
        index = np.asarray(index)
        if index.size and (index.min() < 0 or index.max() >= len(self)):
            bad = index[(index < 0) | (index >= len(self))].ravel()[0]
            raise IndexError(f"unknown field index {bad} in field bank {self.source} ({len(self)} fields)")
        return index.astype(np.int64)

    def subset(self, indices) -> FieldBank:
        """A bank of the given fields; the reference becomes the first of them unless it is included."""
        indices = self.check_index(np.atleast_1d(indices))
        ref = int(np.flatnonzero(indices == self.reference)[0]) if self.reference in indices else 0
        return dataclasses.replace(
            self,
            names=self.names[indices],
            psf_params=self.psf_params[indices],
            sky_grid=self.sky_grid[indices],
            gain=self.gain[indices],
            calibration=self.calibration[indices],
            reference=ref,
        )

    # --- sampling ---------------------------------------------------------------------------------

    def sample_fields(self, rng: np.random.Generator, n: int, prior: str = "many") -> np.ndarray:
        """Field indices for ``n`` images: uniform over the bank (``many``) or the reference (``one``)."""
        if prior == "many":
            return rng.integers(0, len(self), size=n)
        if prior == "one":
            return np.full(n, self.reference, dtype=np.int64)
        raise ValueError(f"field prior must be 'many' or 'one', got {prior!r}")

    def sample_crop_origins(self, rng: np.random.Generator, n: int, image_shape) -> np.ndarray:
        """Uniform top-left (row, column) pixel of an image of ``image_shape`` inside the frame; [n, 2]."""
        h, w = image_shape
        if h > self.frame_shape[0] or w > self.frame_shape[1]:
            raise ValueError(
                f"field bank {self.source}: its frames are {self.frame_shape[0]} x {self.frame_shape[1]} "
                f"pixels, smaller than the image size {h} x {w}: use a bank of larger frames or "
                "smaller images"
            )
        rows = rng.integers(0, self.frame_shape[0] - h + 1, size=n)
        cols = rng.integers(0, self.frame_shape[1] - w + 1, size=n)
        return np.stack([rows, cols], axis=-1)

    def background_electrons(self, index: int, origin, image_shape) -> np.ndarray:
        """Sky in electrons per pixel on the ``image_shape`` crop whose top-left pixel is ``origin``."""
        grid = self.sky_grid[int(index)]
        rows = interp.cell_center_weights(origin[0], image_shape[0], self.frame_shape[0], grid.shape[0])
        cols = interp.cell_center_weights(origin[1], image_shape[1], self.frame_shape[1], grid.shape[1])
        return rows @ grid @ cols.T

    def to_electrons(self, index) -> np.ndarray:
        """Conversion factor gain / calibration (electrons per nmgy) for field(s) ``index``."""
        return self.gain[index] / self.calibration[index]

    # --- distance from the bank (images outside the training range) -----------------------------------

    def background_nmgy(self) -> np.ndarray:
        """Mean sky of each field over its frame, nmgy per pixel; [K]."""
        return self.sky_grid.mean(axis=(1, 2)) / self.to_electrons(slice(None))

    @functools.cached_property
    def _feature_moments(self):
        features = field_features(self.psf_params, self.background_nmgy())
        cov = np.atleast_2d(np.cov(features, rowvar=False)) if len(self) > 1 else np.zeros((7, 7))
        cov = cov + np.diag(
            2 * DISTANCE_RIDGE * np.sqrt(np.diag(cov)) + DISTANCE_RIDGE**2
        )  # (sd + ridge)^2 on the diagonal
        return features.mean(axis=0), np.linalg.inv(cov)

    def distance(self, psf_params, background) -> np.ndarray:
        """Mahalanobis distance of images' field covariates from the bank's fields.

        ``psf_params`` [6] or [N, 6] psField parameters ``(s1, s2, sP, beta, b, p0)`` (pixels); ``background``
        the sky in nmgy per pixel: a number, [N], or images [N, H, W] (averaged over the pixels). The distance
        is taken on :func:`field_features` (logs of the six parameters and of the background) with the mean and
        covariance of the bank's fields, each feature's standard deviation widened by ``DISTANCE_RIDGE`` (so a
        bank that holds one value of a parameter, like the default bank's p0 = 0.05, still has a finite
        distance). Returns [N] (or a float for one image); compare with :meth:`distance_threshold`.
        """
        psf_params = psf_lib.validate_psf_params(psf_params, where="distance: psf_params")
        batch = psf_params.shape[:-1]
        background = np.asarray(background, dtype=np.float64)
        if background.ndim > len(batch):
            background = background.reshape(background.shape[: len(batch)] + (-1,)).mean(axis=-1)
        if not (np.all(np.isfinite(background)) and np.all(background > 0)):
            raise ValueError(
                f"distance: background must be positive finite nmgy per pixel, got {background.ravel()[:5].tolist()}"
            )
        mean, precision = self._feature_moments
        delta = field_features(psf_params, np.broadcast_to(background, batch)) - mean
        d = np.sqrt(np.einsum("...i,ij,...j->...", delta, precision, delta))
        return float(d) if d.ndim == 0 else d

    def distance_threshold(self, percentile: float = DISTANCE_PERCENTILE) -> float:
        """The ``percentile`` of :meth:`distance` over the bank's own fields: an image beyond it is outside the
        bank (for the default 99.9, one field in a thousand of the bank itself would be flagged)."""
        return float(np.percentile(self.distance(self.psf_params, self.background_nmgy()), percentile))

    # --- persistence ------------------------------------------------------------------------------

    def save(self, path) -> None:
        """Writes the bank to a compressed ``.npz`` atomically (:func:`npejax.io.atomic_write`); the sky grid
        is stored as float32."""
        meta = dict(
            format_version=_FORMAT_VERSION,
            frame_shape=list(self.frame_shape),
            reference=self.reference,
            synthetic=bool(self.synthetic),
            description=self.description,
        )
        io.atomic_write(
            path,
            lambda f: np.savez_compressed(
                f,
                names=self.names,
                psf_params=self.psf_params,
                sky_grid=self.sky_grid.astype(np.float32),
                gain=self.gain,
                calibration=self.calibration,
                meta=np.array(json.dumps(meta)),
            ),
        )


def field_features(psf_params, background_nmgy) -> np.ndarray:
    """The seven numbers :meth:`FieldBank.distance` compares (``FEATURE_NAMES``): logs of s1, s2, sP, beta - 2,
    b + 1e-3, p0 + 1e-4 and of the background (nmgy per pixel). ``psf_params`` [..., 6], background [...]."""
    p = np.asarray(psf_params, dtype=np.float64)
    columns = (p[..., 0], p[..., 1], p[..., 2], p[..., 3] - 2.0, p[..., 4] + 1e-3, p[..., 5] + 1e-4)
    return np.log(np.stack([*columns, np.asarray(background_nmgy, dtype=np.float64)], axis=-1))


def load_bank(path=None) -> FieldBank:
    """Loads a bank written by :meth:`FieldBank.save`; ``None`` or ``"synthetic"`` gives the default embedded
    bank, ``"survey"`` the embedded bank that spans the survey (``EMBEDDED_BANKS``).

    The embedded banks hold 500 SYNTHETIC SDSS-like r-band fields each (see :mod:`npejax.sim.synthetic_bank`
    and :mod:`npejax.sim.survey_bank`); they contain no real survey measurements.
    """
    name = "synthetic" if path is None else str(path)
    if name in EMBEDDED_BANKS:
        ref = importlib.resources.files("npejax") / "assets" / EMBEDDED_BANKS[name]
        with importlib.resources.as_file(ref) as real_path:
            return load_bank(real_path)
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"field bank file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except Exception as exc:  # zipfile.BadZipFile, ValueError, OSError, EOFError
        raise ValueError(f"field bank file {path} is not a readable .npz bank ({type(exc).__name__}: {exc})") from exc
    required = ("names", "psf_params", "sky_grid", "gain", "calibration", "meta")
    missing = [key for key in required if key not in arrays]
    if missing:
        raise ValueError(f"field bank file {path} lacks arrays {missing}; expected {list(required)}")
    meta = json.loads(str(arrays.pop("meta")))
    if meta.get("format_version") != _FORMAT_VERSION:
        raise ValueError(
            f"field bank file {path} has format version {meta.get('format_version')}, expected {_FORMAT_VERSION}"
        )
    return FieldBank(
        names=arrays["names"],
        psf_params=arrays["psf_params"],
        sky_grid=arrays["sky_grid"],
        gain=arrays["gain"],
        calibration=arrays["calibration"],
        frame_shape=tuple(meta["frame_shape"]),
        reference=meta["reference"],
        synthetic=meta["synthetic"],
        description=meta["description"],
        source=path,
    )
