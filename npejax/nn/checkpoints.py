"""Orbax checkpoints of a training directory, and loading a trained network from one.

Layout of a workdir (written by :func:`npejax.nn.train.train_and_evaluate`)::

    config.json                          the training config (ml_collections as JSON)
    metrics.csv                          one row per epoch
    tensorboard/                         TensorBoard event files (losses, learning rate, images/s, figures)
    checkpoints/latest/N/                the state after epoch N, the last epoch done (one kept)
    checkpoints/best/N/                  the state of the epoch with the lowest validation NLL (one kept)
    checkpoints/interrupted/S/           the state at train step S of a run stopped mid-epoch (one kept; removed
                                         once the epoch is done and checkpointed in latest/)
    checkpoints/{latest,best,interrupted}/N/npejax-sha256.json   SHA-256 of every file of the checkpoint
    .npejax-train.lock                   while a training runs there: its flock, "pid P on HOST" (workdir_lock)

Each checkpoint has two items: ``state`` (:class:`npejax.nn.state.TrainState`: step, parameters,
batch-norm statistics, Adam moments) and ``meta`` (JSON: ``epoch``, ``best_val``, ``bad_epochs``,
``history`` (the metrics rows so far), ``normalizer`` (:meth:`npejax.nn.inputs.Normalizer.to_dict`),
``variant``, ``config``, ``val_nll``). The checkpoint step is the number of epochs completed. Orbax writes
a checkpoint to a temporary directory and renames it when complete.

A run asked to stop mid-epoch (a signal or ``train.time_limit_minutes``: :mod:`npejax.nn.preemption`) saves
the state at the step it reached in ``interrupted/`` (:func:`save_interrupted`), numbered by the train step
(an Orbax manager keeps its steps increasing: an epoch number of latest/ could not hold it), its ``meta`` the
latest one's (of the epochs completed; no ``val_nll``) and ``step_in_epoch``, ``epoch_losses`` (the training
losses of those steps, float32 values), ``epoch_seconds`` (the seconds they took) and ``stopped`` (why). A
resumed run starts from it when it is newer than latest/ (:func:`interrupted_step`); ``best/`` is untouched.

Integrity. :func:`save` waits until Orbax has finished writing (so that a full disk is reported at the
epoch where it happens, as one :class:`CheckpointSaveError`) and then records the SHA-256 of every file of
the checkpoint in ``N/npejax-sha256.json`` (written atomically by :mod:`npejax.io`). Every restore --
resuming training (:func:`read_meta`, :func:`restore`) and prediction (:func:`load_network`) -- recomputes them
first: a damaged file is refused with a :class:`CheckpointError` naming it. A checkpoint without the file
(written before npejax recorded checksums, or by a run killed between the save and the checksum) is loaded
with a warning: refusing it would strand every network trained before, and the warning says that it is
unverified. Files added to a checkpoint afterwards are not checked (Orbax reads only its own).

Identity. A checkpoint is restored only into the network it was saved from: :func:`load_network` refuses a
``config.json`` that differs from the checkpoint's ``meta["config"]`` (:func:`npejax.configuration.saved_differences`:
both upgraded, :data:`npejax.configuration.RESUMABLE_KEYS` left out), and
every restore first compares the checkpoint's array shapes with the model's, so that a checkpoint of
another network is one line naming the workdir and the first arrays that differ.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import hashlib
import io as io_lib
import json
import logging as std_logging
import os
import re
import shutil
import socket
import sys
from collections.abc import Iterator
from typing import NamedTuple

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging as absl_logging

from npejax import configuration, io
from npejax.nn import distributed
from npejax.nn import inputs as inputs_lib
from npejax.nn import model as model_lib
from npejax.nn import state as state_lib

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.csv"
CHECKSUM_FILE = "npejax-sha256.json"
WHICH = ("best", "latest")
INTERRUPTED = "interrupted"  # checkpoints/interrupted: a run stopped mid-epoch
ITEMS = ("state", "meta")


class CheckpointError(ValueError):
    """A workdir without a usable npejax checkpoint (missing, damaged, of another network or config)."""


class CheckpointSaveError(CheckpointError):
    """A checkpoint could not be written (disk full, directory not writable, ...)."""


class Managers(NamedTuple):
    latest: ocp.CheckpointManager
    best: ocp.CheckpointManager


def _manager(directory: str, create: bool) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=1, create=create)
    handlers = dict(state=ocp.StandardCheckpointHandler(), meta=ocp.JsonCheckpointHandler())
    return ocp.CheckpointManager(directory, item_handlers=handlers, options=options)


@contextlib.contextmanager
def managers(workdir: str) -> Iterator[Managers]:
    """The Orbax managers of ``workdir/checkpoints/{latest,best}`` (created if needed; one checkpoint kept in
    each), closed on exit -- after their pending saves finish -- also when the body raises (then an error
    of the close itself does not replace the body's)."""
    root = os.path.join(os.path.abspath(workdir), "checkpoints")
    opened = {}
    try:
        for name in ("latest", "best"):
            opened[name] = _manager(os.path.join(root, name), create=True)
        yield Managers(**opened)
    except BaseException:
        with quiet(keep=False):  # a failed save is reported once, by the body's error
            for manager in opened.values():
                with contextlib.suppress(Exception):
                    manager.close()  # close() waits for outstanding saves
        raise
    for manager in opened.values():
        manager.close()


@contextlib.contextmanager
def _existing_manager(directory: str) -> Iterator[ocp.CheckpointManager]:
    """A manager of an existing checkpoint directory (nothing is created), closed on exit."""
    manager = _manager(directory, create=False)
    try:
        yield manager
    finally:
        manager.close()


def step_dir(manager: ocp.CheckpointManager, step: int) -> str:
    """The directory of checkpoint ``step`` of ``manager``."""
    return os.path.join(os.fspath(manager.directory), str(int(step)))


# --- checksums -------------------------------------------------------------------------------------


def file_digests(directory: str) -> dict[str, str]:
    """``{path relative to directory: SHA-256}`` of every file under ``directory`` (the checksum file and
    :mod:`npejax.io` temporaries left out), in sorted order."""
    digests = {}
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, directory)
            if rel == CHECKSUM_FILE or io.is_temporary(name):
                continue
            digests[rel] = io.sha256_file(path)
    return digests


