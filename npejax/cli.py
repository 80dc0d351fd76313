"""The one command-line convention of npejax's commands.

Every command (``python -m npejax.main``, ``.simulate``, ``.predict``, ``.evaluate``, ``.experiment``,
``.sdss``, ``.synthetic_bank`` and their ``npejax-*`` entry points) is a thin module with::

    def define_flags(fv: flags.FlagValues) -> None:  # absl flags; a config file via config_flags
        ...
    def run(fv: flags.FlagValues) -> int | None:        # the work; raise a user error for a bad value
        ...
    def main(argv=None) -> int:
        return cli.main(define_flags, run, argv, doc=__doc__)

(a command of subcommands, ``.survey`` and ``.sdss``, maps each name to its pair and calls
:func:`main_with_subcommands`). Flags are absl flags (a config, where one is involved, is an ml_collections
config file with ``--config.KEY=VALUE`` overrides, as in Flax's examples), defined on a fresh
:class:`absl.flags.FlagValues` per call, so commands can be called in-process (tests) and side by side. Errors
look the same in every command: a user's mistake (a bad flag or config value, a missing or foreign file:
:data:`USER_ERRORS`) is one line ``error: ...`` on stderr naming the bad value, exit status 2, no traceback;
Ctrl-C exits 130; ``--help`` prints the command's docstring and its flags as plain text (required flags
marked), and ``--version`` prints ``npejax X.Y.Z (jax A.B.C)``; both exit 0 before anything heavy loads.
Anything else is a bug and keeps its traceback.

Flags follow one convention: the command's output is ``--out`` (a file or a folder; training writes into its
``--workdir``) and its inputs have their own names (``--input``, ``--workdir``, ``--survey``, ``--frames``); a
repeatable named input is ``NAME=PATH`` (:func:`parse_pairs`; ``--workdir`` of ``npejax.evaluate`` also takes a
plain directory, named after its base name); every hyphenated flag has an underscore alias (``--min_prob``,
:func:`define_underscore_aliases`); an on/off setting is one boolean ``--[no]NAME`` (:func:`define_boolean`, with
an earlier spelling kept as a hidden deprecated flag that warns: :func:`boolean_value`).

Commands import their heavy libraries (JAX, Flax, GalSim, astropy) inside ``run``, not at the top, so that
``--help``, ``--version`` and a bad command line answer in a fraction of a second (tests/test_cli.py checks
that ``--help`` imports no JAX).
"""

from __future__ import annotations

import os
import re
import sys
import textwrap
from collections.abc import Callable, Mapping
from importlib import metadata

from absl import flags, logging
from ml_collections import config_flags

from npejax import __version__, configuration

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
HELP_FLAGS = ("-h", "--help", "--helpshort", "--helpfull")
VERSION_FLAG = "--version"


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
    """Lets ``configs/x.py`` import ``configs.default`` when run from anywhere
    (:func:`npejax.configuration.add_config_root` for the ``--config`` of ``argv``)."""
    for i, arg in enumerate(argv):
        path = None
        if arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        elif arg == "--config" and i + 1 < len(argv):
            path = argv[i + 1]
        if path:
            configuration.add_config_root(path)


def define_config(
    fv: flags.FlagValues, help_text: str = "Experiment config file (configs/*.py).", required: bool = True
) -> None:
    """``--config FILE`` (ml_collections config file, locked: an unknown ``--config.KEY`` is an error)."""
    help_text += " --config.KEY=VALUE overrides one of its keys."
    config_flags.DEFINE_config_file("config", None, help_text, flag_values=fv, lock_config=True)
    if required:
        flags.mark_flag_as_required("config", flag_values=fv)


def version_text() -> str:
    """``npejax X.Y.Z (jax A.B.C)``: JAX's version from its installed metadata, without importing JAX."""
    try:
        jax_version = metadata.version("jax")
    except metadata.PackageNotFoundError:
        jax_version = "not installed"
    return f"npejax {__version__} (jax {jax_version})"


# reST in the docstrings (written for the API docs), as plain text for a terminal
_ROLE = re.compile(r":[a-z]+(?::[a-z]+)?:`(~?)([^`]+)`")
_LITERAL = re.compile(r"``(.+?)``", re.DOTALL)
_LITERAL_BLOCK = re.compile(r"(?<=\S)::$", re.MULTILINE)
_REPEAT = re.compile(r";\s*repeat this option to specify a list of values$")


