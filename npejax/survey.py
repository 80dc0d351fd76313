"""Catalogs a survey: a list of frames, one catalog file per frame, resumable, split across machines.

    python -m npejax.survey catalog --workdir runs/aware --frames frames.txt --out DIR [--format fits|csv]
        [--shard I/N] [--min-prob 0.5] [--chunk-size 512] [--background B] [--field-id NAME | --psf-params P]
        [--bank bank.npz] [--checkpoint best|latest] [--readers 2] [--redo-mismatched]
        [--noquality | --electrons-per-nmgy E]
    python -m npejax.survey catalog --pretrained cpu --frames frames.txt --out DIR ...   # a shipped network
    python -m npejax.survey merge --survey DIR --out all.fits [--frames frames.txt]

The frame list (``--frames``) is a text file, one frame per line, ``#`` comments::

    frame-r-000094-1-0012.fits.bz2 psfield=psField-000094-1-0012.fit    # an SDSS r-band frame
    images/f1.fits background=0.7 field-id=94-1-12                     # a FITS image (nmgy, sky-subtracted)
    images/f2.fits background=images/f2-sky.fits psf-params=1.2,3.5,1.5,3.0,0.1,0.08
    images/f3.fits                                                     # the command's --background, --field-id
    images/f4.fits background=0.7 fwhm=1.4                             # or psf-image=f4-psf.fits

``catalog`` writes ``DIR/catalogs/NAME.fits`` (or ``.csv``) per frame of its shard (NAME: the file name without
its extensions), each recording what made it (the network: ``--pretrained`` name or ``--workdir`` checkpoint and
its SHA-256; ``--min-prob``; the frame's background and PSF; ``--[no]quality`` and ``--electrons-per-nmgy``: the
quality flag's columns, on by default, as ``npejax.predict``'s; the npejax version: in the FITS header, for CSV
in ``DIR/identity/NAME.json``). A rerun resumes: it skips the frames whose catalog was made by the same network
and settings, catalogs again (a warning line each) those whose catalog cannot be read, keeps with a warning those
whose catalog records nothing (an older npejax's), and refuses any other (exit 2, naming the catalog and what
differs) unless ``--redo-mismatched``, before any work. A frame that cannot be cataloged is one line ``failed:
frame K NAME (PATH): REASON`` on stderr and a row of ``DIR/failures-I-of-N.csv``; the others go on. Frame K
belongs to shard K mod N: ``--shard I/N``, else a Slurm job array's
``SLURM_ARRAY_TASK_ID``/``SLURM_ARRAY_TASK_COUNT``, else every frame. ``merge`` writes one table ``--out`` (FITS
or CSV by extension) of every catalog in ``--survey DIR``'s ``catalogs`` (by name), or of the ``--frames`` list's
frames in its order, with a ``frame`` column (an existing ``--out`` is refused unless ``--overwrite``) and, in a
FITS table's header, the one network and ``--min-prob`` that made them (catalogs of two are refused, naming two
frames that differ); the earlier spelling ``merge --out DIR --table T`` is refused with a line that gives the new
one.
The frame list's keys, the files, the sharding rule and the merged table: :mod:`npejax.cataloging.runner`.

Exit status: 0; 1 when a frame failed (catalog) or a listed frame has no catalog (merge; the table of the
others is written); 2 for a bad command line (both or neither of ``--workdir`` and ``--pretrained``, an
unknown ``--pretrained`` name, a ``--workdir`` that does not exist or holds no checkpoint), flag value, frame
list (syntax, a duplicate name, a FITS line with no background or PSF or with two, a frame whose catalog would be the
frame's own file: a frame inside ``DIR/catalogs``), output folder, or a resume over catalogs of another
network or settings, before any frame is read, with one ``error:`` line; ``merge`` also
refuses an ``--out`` inside ``DIR/catalogs`` (it would be merged next time) or that is the ``--frames`` list
or one of its frames' files, before any catalog is read.
"""

from __future__ import annotations

import os
import sys

from absl import flags

from npejax import cli, io, predict

# Flag values of the library, written here so that --help loads no JAX (tests/test_cli.py checks they agree):
CHUNK_SIZE = 512  # npejax.nn.predictor.CHUNK_SIZE
FORMATS = ("fits", "csv")  # npejax.cataloging.runner.FORMATS