def write_checksums(directory: str) -> str:
    """Records the SHA-256 of every file of the checkpoint in ``directory/npejax-sha256.json``."""
    return io.write_json(
        os.path.join(directory, CHECKSUM_FILE), dict(algorithm="sha256", files=file_digests(directory))
    )


def verify_checksums(directory: str) -> bool:
    """Checks every file of the checkpoint in ``directory`` against its recorded SHA-256: True when they
    all match, False when none are recorded (a checkpoint of an older npejax); CheckpointError naming the
    first damaged or missing file."""
    record = os.path.join(directory, CHECKSUM_FILE)
    if not os.path.exists(record):
        return False
    try:
        with open(record) as f:
            files = json.load(f)["files"]
        files = {str(rel): str(digest) for rel, digest in files.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(
            f"checkpoint checksum file {record} is damaged ({type(exc).__name__}); the checkpoint cannot be verified"
        ) from None
    for rel, digest in files.items():
        path = os.path.join(directory, rel)
        if not os.path.isfile(path):
            raise CheckpointError(
                f"checkpoint file {path} is missing (listed in {CHECKSUM_FILE}): the checkpoint is damaged"
            )
        if io.sha256_file(path) != digest:
            raise CheckpointError(
                f"checkpoint file {path} is damaged: its SHA-256 differs from the one "
                f"recorded when it was saved ({CHECKSUM_FILE}); restore it from a copy, or "
                "train again in a new workdir"
            )
    return True


def _verify(directory: str) -> None:
    if not verify_checksums(directory):
        sys.stderr.write(
            f"warning: checkpoint {directory} has no {CHECKSUM_FILE} (saved before npejax recorded "
            "checksums, or by a run killed during the save): loading it unverified\n"
        )
        sys.stderr.flush()


# --- save ------------------------------------------------------------------------------------------


class _Hold(std_logging.Filter):
    def __init__(self):
        super().__init__()
        self.records = []

    def filter(self, record):
        self.records.append(record)
        return False


@contextlib.contextmanager
def quiet(keep: bool = True):
    """Holds back what is printed while Orbax writes (absl log records, and the tracebacks its background
    threads and TensorStore print on a failed write -- thousands of lines for a full disk): printed
    afterwards when the body succeeds (and ``keep``), dropped when it raises, whose one-line error then
    says what happened."""
    hold = _Hold()
    loggers = (absl_logging.get_absl_logger(), std_logging.getLogger("asyncio"))
    for logger in loggers:
        logger.addFilter(hold)
    saved, sys.stderr = sys.stderr, io_lib.StringIO()
    ok = False
    try:
        yield
        ok = keep
    except BaseException:
        gc.collect()  # Orbax's failed asyncio tasks log "Task exception was never retrieved" when collected
        raise
    finally:
        held, sys.stderr = sys.stderr, saved
        for logger in loggers:
            logger.removeFilter(hold)
        if ok:
            for record in hold.records:
                std_logging.getLogger(record.name).handle(record)
            saved.write(held.getvalue())


def _short(exc: BaseException) -> str:
    """An exception as one short line: an OS error's text first (also when TensorStore wraps it as
    ``os_error_code='28'``), then the first line of the message, cut at 200 characters."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"[Errno {exc.errno}] {exc.strerror}" + (f": {exc.filename}" if exc.filename else "")
    full = str(exc).strip()
    lines = full.splitlines()
    text = lines[0] if lines else type(exc).__name__
    text = text if len(text) <= 200 else text[:200] + " ..."
    code = re.search(r"os_error_code='?(\d+)|\[Errno (\d+)\]", full)
    if code:
        errno = int(code.group(1) or code.group(2))
        text = f"[Errno {errno}] {os.strerror(errno)} ({text})"
    return text


def save(targets, epoch: int, state: state_lib.TrainState, meta: dict, what: str | None = None) -> None:
    """Saves ``state`` and ``meta`` as checkpoint step ``epoch`` with each manager of ``targets`` (one or a
    list; the writes run concurrently), waits until they are written and records their checksums.
    CheckpointSaveError (one line naming ``what`` -- default ``epoch N`` -- the directory and the OS error) when a
    save fails. In a multi-process run
    (:mod:`npejax.nn.distributed`) every process calls it: Orbax writes each array once (the managers one after
    the other), process 0 records the checksums, and all processes return together (a barrier)."""
    targets = [targets] if isinstance(targets, ocp.CheckpointManager) else list(targets)
    what = what or f"epoch {epoch}"
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    manager = targets[0]
    need = len(targets) * (_nbytes(state) + len(json.dumps(meta))) + (1 << 20)
    free = shutil.disk_usage(os.fspath(manager.directory)).free
    if free < need:
        raise CheckpointSaveError(
            f"cannot save the checkpoint of {what} in {manager.directory}: it needs "
            f"about {need / 2**20:.1f} MiB, {free / 2**20:.1f} MiB are free on that disk"
        )
    try:
        with quiet():
            try:
                # several processes: one save at a time (concurrent multi-process saves of two managers collide
                # in Orbax's barriers, "Barrier ThreadSaveMultiHostValueHolder:set_value_start is already ongoing")
                one_by_one = jax.process_count() > 1
                for manager in targets:
                    manager.save(epoch, args=args)
                    if one_by_one:
                        manager.wait_until_finished()
                for manager in targets:
                    manager.wait_until_finished()  # an asynchronous write error surfaces here, at this epoch
                    if distributed.is_main():  # several processes: Orbax wrote once, the checksums too
                        write_checksums(step_dir(manager, epoch))
            except Exception:
                for other in targets:  # let the other writes end (and print) inside quiet()
                    with contextlib.suppress(Exception):
                        other.wait_until_finished()
                raise
    except Exception as exc:  # noqa: BLE001  (any failure of the write: disk full, permissions, ...)
        raise CheckpointSaveError(
            f"cannot save the checkpoint of {what} in {manager.directory}: {_short(exc)}"
        ) from exc
    distributed.sync(f"npejax-checkpoint-{epoch}")  # no process goes on (and may read it) before the checksums exist


def _nbytes(tree) -> int:
    return int(sum(getattr(leaf, "nbytes", 0) for leaf in jax.tree_util.tree_leaves(tree)))


# --- restore ---------------------------------------------------------------------------------------


def _key(entry) -> str:
    for attr in ("key", "name", "idx"):  # DictKey, GetAttrKey, SequenceKey
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def _shapes(tree) -> dict[str, tuple]:
    """``{"params/ConvBlock_0/Conv_0/kernel": shape}`` of a state or of a checkpoint's metadata tree (the
    two name their nodes differently: attributes vs dict keys)."""
    return {
        "/".join(_key(e) for e in path): tuple(leaf.shape) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }


def check_structure(manager: ocp.CheckpointManager, step: int, abstract_state, where: str) -> None:
    """CheckpointError (one line, naming ``where`` and the first arrays that differ) unless checkpoint
    ``step`` holds arrays of the shapes of ``abstract_state``: restoring another network otherwise fails
    deep in TensorStore with a page of specification."""
    try:
        stored = manager.item_metadata(step)["state"]
    except Exception as exc:  # noqa: BLE001  (unreadable metadata: reported as such, briefly)
        raise CheckpointError(f"{where}: cannot read the checkpoint's metadata ({_short(exc)})") from exc
    if stored is None:
        raise CheckpointError(f"{where}: the checkpoint has no 'state' item")
    have, want = _shapes(stored), _shapes(abstract_state)
    problems = array_mismatches(
        have,
        want,
        lambda k: have[k] != want[k],
        lambda k: f"{k} has shape {have[k]} in the checkpoint, {want[k]} in the model",
        "the checkpoint",
    )
    if problems:
        raise CheckpointError(f"{where} holds another network than the config's model: {problems}")


def array_mismatches(have: dict, want: dict, differs, describe, source: str) -> str:
    """The first two differences between the arrays ``have`` (of ``source``, e.g. "the checkpoint") and those of
    the model, ``want`` (both name -> array description), joined for an error message; "" when they match.
    ``differs(name)`` tells whether an array of both differs, ``describe(name)`` says how."""
    problems = [describe(k) for k in want if k in have and differs(k)]
    missing, extra = [k for k in want if k not in have], [k for k in have if k not in want]
    if missing:
        problems.append(f"{len(missing)} arrays of the model are not in {source} (first {missing[0]})")
    if extra:
        problems.append(f"{len(extra)} arrays of {source} are not in the model (first {extra[0]})")
    more = f" (and {len(problems) - 2} more)" if len(problems) > 2 else ""
    return "; ".join(problems[:2]) + more if problems else ""


def restore(
    manager: ocp.CheckpointManager,
    abstract_state: state_lib.TrainState,
    step: int | None = None,
    verify: bool = True,
    where: str | None = None,
):
    """(state, meta) of ``step`` (default: the latest) from an Orbax manager: checksums verified (unless
    ``verify`` is False: the caller did), shapes compared with ``abstract_state``, then restored."""
    step = manager.latest_step() if step is None else step
    directory = step_dir(manager, step)
    where = where or f"checkpoint {directory}"
    if verify:
        _verify(directory)
    check_structure(manager, step, abstract_state, where)
    try:
        with quiet():  # a failed read prints TensorStore's specification and stray asyncio tracebacks
            restored = manager.restore(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()),
            )
    except Exception as exc:  # noqa: BLE001  (an unreadable checkpoint: one line, not a TensorStore dump)
        raise CheckpointError(f"{where} cannot be restored: {_short(exc)}") from exc
    return restored["state"], restored["meta"]


def saved_step(workdir: str, which: str) -> int | None:
    """The step of ``workdir``'s ``checkpoints/WHICH`` checkpoint (``best``, ``latest``, ``interrupted``), or None
    when there is none; nothing verified or created (:func:`read_meta` verifies it when it is used)."""
    directory = os.path.join(os.path.abspath(workdir), "checkpoints", which)
    if not os.path.isdir(directory):
        return None
    with _existing_manager(directory) as manager:
        return manager.latest_step()


def interrupted_step(workdir: str) -> int | None:
    """The train step of ``workdir``'s checkpoint of a run stopped mid-epoch (``checkpoints/interrupted``), or None;
    nothing verified or created (:func:`read_meta` verifies it when it is used)."""
    return saved_step(workdir, INTERRUPTED)


def check_resumable(workdir: str) -> None:
    """CheckpointError when ``workdir`` holds a best checkpoint but nothing to resume from (``checkpoints/latest``
    removed, no ``checkpoints/interrupted``): a run there would start from scratch and its first epoch would
    replace the old network's best checkpoint, or leave it for prediction under a new config.json. Writes
    nothing."""
    best = saved_step(workdir, "best")
    if best is None or saved_step(workdir, "latest") is not None or saved_step(workdir, INTERRUPTED) is not None:
        return
    raise CheckpointError(
        f"workdir {os.path.abspath(workdir)}: checkpoints/best holds epoch {best} but checkpoints/latest is "
        "missing: resume is impossible; move the workdir aside or remove checkpoints/best"
    )


# --- the workdir lock ------------------------------------------------------------------------------

LOCK_FILE = ".npejax-train.lock"  # WORKDIR/.npejax-train.lock: flock'ed by the training running there


class WorkdirLockedError(ValueError):
    """Another training holds the workdir (:func:`workdir_lock`)."""


def _lock_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text or "holder unknown"


def _acquire(workdir: str, path: str) -> int:
    """An open descriptor of ``path`` holding its exclusive flock, the holder's line written in it."""
    for _ in range(100):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666 & ~io.umask())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(fd)
            os.close(fd)
            raise WorkdirLockedError(
                f"workdir {workdir} is in use by another training ({holder}; lock {path}): two trainings in one "
                "workdir would overwrite each other's checkpoints; wait for it to end or give another --workdir"
            ) from None
        try:
            current = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            current = False
        if current:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
            return fd
        os.close(fd)  # its holder removed the file as it released it: lock the one there now
    raise WorkdirLockedError(f"workdir {workdir}: cannot take its lock {path} (it keeps being replaced)")