def _literal(text: str) -> str:
    # a flag reads as itself (--out); anything else keeps quotes ('error:', 'ra', 'python -m npejax.main')
    return text if text.startswith("-") and not any(c.isspace() for c in text) else f"'{text}'"


def plain_text(text: str) -> str:
    """reST markup as plain text: ``:mod:`a.b``` -> a.b (``~a.b`` -> b), ````--out```` -> --out, ````ra```` ->
    'ra', a paragraph's closing ``::`` -> ``:``."""
    text = _ROLE.sub(lambda m: m[2].rsplit(".", 1)[-1] if m[1] else m[2], text)
    text = _LITERAL.sub(lambda m: _literal(m[1]), text)
    return _LITERAL_BLOCK.sub(":", text)


def _is_required(flag: flags.Flag) -> bool:
    # absl's mark_flag_as_required (and required=True) registers this validator; a flag holds no other trace
    return any(str(getattr(v, "message", "")).endswith("must have a value other than None.") for v in flag.validators)


def _flag_help(fv: flags.FlagValues, name: str, aliases: list[str]) -> str:
    flag = fv[name]
    words = [f"--[no]{name}" if flag.boolean else f"--{name}"]
    words += [f"(or --{a})" for a in aliases]
    notes = []
    if _is_required(flag):
        notes.append("required")
    elif flag.default is not None and flag.default != []:
        default = str(flag.default).lower() if flag.boolean else str(flag.default)
        notes.append(f"default: {default}")
    if flag.parser.syntactic_help and not flag.boolean:
        notes.append(flag.parser.syntactic_help)
    text = " ".join(plain_text(flag.help or "").split())
    if isinstance(flag, flags.MultiFlag):  # absl appends "; repeat this option to specify a list of values"
        text = _REPEAT.sub("", text)
        if "repeatable" not in text:
            notes.append("repeatable")
    text = f"{' '.join(words)}: {text}" + (f" ({'; '.join(notes)})" if notes else "")
    return textwrap.fill(text, 100, initial_indent="  ", subsequent_indent="      ", break_on_hyphens=False)


def help_text(fv: flags.FlagValues, doc: str | None) -> str:
    """``--help``: the command's docstring and its flags in definition order, as plain text; an alias
    (``--min_prob``) is named beside its flag, required flags say so, others give their default."""
    aliases: dict[str, list[str]] = {}
    for name in fv:
        original = re.fullmatch(r"Alias for --(.+)\.", fv[name].help or "")
        if original and original[1] in fv and original[1] != name:
            aliases.setdefault(original[1], []).append(name)
    hidden = {a for names in aliases.values() for a in names}
    hidden |= {name for name in fv if (fv[name].help or "").startswith(DEPRECATED)}
    lines = [_flag_help(fv, name, aliases.get(name, [])) for name in fv if name not in hidden]
    lines += [
        "  --help: Print this text and exit.",
        f"  {VERSION_FLAG}: Print the versions of npejax and JAX and exit.",
    ]
    return plain_text(doc or "").strip() + "\n\nflags:\n" + "\n".join(lines)


def parse_pairs(values, option: str, bare: bool = False) -> dict[str, str]:
    """``["NAME=PATH", ...]`` (a repeatable flag) -> {NAME: PATH}; a malformed or repeated name is a usage error.
    ``bare``: a value without ``=`` is a PATH named by its base name (``runs/aware`` -> ``aware``; the
    command checks that the name is plain)."""
    out = {}
    for v in values or []:
        name, sep, path = v.partition("=")
        if bare and not sep:
            name, path = os.path.basename(os.path.normpath(v)), v
        elif not sep or not name or not path:
            raise UsageError(f"{option} expects {'NAME=PATH or PATH' if bare else 'NAME=PATH'}, got {v!r}")
        if name in out:
            hint = f"; give NAME=PATH to tell {out[name]} and {path} apart" if bare else ""
            raise UsageError(f"{option} name {name!r} given twice{hint}")
        out[name] = path
    return out


DEPRECATED = "Deprecated spelling"  # the help of a flag kept for old command lines: --help leaves it out


