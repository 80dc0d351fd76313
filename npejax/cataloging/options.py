"""The cataloging commands' flag values (``python -m npejax.predict``, ``python -m npejax.survey catalog``).

Each function reads one value as the library takes it, or raises :class:`npejax.cli.UsageError` naming the
option, the value and what was expected (one ``error:`` line, exit status 2, before any image is read or the
network runs):

* :func:`min_prob_flag` -- ``--min-prob``: a probability in [0, 1) (:func:`npejax.nn.predictor.check_min_prob`).
* :func:`electrons_per_nmgy_flag` -- ``--electrons-per-nmgy``: a positive finite gain / calibration, with
  ``--quality`` only.
* :func:`parse_background_arg` -- ``--background``: a sky level in nmgy per pixel, or a FITS file's name.
* :func:`chunk_size_flag` -- ``--chunk-size``: pixels, 0 for whole images, at least four network margins
  (half of each chunk's side is output).
* :func:`check_psf_flags` -- ``--psf-params`` (physical ranges) and ``--fwhm`` (arcsec).
* :func:`check_defaults` -- ``npejax.survey catalog``'s defaults of FITS lines (``--background``,
  ``--field-id``, ``--psf-params``, ``--fwhm``).
* :func:`network_identity` -- ``--workdir``/``--checkpoint`` or ``--pretrained``: what identifies the network
  (a survey's resume compares it with its catalogs'), read without loading it.
"""

from __future__ import annotations

import math
import os

from npejax import cli
from npejax.cataloging.images import parse_psf_params
from npejax.nn.predictor import MAX_BACKGROUND, Predictor, check_min_prob


def min_prob_flag(value) -> float:
    """The ``--min-prob`` flag of the commands: :func:`check_min_prob`, a usage error (one line) otherwise."""
    try:
        return check_min_prob(value)
    except ValueError:
        raise cli.UsageError(
            f"--min-prob {value}: expected a probability in [0, 1) (rows with prob_source above it are kept)"
        ) from None


def electrons_per_nmgy_flag(text: str | None, quality: bool = True) -> float | None:
    """The ``--electrons-per-nmgy`` flag (None: not given): a positive finite number (gain / calibration,
    electrons per nmgy), and only with ``--quality`` (the one thing it sets); a usage error naming it otherwise."""
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value > 0):
        raise cli.UsageError(
            f"--electrons-per-nmgy {text}: expected a positive number of electrons per nmgy (gain / calibration; "
            "SDSS r-band frames about 800-1200)"
        )
    if not quality:
        raise cli.UsageError(
            f"--electrons-per-nmgy {text} sets the quality flag's pixel noise; with --noquality it sets nothing: "
            "leave one out"
        )
    return value


def parse_background_arg(text: str | None):
    """A ``--background`` value: a float (checked against the accepted sky range) or the name of an existing
    file (checked when read); None stays None. Errors are :class:`npejax.cli.UsageError` naming the option."""
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        if not os.path.isfile(text):
            raise cli.UsageError(
                f"--background {text!r}: expected a number (nmgy per pixel) or an existing FITS file"
            ) from None
        return text
    if not 0 < value <= MAX_BACKGROUND:  # also refuses NaN
        raise cli.UsageError(
            f"--background {text}: expected a sky level in nmgy per pixel, > 0 and <= "
            f"{MAX_BACKGROUND:g} (SDSS r-band skies are about 0.3-25)"
        )
    return value


def chunk_size_flag(net: Predictor, value: int) -> int | None:
    """The ``--chunk-size`` flag for the network ``net``: the chunk side in pixels, None for 0 (whole images);
    a usage error when a chunk would keep less than half its side as output beyond the network's receptive-field
    margins (:meth:`npejax.nn.predictor.Predictor.check_chunk_size` with ``useful``: the network calls would
    multiply; the error names the smallest useful value)."""
    try:
        net.check_chunk_size(value, useful=True)
    except ValueError as exc:
        raise cli.UsageError(f"--chunk-size {value}: {cli.message(exc).split(': ', 1)[1]}") from None
    return value or None