@contextlib.contextmanager
def workdir_lock(workdir: str) -> Iterator[str | None]:
    """Holds ``WORKDIR/.npejax-train.lock`` (an exclusive ``fcntl.flock``) for the body: a second training in
    the same workdir is refused at once with :class:`WorkdirLockedError` naming the workdir and the holder (pid
    and host, written in the file). The lock dies with its process, so a file left by a killed run blocks
    nothing. Only process 0 of several (:func:`npejax.nn.distributed.is_main`) takes it; the others yield None.
    Creates the workdir if needed; on exit the file is removed (while still locked: a process that opened it
    meanwhile sees another file at the path and locks that one), and the folders created here (the workdir, its
    missing parents) are removed again when nothing else was written in them (a run refused by a later check
    leaves no workdir)."""
    if not distributed.is_main():
        yield None
        return
    workdir = os.path.abspath(workdir)
    created = []  # the folders made here, the workdir first, its missing parents after it
    folder = workdir
    while not os.path.exists(folder):
        created.append(folder)
        folder = os.path.dirname(folder)
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, LOCK_FILE)
    try:
        fd = _acquire(workdir, path)
    except BaseException:
        _remove_empty(created)
        raise
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)
        _remove_empty(created)


def _remove_empty(folders: list[str]) -> None:
    """Removes ``folders`` in order while they are empty (a folder the run wrote in stays, and its parents)."""
    for folder in folders:
        try:
            os.rmdir(folder)
        except OSError:
            return


