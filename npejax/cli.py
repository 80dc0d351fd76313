"""The one command-line convention of npejax's commands.

Every command (``python -m npejax.main``, ``.simulate``, ``.predict``, ``.evaluate``, ``.experiment``,
``.sdss``, ``.synthetic_bank`` and their ``npejax-*`` entry points) is a thin module with::

    def define_flags(fv: flags.FlagValues) -> None:  # absl flags; a config file via config_flags
        ...
    def run(fv: flags.FlagValues) -> int | None:        # the work; raise a user error for a bad value
        ...
    def main(argv=None) -> int:
        return cli.main(define_flags, run, argv, doc=__doc__)

Flags are absl flags (a config, where one is involved, is an ml_collections config file with
``--config.KEY=VALUE`` overrides, as in Flax's examples), defined on a fresh :class:`absl.flags.FlagValues`
per call, so commands can be called in-process (tests) and side by side. Errors look the same in every
command: a user's mistake (a bad flag or config value, a missing or foreign file: :data:`USER_ERRORS`) is
one line ``error: ...`` on stderr naming the bad value, exit status 2, no traceback; Ctrl-C exits 130;
``--help`` prints the flags. Anything else is a bug and keeps its traceback.

Commands import their heavy libraries (JAX, Flax, GalSim, astropy) inside ``run``, not at the top, so that
``--help`` and a bad command line answer in a fraction of a second.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from absl import flags, logging
from ml_collections import config_flags

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UsageError(ValueError):
    """A bad command line (flag combination, value): printed as one ``error:`` line, exit 2."""


# Exceptions that are a user's mistake (a value, a path, a file), not a bug: one line, exit 2.
USER_ERRORS = (
    ValueError,
    KeyError,
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
    flags.Error,
)


def message(exc: BaseException) -> str:
    """The text of an exception as one line (KeyError quotes its text; chained flag errors unwrapped)."""
    inner = exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else exc
    text = str(inner.args[0]) if isinstance(inner, KeyError) and inner.args else str(inner)
    return " ".join(text.split()) or type(inner).__name__


def add_config_root_to_path(argv) -> None:
    """Lets ``configs/x.py`` import ``configs.default`` when run from anywhere: puts the parent of the
    config file's package directory on sys.path."""
    for i, arg in enumerate(argv):
        path = None
        if arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        elif arg == "--config" and i + 1 < len(argv):
            path = argv[i + 1]
        if path:
            directory = os.path.dirname(os.path.abspath(path.split(":", 1)[0]))
            if os.path.exists(os.path.join(directory, "__init__.py")):
                root = os.path.dirname(directory)
                if root not in sys.path:
                    sys.path.insert(0, root)


def define_config(
    fv: flags.FlagValues, help_text: str = "Experiment config file (configs/*.py).", required: bool = True
) -> None:
    """``--config FILE`` (ml_collections config file, locked: an unknown ``--config.KEY`` is an error)."""
    config_flags.DEFINE_config_file("config", None, help_text, flag_values=fv, lock_config=True)
    if required:
        flags.mark_flag_as_required("config", flag_values=fv)


def parse_pairs(values, option: str) -> dict[str, str]:
    """``["NAME=PATH", ...]`` (a repeatable flag) -> {NAME: PATH}; a malformed or repeated name is a usage error."""
    out = {}
    for v in values or []:
        name, sep, path = v.partition("=")
        if not sep or not name or not path:
            raise UsageError(f"{option} expects NAME=PATH, got {v!r}")
        if name in out:
            raise UsageError(f"{option} name {name!r} given twice")
        out[name] = path
    return out


def fail(text: str, code: int = EXIT_USAGE) -> int:
    """Prints ``error: text`` on stderr and returns ``code`` (for ``return cli.fail(...)``)."""
    sys.stderr.write(f"error: {text}\n")
    sys.stderr.flush()
    return code


def _check_config(fv: flags.FlagValues) -> None:
    """A config file that is missing or fails to load is named now, not at its first use."""
    if "config" not in fv or fv["config"].value is None:
        return
    path = fv["config"].config_filename.split(":", 1)[0]
    if not os.path.isfile(path):
        raise UsageError(f"--config {path}: no such file")
    try:
        fv.config.keys()  # config_flags defers a load error to the first use of the config
    except OSError as exc:
        raise UsageError(f"--config {path}: cannot load it: {message(exc)}") from None


def _parse(fv: flags.FlagValues, argv: list[str]) -> list[str]:
    try:
        rest = fv(argv)
        _check_config(fv)
        return rest
    except flags.Error as exc:
        raise UsageError(message(exc)) from None
    except (AttributeError, KeyError, TypeError, ValueError) as exc:  # config_flags: override or config file
        overrides = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
        what = f"unknown or invalid config key in {' '.join(overrides)}" if overrides else "cannot load the config"
        raise UsageError(f"{what}: {message(exc)}") from None


def main(
    define_flags: Callable[[flags.FlagValues], None],
    run: Callable[[flags.FlagValues], int | None],
    argv: list[str] | None = None,
    doc: str | None = None,
) -> int:
    """Defines the flags on a fresh FlagValues, parses ``argv`` (default ``sys.argv``), calls ``run`` and
    turns user errors into one ``error:`` line; returns the exit status."""
    argv = list(sys.argv if argv is None else argv)
    if not argv or argv[0].startswith("-"):
        argv.insert(0, "npejax")
    add_config_root_to_path(argv)
    fv = flags.FlagValues()
    # ml_collections' config_flags finds the --config.KEY overrides in sys.argv (when the flag is defined
    # and parsed), not in the argv given: in-process calls (tests) need sys.argv to be theirs meanwhile.
    saved_argv, sys.argv = sys.argv, argv
    try:
        define_flags(fv)
    finally:
        sys.argv = saved_argv
    if any(a in ("-h", "--help", "--helpshort", "--helpfull") for a in argv[1:]):
        print((doc or "").strip() + "\n\nflags:\n" + fv.get_help(include_special_flags=False))
        return 0
    logging.set_verbosity(logging.WARNING)  # Orbax and JAX log every step at INFO
    try:
        saved_argv, sys.argv = sys.argv, argv
        try:
            rest = _parse(fv, argv)
        finally:
            sys.argv = saved_argv
        if len(rest) > 1:
            raise UsageError(f"unexpected arguments {rest[1:]}")
        status = run(fv)
    except USER_ERRORS as exc:
        return fail(message(exc))
    except KeyboardInterrupt:
        sys.stderr.write("\ninterrupted; run the same command again to resume\n")
        return EXIT_INTERRUPTED
    return int(status or 0)