def define_underscore_aliases(fv: flags.FlagValues) -> None:
    """``--num_images`` for ``--num-images``: an alias with underscores for every flag defined so far whose
    name has a hyphen (not the deprecated spellings), the convention of every command."""
    for name in list(fv):
        flag = fv[name]
        if "-" in name and flag.name == name and not (flag.help or "").startswith((DEPRECATED, "Alias for")):
            flags.DEFINE_alias(name.replace("-", "_"), name, flag_values=fv)


def define_boolean(fv: flags.FlagValues, name: str, help_text: str, old_negation: str | None = None) -> None:
    """A boolean ``--NAME`` / ``--noNAME`` with no default (None: not given; the config decides) and, with
    ``old_negation`` (``no-baseline``), that old spelling still accepted: :func:`boolean_value` reads both."""
    flags.DEFINE_boolean(name, None, help_text, flag_values=fv)
    if old_negation:
        flags.DEFINE_boolean(old_negation, None, f"{DEPRECATED} of --no{name}.", flag_values=fv)


def boolean_value(fv: flags.FlagValues, name: str, old_negation: str | None = None) -> bool | None:
    """The value of a :func:`define_boolean` flag: True, False or None (not given); the old spelling
    ``--OLD`` counts as ``--noNAME`` with a one-line warning on stderr; both at once is a usage error."""
    value = fv[name].value
    if old_negation and fv[old_negation].present:
        if fv[name].present:
            raise UsageError(f"give --{name} or --no{name}, not --{old_negation} as well")
        sys.stderr.write(f"warning: --{old_negation} is deprecated; give --no{name}\n")
        value = False if fv[old_negation].value else None
    return value


def define_overwrite(fv: flags.FlagValues, what: str) -> None:
    """``--overwrite``: replace ``what`` (the command's output files) when it exists (:func:`check_new_file`)."""
    flags.DEFINE_boolean("overwrite", False, f"Replace {what} if it exists (refused otherwise).", flag_values=fv)


def check_new_file(path, option: str, overwrite: bool) -> None:
    """Refuses an existing output file ``path`` (the value of ``option``) unless ``overwrite``: a
    :class:`UsageError` naming the file and ``--overwrite``, before any work."""
    if not overwrite and os.path.isfile(path):
        raise UsageError(f"{option} {path} exists; give --overwrite to replace it")


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
    if VERSION_FLAG in argv[1:]:
        print(version_text())
        return 0
    add_config_root_to_path(argv)
    fv = flags.FlagValues()
    # ml_collections' config_flags finds the --config.KEY overrides in sys.argv (when the flag is defined
    # and parsed), not in the argv given: in-process calls (tests) need sys.argv to be theirs meanwhile.
    saved_argv, sys.argv = sys.argv, argv
    try:
        define_flags(fv)
    finally:
        sys.argv = saved_argv
    if any(a in HELP_FLAGS for a in argv[1:]):
        print(help_text(fv, doc))
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


def main_with_subcommands(
    subcommands: Mapping[str, tuple[Callable[[flags.FlagValues], None], Callable[[flags.FlagValues], int | None]]],
    argv: list[str] | None,
    name: str,
    doc: str | None,
) -> int:
    """A command of subcommands (``python -m npejax.survey catalog ...``): ``subcommands`` maps each name to
    its (define_flags, run) pair for :func:`main`. ``argv``: the program name, the subcommand and its flags
    (default ``sys.argv``); the program name may be left out. ``--help`` alone prints ``doc``,
    ``SUBCOMMAND --help`` the subcommand's flags too; ``name`` (``npejax.survey``) names the command in messages."""
    argv = list(sys.argv if argv is None else argv)
    if argv and (argv[0] in subcommands or argv[0].startswith("-")):
        argv.insert(0, name)
    prog, rest = (argv[0], argv[1:]) if argv else (name, [])
    if rest and rest[0] == VERSION_FLAG:
        print(version_text())
        return 0
    if not rest or rest[0] in HELP_FLAGS:
        if rest:
            print(plain_text(doc or "").strip())
            return 0
        return fail(f"a subcommand is required: one of {', '.join(subcommands)} (python -m {name} --help)")
    command = rest[0]
    if command not in subcommands:
        return fail(f"unknown subcommand {command!r}; expected one of {', '.join(subcommands)}")
    define_flags, run = subcommands[command]
    return main(define_flags, run, [f"{prog} {command}", *rest[1:]], doc=doc)