def save_interrupted(workdir: str, step: int, state: state_lib.TrainState, meta: dict) -> str:
    """Saves the state of a run stopped mid-epoch at train step ``step`` in ``workdir/checkpoints/interrupted``
    (:func:`save`: written whole, checksums recorded; the one before it removed); returns its directory."""
    directory = os.path.join(os.path.abspath(workdir), "checkpoints", INTERRUPTED)
    manager = _manager(directory, create=True)
    try:
        save(manager, step, state, meta, what=f"train step {step}")
    finally:
        manager.close()
    return step_dir(manager, step)


def remove_interrupted(workdir: str) -> None:
    """Removes ``workdir/checkpoints/interrupted`` (process 0, then a barrier): once its epoch is done and
    checkpointed in latest/, the checkpoint of a run stopped in it is stale. A removal cut short leaves an older
    step than latest/'s, which a resume ignores (:func:`interrupted_step` against latest/'s last step)."""
    if distributed.is_main():
        shutil.rmtree(os.path.join(os.path.abspath(workdir), "checkpoints", INTERRUPTED), ignore_errors=True)
    distributed.sync("npejax-interrupted-removed")


def restore_from(directory: str, abstract_state: state_lib.TrainState, step: int, verify: bool = True):
    """(state, meta) of checkpoint ``step`` in ``directory`` (``workdir/checkpoints/{latest,interrupted}``, as
    :func:`read_meta` found it): :func:`restore` with a manager of that directory, closed afterwards."""
    with _existing_manager(directory) as manager:
        return restore(manager, abstract_state, step, verify=verify)