def check_psf_flags(psf_params: str | None, fwhm: str | None) -> None:
    """``--psf-params`` (six valid parameters inside physical ranges: :func:`npejax.cataloging.checks.check_psf_params`)
    and ``--fwhm`` (arcsec, 0.1 to 10), None for not given: a :class:`npejax.cli.UsageError` naming the option,
    before any image is read or the network loads."""
    if psf_params is not None:
        try:
            parse_psf_params(psf_params)
        except ValueError as exc:
            raise cli.UsageError(f"--psf-params: {cli.message(exc)}") from None
    if fwhm is not None:
        try:
            value = float(fwhm)
        except ValueError:
            value = float("nan")
        if not 0.1 <= value <= 10:
            raise cli.UsageError(f"--fwhm {fwhm}: expected the PSF's FWHM in arcsec, 0.1 to 10 (SDSS r: about 1.0-1.8)")


def check_defaults(
    background: str | None, field_id: str | None, psf_params: str | None, fwhm: str | None = None
) -> None:
    """The command's defaults of FITS lines (``--background``, ``--field-id``, ``--psf-params``, ``--fwhm``): at
    most one PSF, valid PSF parameters and FWHM (:func:`check_psf_flags`), a background that
    :func:`parse_background_arg` accepts (the same checks as ``npejax.predict``'s); a
    :class:`npejax.cli.UsageError` naming the option otherwise."""
    given = [n for n, v in (("--field-id", field_id), ("--psf-params", psf_params), ("--fwhm", fwhm)) if v is not None]
    if len(given) > 1:
        raise cli.UsageError(
            f"give one of {' and '.join(given)}, not both" if len(given) == 2 else f"give one of {', '.join(given)}"
        )
    check_psf_flags(psf_params, fwhm)
    parse_background_arg(background)


def check_network_flags(fv) -> None:
    """Exactly one of ``--workdir`` and ``--pretrained``, ``--checkpoint`` only with ``--workdir``, a known
    ``--pretrained`` name (the error lists the shipped ones): usage errors before any input is read (the flags of
    :func:`npejax.predict.define_network_flags`)."""
    from npejax.nn import pretrained as pretrained_lib  # deferred: the flags are checked before JAX is needed

    if (fv.workdir is None) == (fv.pretrained is None):
        raise cli.UsageError(
            "give one of --workdir (a training directory) and --pretrained (a network shipped with the "
            "package: " + (", ".join(pretrained_lib.available()) or "none") + ")" + (", not both" if fv.workdir else "")
        )
    if fv.pretrained is not None:
        if fv["checkpoint"].present:
            raise cli.UsageError("--checkpoint chooses a checkpoint of --workdir; a --pretrained network has one")
        pretrained_lib.entry(fv.pretrained)  # an unknown name lists the available ones


def network_identity(fv) -> dict:
    """What identifies the network of ``--workdir`` (its ``--checkpoint``) or ``--pretrained``, read without
    loading it (:func:`npejax.nn.checkpoints.network_identity`, :func:`npejax.nn.pretrained.identity`): a
    workdir that does not exist or holds no such checkpoint is a usage error naming ``--workdir``."""
    from npejax.nn import checkpoints  # deferred: as check_network_flags
    from npejax.nn import pretrained as pretrained_lib  # deferred: as above

    if fv.pretrained is not None:
        return pretrained_lib.identity(fv.pretrained)
    try:
        return checkpoints.network_identity(fv.workdir, fv.checkpoint)
    except checkpoints.CheckpointError as exc:
        raise cli.UsageError(f"--workdir {fv.workdir}: {cli.message(exc)}") from None


def load_network(fv) -> Predictor:
    """The network of ``--workdir`` (its ``--checkpoint``) or ``--pretrained`` (:func:`check_network_flags`
    first)."""
    if fv.pretrained is not None:
        return Predictor.pretrained(fv.pretrained)
    return Predictor.from_workdir(fv.workdir, fv.checkpoint)
