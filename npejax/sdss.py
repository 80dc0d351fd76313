"""SDSS field banks: download psField, photoField and frame-r files, and build a field bank from them.

    python -m npejax.sdss download --fields fields.txt --out DIR [--base-url URL] [--retries N] [--timeout S]
    python -m npejax.sdss build-bank --dir DIR --out bank.npz [--grid 12x16] [--reference RUN-CAMCOL-FIELD]

``download`` fetches the files of the fields listed in a text file (lines ``run camcol field``, ``#``
comments) from the SDSS DR17 archive into DIR (:mod:`npejax.surveys.download`; rerunning resumes).
``build-bank`` reads a folder of such files (flat or in the archive layout) into a field bank .npz
(:mod:`npejax.surveys.sdss`) for ``--config.fields.bank=bank.npz``. ``python -m npejax.sdss SUBCOMMAND
--help`` lists a subcommand's flags. Exit status: 0 on success, 2 for a bad command line, flag value or
input file, 1 when the archive cannot be reached or a download fails.
"""

from __future__ import annotations

import re

from absl import flags

from npejax import cli

EXIT_DOWNLOAD_FAILED = 1
# Flag defaults of the library, written here so that --help loads no GalSim (tests/test_cli.py checks they agree):
DEFAULT_BASE_URL = "https://data.sdss.org/sas/dr17"  # npejax.surveys.download.DEFAULT_BASE_URL
DEFAULT_GRID = (12, 16)  # npejax.surveys.sdss.DEFAULT_GRID
_GRID_RE = re.compile(r"\s*(\d+)\s*[xX]\s*(\d+)\s*")


def _grid_ok(text: str) -> bool:
    match = _GRID_RE.fullmatch(text)
    return bool(match) and min(int(match.group(1)), int(match.group(2))) >= 1


def _parse_grid(text: str) -> tuple[int, int]:
    match = _GRID_RE.fullmatch(text)
    return int(match.group(1)), int(match.group(2))


# --- download ----------------------------------------------------------------------------------------


def define_download_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_string(
        "fields", None, "Text file of lines 'run camcol field' ('#' comments).", flag_values=fv, required=True
    )
    flags.DEFINE_string("out", None, "Output folder.", flag_values=fv, required=True)
    flags.DEFINE_string("base-url", DEFAULT_BASE_URL, "Archive root.", flag_values=fv)
    flags.DEFINE_integer(
        "retries", 3, "Retries per file on connection errors, timeouts and HTTP 5xx/429.", lower_bound=0, flag_values=fv
    )
    flags.DEFINE_float("timeout", 30.0, "Seconds per network operation.", flag_values=fv)
    cli.define_underscore_aliases(fv)  # --base_url


def run_download(fv: flags.FlagValues) -> int:
    from npejax.surveys import download, sdss  # deferred: GalSim loads after the command line (fast --help)

    out = fv["out"].value
    fields = sdss.read_fields_file(fv["fields"].value)
    try:
        download.download_fields(
            fields, out, base_url=fv["base-url"].value, retries=fv["retries"].value, timeout=fv["timeout"].value
        )
    except download.DownloadError as exc:  # the archive, not the command line: exit 1
        return cli.fail(cli.message(exc), EXIT_DOWNLOAD_FAILED)
    except OSError as exc:  # e.g. --out is a file
        return cli.fail(cli.message(exc))
    print(f"{len(fields)} fields in {out}; next: python -m npejax.sdss build-bank --dir {out} --out bank.npz")
    return 0


# --- build-bank --------------------------------------------------------------------------------------


def define_build_bank_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("dir", None, "Folder of psField, photoField and frame-r files.", flag_values=fv, required=True)
    flags.DEFINE_string("out", None, "Output .npz bank.", flag_values=fv, required=True)
    grid = "x".join(str(v) for v in DEFAULT_GRID)
    flags.DEFINE_string("grid", grid, "Sky grid rows x columns.", flag_values=fv)
    flags.register_validator("grid", _grid_ok, message="grid must look like 12x16 (rows x columns)", flag_values=fv)
    flags.DEFINE_string(
        "reference", None, "Reference field RUN-CAMCOL-FIELD (default: the most typical).", flag_values=fv
    )


def run_build_bank(fv: flags.FlagValues) -> int:
    from npejax.surveys import sdss  # deferred: GalSim loads after the command line (fast --help)

    out = fv["out"].value
    try:
        bank = sdss.build_bank(
            fv["dir"].value, grid_shape=_parse_grid(fv["grid"].value), reference=fv["reference"].value
        )
        bank.save(out)
    except OSError as exc:  # e.g. an unreadable folder
        return cli.fail(cli.message(exc))
    print(
        f"wrote {out}: {len(bank)} fields, sky grid {bank.sky_grid.shape[1]}x{bank.sky_grid.shape[2]}, "
        f"reference {bank.names[bank.reference]}"
    )
    return 0


SUBCOMMANDS = {
    "download": (define_download_flags, run_download),
    "build-bank": (define_build_bank_flags, run_build_bank),
}


def main(argv=None) -> int:
    """``argv``: the program name, the subcommand and its flags (default ``sys.argv``); the program name may
    be left out (``main(["build-bank", "--dir", ...])``)."""
    return cli.main_with_subcommands(SUBCOMMANDS, argv, "npejax.sdss", __doc__)


if __name__ == "__main__":
    raise SystemExit(main())