def read_meta(workdir: str, which: str = "latest") -> tuple[int, dict] | None:
    """(step, meta) of ``workdir``'s latest ``which`` checkpoint, its checksums verified first; None when
    there is none. Creates nothing."""
    directory = os.path.join(os.path.abspath(workdir), "checkpoints", which)
    if not os.path.isdir(directory):
        return None
    with _existing_manager(directory) as manager:
        step = manager.latest_step()
        if step is None:
            return None
        _verify(step_dir(manager, step))
        return step, _meta(manager, step)


def _meta(manager: ocp.CheckpointManager, step: int) -> dict:
    try:
        with quiet():
            return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"checkpoint {step_dir(manager, step)}: cannot read its meta ({_short(exc)})") from exc


# --- configs ---------------------------------------------------------------------------------------


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The training config saved in ``workdir/config.json`` (CheckpointError if there is none)."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise CheckpointError(
            f"{workdir} is not an npejax training directory: no config.json (written by python -m npejax.main)"
        )
    try:
        with open(path) as f:
            return config_from_dict(json.load(f))
    except ValueError as exc:
        raise CheckpointError(f"{path} is not a valid config file ({_short(exc)})") from None


def config_from_dict(config: dict) -> ml_collections.ConfigDict:
    """A saved config (the plain dict of its JSON) as the ConfigDict training made: the keys it lacks filled in
    with their old values (:func:`npejax.configuration.upgrade`), ``model.stages`` tuples again (JSON turned them
    into lists). ValueError for a config without them."""
    config = ml_collections.ConfigDict(configuration.upgrade(config))
    try:
        stages = tuple(tuple(int(v) for v in s) for s in config.model.stages)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"model.stages: expected a list of (width, bottlenecks, stride) ({_short(exc)})") from None
    with config.unlocked():
        config.model.stages = stages
    return config