def define_catalog_flags(fv: flags.FlagValues) -> None:
    predict.define_network_flags(fv)  # --workdir and --checkpoint, or --pretrained
    flags.DEFINE_string(
        "frames",
        None,
        "Frame list: one frame per line, 'PATH [key=value ...]' (module doc).",
        flag_values=fv,
        required=True,
    )
    flags.DEFINE_string(
        "out",
        None,
        "Output folder: catalogs/NAME.fits|csv per frame, failures-I-of-N.csv.",
        flag_values=fv,
        required=True,
    )
    flags.DEFINE_enum("format", "fits", list(FORMATS), "Catalog file format.", flag_values=fv)
    flags.DEFINE_string(
        "shard",
        None,
        "I/N: catalog the frames K with K mod N == I (default: from a Slurm job "
        "array's SLURM_ARRAY_TASK_ID/COUNT, else all).",
        flag_values=fv,
    )
    flags.DEFINE_float("min-prob", 0.5, "Keep tiles with prob_source above this, in [0, 1).", flag_values=fv)
    flags.DEFINE_integer(
        "readers",
        2,
        "Threads reading the next frames while one is predicted (frames held in memory: readers + 1).",
        lower_bound=1,
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "chunk-size",
        CHUNK_SIZE,
        "Frames larger than this many pixels on a side are "
        "predicted in overlapping chunks of this size (bounded memory; 0: whole).",
        lower_bound=0,
        flag_values=fv,
    )
    flags.DEFINE_string(
        "background",
        None,
        "Default background of FITS lines (nmgy per pixel, a number or a FITS file).",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "field-id",
        None,
        "Default PSF of FITS lines: this field of --bank (a name, or an index as datasets store it).",
        flag_values=fv,
    )
    flags.DEFINE_string("psf-params", None, "Default PSF of FITS lines: s1,s2,sP,beta,b,p0 (pixels).", flag_values=fv)
    flags.DEFINE_string(
        "fwhm", None, "Default PSF of FITS lines: its FWHM in arcsec (as npejax.predict --fwhm).", flag_values=fv
    )
    predict.define_skip_checks(fv)
    predict.define_quality_flags(fv)  # --[no]quality, --electrons-per-nmgy
    flags.DEFINE_string("bank", None, "Field bank of field-id (default: the embedded synthetic bank).", flag_values=fv)
    flags.DEFINE_bool(
        "redo-mismatched",
        False,
        "Catalog again the frames whose catalog was made with another network or settings (or records none); "
        "without it, such a catalog is refused.",
        flag_values=fv,
    )
    cli.define_underscore_aliases(fv)  # --min_prob, --chunk_size, --field_id, --psf_params, --redo_mismatched


def run_catalog(fv: flags.FlagValues) -> int:
    from npejax.cataloging import options  # deferred: JAX loads after the command line is read (fast --help)
    from npejax.cataloging import runner as runner_lib  # deferred: as above

    # everything a user can get wrong in the command line is checked before a frame is read
    options.check_network_flags(fv)
    min_prob = options.min_prob_flag(fv["min-prob"].value)
    electrons = options.electrons_per_nmgy_flag(fv["electrons-per-nmgy"].value, fv.quality)
    field_id, psf_params = fv["field-id"].value, fv["psf-params"].value
    options.check_defaults(fv.background, field_id, psf_params, fv.fwhm)
    shard, num_shards, shard_source = runner_lib.resolve_shard(fv.shard)
    out, fmt = fv.out, fv.format
    io.check_output_dir(out, "--out")
    frames = runner_lib.read_frame_list(fv.frames, fv.background, field_id, psf_params, fwhm=fv.fwhm)
    if not frames:
        raise cli.UsageError(f"--frames {fv.frames} lists no frame")
    bank = runner_lib.FieldBankCache(fv.bank)
    bank.check_default(field_id)
    for frame in frames:  # a frame inside DIR/catalogs would be taken for its own catalog (skipped, then merged)
        io.check_not_input(
            runner_lib.catalog_path(out, frame, fmt), f"frame {frame.name}'s catalog", frame_inputs(frame)
        )
    mine = runner_lib.shard_frames(frames, shard, num_shards)
    # a resume checks what made the existing catalogs, and a missing workdir is refused even with nothing to do
    network = options.network_identity(fv)
    chunk = fv["chunk-size"].value
    identities = {
        f.name: runner_lib.frame_identity(network, f, min_prob, chunk, fv.bank, fv.quality, electrons) for f in mine
    }
    plan = runner_lib.plan_resume(mine, out, fmt, identities, redo=fv["redo-mismatched"].value)
    for line in plan.warnings(out, fmt):
        sys.stderr.write(line + "\n")
    todo, skipped = plan.todo, len(plan.skipped)
    again = len(todo) - len(runner_lib.pending_frames(mine, out, fmt))
    print(
        f"shard {shard}/{num_shards} ({shard_source}; frame K goes to shard K mod {num_shards}): {len(mine)} of "
        f"{len(frames)} frames; {skipped} skipped (catalog exists in {os.path.join(out, runner_lib.CATALOG_DIR)}"
        f", made by this network and settings), {len(todo)} to catalog" + (f" ({again} again)" if again else ""),
        flush=True,
    )
    failures_file = runner_lib.failures_path(out, shard, num_shards)
    summary = runner_lib.Summary()
    if todo:  # the network is loaded only when there is a frame to catalog
        net = options.load_network(fv)
        chunk_size = options.chunk_size_flag(net, fv["chunk-size"].value)
        if any(f.field_id is not None for f in todo):
            bank.load()  # a missing or unreadable bank is the command's error, not every frame's
        summary = runner_lib.catalog_frames(
            net,
            todo,
            out,
            fmt,
            bank,
            min_prob,
            chunk_size,
            fv.readers,
            failures_file,
            image_checks=not fv["skip-image-checks"].value,
            quality=fv.quality,
            electrons_per_nmgy=electrons,
        )
    runner_lib.clear_failures(failures_file, summary.failures)  # a rerun that catalogued every frame
    failed = len(summary.failures)
    print(
        f"shard {shard}/{num_shards}: {summary.done} frames cataloged ({summary.sources} sources)"
        f"{summary.rate_text()}, {skipped} skipped, {failed} failed"
        + (f" (listed in {failures_file})" if failed else "")
        + f"; {runner_lib.peak_memory_text()}",
        flush=True,
    )
    return runner_lib.EXIT_FRAMES_FAILED if failed else 0