def checkpoint_digest(directory: str) -> str:
    """The SHA-256 that identifies checkpoint ``directory`` (``workdir/checkpoints/best/N``): of its checksum file
    (:data:`CHECKSUM_FILE`: every file's SHA-256, recorded at the save), or, for a checkpoint saved without one,
    of the same record computed now (:func:`file_digests`). The same network copied elsewhere keeps it."""
    record = os.path.join(directory, CHECKSUM_FILE)
    if os.path.isfile(record):
        return io.sha256_file(record)
    text = json.dumps(dict(algorithm="sha256", files=file_digests(directory)), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def network_identity(workdir: str, which: str = "best") -> dict:
    """What identifies the network of ``workdir``'s ``which`` checkpoint, read without restoring it:
    ``network`` (``"workdir W checkpoint best (epoch N)"``, for people), ``network_sha256``
    (:func:`checkpoint_digest`) and ``decode`` (``posterior.decode`` of its config.json: how catalogs are read).
    CheckpointError for a workdir that does not exist or holds no such checkpoint (as :func:`load_network`)."""
    workdir = os.path.abspath(workdir)
    if not os.path.isdir(workdir):
        raise CheckpointError(f"workdir {workdir} does not exist")
    if which not in WHICH:
        raise ValueError(f"which must be 'best' or 'latest', got {which!r}")
    config = load_config(workdir)
    ckpt_dir = os.path.join(workdir, "checkpoints", which)
    if not os.path.isdir(ckpt_dir):
        raise CheckpointError(
            f"{workdir} holds no checkpoint: no checkpoints/{which}/ (written by python -m npejax.main)"
        )
    with _existing_manager(ckpt_dir) as manager:
        step = manager.latest_step()
        if step is None:
            raise CheckpointError(f"no checkpoint in {ckpt_dir}")
        directory = step_dir(manager, step)
    return dict(
        network=f"workdir {workdir} checkpoint {which} (epoch {step})",
        network_sha256=checkpoint_digest(directory),
        decode=str(config.posterior.decode),
    )


def load_network(workdir: str, which: str = "best"):
    """(config, variables, normalizer) of ``workdir``'s ``best`` or ``latest`` checkpoint, for prediction;
    ``variables`` = {"params", "batch_stats"} (their moving averages with ``train.ema_decay``,
    :func:`npejax.nn.state.eval_variables`). CheckpointError for a missing or foreign directory, a damaged
    checkpoint file, or a checkpoint that does not match the saved config (or its model)."""
    workdir = os.path.abspath(workdir)
    if not os.path.isdir(workdir):
        raise CheckpointError(f"workdir {workdir} does not exist")
    if which not in WHICH:
        raise ValueError(f"which must be 'best' or 'latest', got {which!r}")
    config_path = os.path.join(workdir, CONFIG_FILE)
    ckpt_dir = os.path.join(workdir, "checkpoints", which)
    if not os.path.isfile(config_path) or not os.path.isdir(ckpt_dir):
        raise CheckpointError(
            f"{workdir} is not an npejax training directory: expected config.json and "
            f"checkpoints/{which}/ (written by python -m npejax.main)"
        )
    config = load_config(workdir)
    with _existing_manager(ckpt_dir) as manager:
        step = manager.latest_step()
        if step is None:
            raise CheckpointError(f"no checkpoint in {ckpt_dir}")
        directory = step_dir(manager, step)
        _verify(directory)
        saved = _meta(manager, step).get("config")
        if saved is not None:
            differences = configuration.saved_differences(saved, config)
            if differences:
                raise CheckpointError(
                    f"{config_path} differs from the config checkpoint {directory} was trained "
                    f"with (checkpoint -> config.json): " + "; ".join(differences[:8])
                )
        try:
            abstract = state_lib.abstract_state(config, model_lib.from_config(config))
        except ValueError as exc:
            raise CheckpointError(f"{config_path}: {exc}") from None
        # onto this process's first device, whatever devices wrote it (a network trained on a multi-GPU node
        # catalogs on a laptop): without a sharding, Orbax would restore the saved one ("Topology mismatch")
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        abstract = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), abstract)
        state, meta = restore(
            manager, abstract, step, verify=False, where=f"checkpoint {directory} (workdir {workdir})"
        )
    return config, state_lib.eval_variables(state), inputs_lib.Normalizer.from_dict(meta["normalizer"])