def frame_inputs(frame) -> dict:
    """The files a frame list's line names (``--frames line N``, its ``psfield=`` and ``background=``): the
    inputs a catalog or a merged table must not overwrite (:func:`npejax.io.check_not_input`)."""
    where = f"frame {frame.name} (--frames line {frame.line})"
    return {
        where: frame.path,
        f"{where} psfield=": frame.psfield,
        f"{where} background=": frame.background,
        f"{where} psf-image=": frame.psf_image,
    }


def define_merge_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_string(
        "survey", None, "The survey folder: the --out of the catalog command (required).", flag_values=fv
    )
    flags.DEFINE_string("out", None, "The merged table (.fits or .csv).", flag_values=fv, required=True)
    cli.define_overwrite(fv, "--out")
    flags.DEFINE_string(
        "frames",
        None,
        "Merge this list's frames, in its order, and name those without a "
        "catalog (default: every catalog of --survey, by name).",
        flag_values=fv,
    )
    flags.DEFINE_string("table", None, f"{cli.DEPRECATED}: merge --survey DIR --out TABLE.", flag_values=fv)


def run_merge(fv: flags.FlagValues) -> int:
    from npejax import catalogs as catalog_lib  # deferred: astropy loads after the command line (fast --help)
    from npejax.cataloging import runner as runner_lib  # deferred: JAX, as above

    if fv.table is not None:  # the earlier spelling: --out was the survey folder and --table the merged table
        raise cli.UsageError(
            f"merge --table is gone: the merged table is --out and the survey folder --survey, as in "
            f"'merge --survey {fv.survey or fv.out} --out {fv.table}'"
        )
    if fv.survey is None:
        raise cli.UsageError("merge needs --survey DIR, the folder the catalog command wrote (its --out)")
    survey, path = fv.survey, fv.out
    catalog_lib.table_format(path)
    io.check_output_file(path, "--out")
    io.check_not_under(path, "--out", os.path.join(survey, runner_lib.CATALOG_DIR), "the frames' catalogs, merged")
    if not os.path.isdir(survey):
        raise NotADirectoryError(f"--survey {survey}: no such folder (the --out of python -m npejax.survey catalog)")
    names = None
    if fv.frames is not None:
        frames = runner_lib.read_frame_list(fv.frames, require_inputs=False)
        io.check_not_input(path, "--out", {"--frames": fv.frames})
        for frame in frames:
            io.check_not_input(path, "--out", frame_inputs(frame))
        names = [f.name for f in frames]
    elif not runner_lib.catalog_files(survey):
        raise FileNotFoundError(f"--survey {survey}: no catalogs in {os.path.join(survey, runner_lib.CATALOG_DIR)}")
    cli.check_new_file(path, "--out", fv.overwrite)  # after "it is an input": that names the real problem
    merged, missing = runner_lib.merge_catalogs(survey, names)
    catalog_lib.write_table(merged, path)
    listed = runner_lib.failure_files(survey)
    print(
        f"{merged.meta['NFRAMES']} frame catalogs, {len(merged)} rows -> {path}"
        + (f"; failures of the last runs listed in {', '.join(listed)}" if listed else "")
    )
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        sys.stderr.write(
            f"missing: {len(missing)} frames of {fv.frames} have no catalog in "
            f"{os.path.join(survey, runner_lib.CATALOG_DIR)} ({shown}); run the catalog command again\n"
        )
        return runner_lib.EXIT_FRAMES_FAILED
    return 0


SUBCOMMANDS = {"catalog": (define_catalog_flags, run_catalog), "merge": (define_merge_flags, run_merge)}


def main(argv=None) -> int:
    """``argv``: the program name, the subcommand and its flags (default ``sys.argv``); the program name may
    be left out (``main(["merge", "--survey", ...])``)."""
    return cli.main_with_subcommands(SUBCOMMANDS, argv, "npejax.survey", __doc__)


if __name__ == "__main__":
    raise SystemExit(main())
