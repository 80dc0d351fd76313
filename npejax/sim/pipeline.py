"""On-the-fly simulation: batches rendered by worker processes into a bounded prefetch queue.

:func:`simulate_batch` turns ``(spec, batch_index)`` into one batch, a dict of numpy arrays:

* ``images`` [B, H, W] float32, sky-subtracted, nmgy; ``background`` [B, H, W] float32, nmgy;
* ``psf_params`` [B, 6] float32 (psField ``s1, s2, sP, beta, b, p0``, pixels); ``field_id`` [B] int32
  (index into the field bank); ``crop_origin`` [B, 2] int32 (top-left frame row, column of the image);
* the full catalog padded to ``max_sources`` with ``n_sources`` (:data:`npejax.schema.CATALOG_KEYS`) and the
  tile catalog (:data:`npejax.schema.TILE_KEYS`);
* only when an artifact of real frames is on (``config.artifacts``, :mod:`npejax.sim.artifacts`):
  ``mask`` [B, H, W] bool (pixels a frame's mask flags) and ``artifact_bits`` [B, H, W] uint8 (which artifact
  touched each pixel), :data:`npejax.schema.ARTIFACT_KEYS`. With every artifact off the batch is exactly what it
  was without them (the artifacts draw from their own stream, :func:`npejax.sim.artifacts.artifact_rng`).

These are the batch keys of :mod:`npejax.schema` (IMAGE_KEYS, CATALOG_KEYS, TILE_KEYS), with their shapes
and units; a cached dataset (:mod:`npejax.datasets`) has the same keys.

Batch ``i`` depends only on ``(spec.seed, i)``, so the same seed gives the same batches for any number
of workers. ``spec.backend`` (``config.simulator.backend``) picks the renderer: ``galsim``
(:class:`npejax.sim.render.Renderer`) or ``jax`` (:class:`npejax.sim.jax_render.JaxRenderer`, noise keyed by
:func:`npejax.sim.jax_render.batch_key` ``(seed, i)``; rendered in the simulator's thread, no worker processes);
the catalogs, fields and crops of batch ``i`` are the same for both.

:class:`Simulator` renders batches in a pool of worker processes (GalSim holds the GIL, so threads do not
scale), keeps at most ``prefetch`` batches in flight, and hands them over in order through a
bounded queue that a background thread fills. A worker's exception is re-raised in the consumer with the
worker's traceback; leaving the ``with`` block (normally, on an error or on Ctrl-C) stops the pool, and
workers exit on their own if the parent process dies.

With workers, the spec goes to them through a scratch file in the temporary directory,
``npejax-spec-PID-XXXXXXXX.pkl`` (PID: the parent's process id), not the spawn pipe (see
:meth:`Simulator._launch`). ``close()`` removes it; a parent killed outright (SIGKILL, OOM) cannot, so
every Simulator that starts workers first removes the spec files of parents that no longer run
(:func:`remove_stale_spec_files`): they do not accumulate.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import multiprocessing
import os
import pickle
import queue
import re
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import threadpoolctl

from npejax import configuration, schema
from npejax.sim import artifacts as artifacts_lib
from npejax.sim import fields as fields_lib
from npejax.sim import prior as prior_lib
from npejax.sim import render as render_lib

DEFAULT_BATCH_SIZE = 32  # images per batch index when a caller does not say (the paper's training batch)


@dataclasses.dataclass(frozen=True)
class SimulationSpec:
    """Everything needed to simulate batch ``i`` (picklable; sent once to each worker).

    Build it from a config with :meth:`from_config` (the values live in ``configs/default.py``).
    ``batch_size`` is the caller's choice, not a config key: images per batch index (a dataset shard, a
    training batch); :data:`DEFAULT_BATCH_SIZE` when not given.
    """

    bank: fields_lib.FieldBank
    prior: prior_lib.CatalogPrior
    render: render_lib.RenderConfig
    field_prior: str  # "many": uniform over the bank; "one": the bank's reference field (schema.FIELD_PRIORS)
    tile_size: int  # pixels
    seed: int
    batch_size: int = DEFAULT_BATCH_SIZE
    artifacts: artifacts_lib.ArtifactSpec | None = None  # None: no artifact of real frames (the paper's model)
    backend: str = "galsim"  # configuration.SIM_BACKENDS

    def __post_init__(self):
        if self.backend not in configuration.SIM_BACKENDS:
            raise ValueError(f"simulator.backend must be one of {configuration.SIM_BACKENDS}, got {self.backend!r}")
        if self.backend == "jax" and self.artifacts is not None:
            raise ValueError(
                "simulator.backend = 'jax' draws no artifacts of real frames (npejax.sim.artifacts is numpy, after "
                "the GalSim renderer): turn config.artifacts off or use simulator.backend = 'galsim'"
            )
        if self.field_prior not in schema.FIELD_PRIORS:
            raise ValueError(f"fields.prior must be 'many' or 'one', got {self.field_prior!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        h, w = self.prior.image_shape
        if h % self.tile_size or w % self.tile_size:
            raise ValueError(f"image shape {(h, w)} must be a multiple of tile_size={self.tile_size}")
        fh, fw = self.bank.frame_shape
        if h > fh or w > fw:  # images are crops of a frame (fields.FieldBank.sample_crop_origins)
            raise ValueError(
                f"field bank {self.bank.source}: its frames are {fh} x {fw} pixels, smaller than "
                f"the image size {h} x {w} (image_size): use a bank of larger frames or a smaller "
                "image_size"
            )

    @classmethod
    def from_config(
        cls, config, *, seed: int | None = None, batch_size: int | None = None, bank: fields_lib.FieldBank | None = None
    ) -> SimulationSpec:
        """Builds the spec from a full npejax config (``seed``, ``image_size``, ``tile_size``, ``prior``,
        ``fields``, ``render`` and, where present, ``artifacts``: a config without that section, or with every
        artifact off, simulates none); ``seed`` and ``bank`` override the config's."""
        image_shape = (int(config.image_size), int(config.image_size))
        bank = bank if bank is not None else fields_lib.load_bank(config.fields.bank)
        artifacts = None
        if "artifacts" in config:
            artifacts = artifacts_lib.ArtifactSpec.from_config(config.artifacts)
            artifacts = artifacts if artifacts.enabled else None
        return cls(
            bank=bank,
            prior=prior_lib.CatalogPrior.from_config(config.prior, image_shape),
            render=render_lib.RenderConfig.from_config(config.render),
            field_prior=config.fields.prior,
            tile_size=int(config.tile_size),
            batch_size=int(batch_size if batch_size is not None else DEFAULT_BATCH_SIZE),
            seed=int(seed if seed is not None else config.seed),
            artifacts=artifacts,
            backend=str(config.simulator.backend),
        )


def batch_rng(seed: int, batch_index: int) -> np.random.Generator:
    """Independent stream for batch ``batch_index`` of the simulation seeded by ``seed``."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(batch_index)]))


def make_renderer(spec: SimulationSpec):
    """The renderer of ``spec.backend``: a new GalSim :class:`~npejax.sim.render.Renderer`, or the JAX renderer
    of this bank, image shape and settings (cached: it holds the compiled function)."""
    if spec.backend == "jax":
        from npejax.sim import jax_render  # deferred: GalSim workers do not load JAX

        return jax_render.cached_renderer(spec.bank, spec.prior.image_shape, spec.render)
    return render_lib.Renderer(spec.bank, spec.prior.image_shape, spec.render)


def simulate_batch(spec: SimulationSpec, batch_index: int, renderer=None) -> dict[str, np.ndarray]:
    """Simulates batch ``batch_index`` (see module docstring for the keys).

    Runs with one BLAS thread: the renderer's many small matrix products get slower, not faster, with
    more threads (benchmarks/RESULTS.md, "Measurements behind the code's defaults").
    """
    with threadpoolctl.threadpool_limits(1):
        return _simulate_batch(spec, batch_index, renderer)


def _simulate_batch(spec, batch_index, renderer):
    renderer = renderer or make_renderer(spec)
    rng = batch_rng(spec.seed, batch_index)
    b = spec.batch_size
    catalog = spec.prior.sample(rng, b)
    field_id = spec.bank.sample_fields(rng, b, spec.field_prior)
    origins = spec.bank.sample_crop_origins(rng, b, spec.prior.image_shape)
    if spec.backend == "jax":
        from npejax.sim import jax_render  # deferred: as in make_renderer

        images, background = renderer.render(catalog, field_id, origins, jax_render.batch_key(spec.seed, batch_index))
    elif spec.artifacts is None:
        images, background = renderer.render(catalog, field_id, origins, rng)
    else:
        images, background, mask, artifact_bits = renderer.render_artifacts(
            catalog, field_id, origins, rng, spec.artifacts, artifacts_lib.artifact_rng(spec.seed, batch_index)
        )
    batch = dict(
        images=images,
        background=background,
        psf_params=spec.bank.psf_params[field_id].astype(np.float32),
        field_id=field_id.astype(np.int32),
        crop_origin=origins.astype(np.int32),
    )
    batch.update(catalog)
    batch.update(prior_lib.tile_catalog(catalog, spec.prior.image_shape, spec.tile_size))
    if spec.artifacts is not None:
        batch.update(mask=mask, artifact_bits=artifact_bits)
    return batch


class WorkerError(RuntimeError):
    """A simulation worker failed; the message carries the worker's traceback."""


# --- worker process side ----------------------------------------------------------------------------

_WORKER: dict = {}


def _watch_parent(parent_pid: int) -> None:
    while True:
        if os.getppid() != parent_pid:
            os._exit(1)  # parent died (even by SIGKILL): never linger as an orphan
        time.sleep(0.5)


def _init_worker(spec_path: str, parent_pid: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    # Slurm's warning before a time limit (--signal=USR1@120) reaches every process of the job step: the trainer
    # saves and stops on it (npejax.nn.preemption), its workers go on until it closes them
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    with open(spec_path, "rb") as f:
        spec = pickle.load(f)
    # one BLAS thread per worker: with N workers on N cores, more threads only contend (measured: RESULTS.md)
    _WORKER["blas_limit"] = threadpoolctl.threadpool_limits(1)
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    _WORKER["spec"] = spec
    _WORKER["renderer"] = render_lib.Renderer(spec.bank, spec.prior.image_shape, spec.render)


def _work(batch_index: int) -> dict[str, np.ndarray]:
    return simulate_batch(_WORKER["spec"], batch_index, _WORKER["renderer"])


# --- the spec file -----------------------------------------------------------------------------------

SPEC_FILE_PREFIX = "npejax-spec-"
_SPEC_FILE = re.compile(rf"^{SPEC_FILE_PREFIX}(\d+)-[A-Za-z0-9_]+\.pkl$")


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_spec_files(directory: str | None = None) -> list[str]:
    """Removes the spec files (``npejax-spec-PID-*.pkl`` in ``directory``, default the temporary
    directory) whose parent process PID no longer exists; returns their paths. Files of running
    processes, of other users and of other names are left alone."""
    directory = directory or tempfile.gettempdir()
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        m = _SPEC_FILE.match(name)
        if m is None or _process_exists(int(m.group(1))):
            continue
        path = os.path.join(directory, name)
        with contextlib.suppress(OSError):  # gone meanwhile, or not ours to remove
            os.unlink(path)
            removed.append(path)
    return removed


# --- consumer side ----------------------------------------------------------------------------------

_DONE = object()


class Simulator:
    """Iterator over simulated batches ``start, start + 1, ...`` (``num_batches`` of them, or endless); with
    ``stride`` and ``offset``, batches ``start * stride + offset, (start + 1) * stride + offset, ...`` (one
    process's share of a multi-process run: :func:`npejax.nn.distributed.simulator_indices`).

    Args:
      spec: what to simulate.
      num_workers: worker processes; 0 renders in the background thread (same batches, no processes). The
        ``jax`` backend always renders in the background thread (on JAX's default device).
      prefetch: most batches rendered ahead of the consumer (bounds memory).
      transform: optional function applied to each batch in the background thread (e.g. a device put).
    """

    def __init__(
        self,
        spec: SimulationSpec,
        num_workers: int = 2,
        prefetch: int = 4,
        start: int = 0,
        num_batches: int | None = None,
        transform: Callable[[dict], object] | None = None,
        stride: int = 1,
        offset: int = 0,
    ):
        if num_workers < 0 or prefetch < 1:
            raise ValueError(f"num_workers must be >= 0 and prefetch >= 1, got {num_workers}, {prefetch}")
        self.spec = spec
        self.num_workers = num_workers
        self.prefetch = prefetch
        self.start = start
        self.num_batches = num_batches
        self.transform = transform
        self.stride, self.offset = int(stride), int(offset)
        self._queue: queue.Queue = queue.Queue(maxsize=prefetch)
        self._stop = threading.Event()
        self._executor = None
        self._thread = None
        self._spec_path = None
        self._finished = False

    # lifecycle
    def __enter__(self) -> Simulator:
        self._launch()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        self.close()

    def _launch(self) -> None:
        if self._thread is not None:
            return
        if self.num_workers > 0 and self.spec.backend != "jax":
            # The spec (with the field bank) goes through a file, not the spawn pipe: a large pickle in
            # the pipe blocks the parent forever if a child dies before reading it. A private scratch file
            # in the temporary directory (removed by close()), not an output: no npejax.io here. Its name
            # carries this process's id, so that the next Simulator removes it if this process is killed.
            remove_stale_spec_files()
            with tempfile.NamedTemporaryFile(
                "wb", prefix=f"{SPEC_FILE_PREFIX}{os.getpid()}-", suffix=".pkl", delete=False
            ) as f:
                self._spec_path = f.name
                pickle.dump(self.spec, f, protocol=pickle.HIGHEST_PROTOCOL)
            self._executor = concurrent.futures.ProcessPoolExecutor(
                max_workers=self.num_workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=(self._spec_path, os.getpid()),
            )
        self._thread = threading.Thread(target=self._produce, name="npejax-simulator", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stops the background thread and the worker processes; safe to call twice."""
        self._stop.set()
        if getattr(self, "_thread", None) is not None:
            while self._thread.is_alive():  # unblock a put() on a full queue
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    pass
                self._thread.join(timeout=0.05)
        if getattr(self, "_executor", None) is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        if getattr(self, "_spec_path", None) is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._spec_path)
            self._spec_path = None

    # production (background thread)
    def _indices(self) -> Iterator[int]:
        i = self.start
        while self.num_batches is None or i < self.start + self.num_batches:
            yield i * self.stride + self.offset
            i += 1

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        try:
            if self._executor is None:
                renderer = make_renderer(self.spec)
                for i in self._indices():
                    batch = simulate_batch(self.spec, i, renderer)
                    if not self._put(self.transform(batch) if self.transform else batch):
                        return
            else:
                pending: list[tuple[int, concurrent.futures.Future]] = []
                indices = self._indices()
                exhausted = False
                while not self._stop.is_set():
                    while not exhausted and len(pending) < self.prefetch:
                        i = next(indices, None)
                        if i is None:
                            exhausted = True
                        else:
                            pending.append((i, self._executor.submit(_work, i)))
                    if not pending:
                        break
                    i, future = pending.pop(0)
                    try:
                        batch = self._result(future)
                    except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                        raise WorkerError(
                            f"simulation worker failed on batch {i}: {type(exc).__name__}: {exc}"
                            f"{_remote_traceback(exc)}"
                        ) from exc
                    if not self._put(self.transform(batch) if self.transform else batch):
                        return
            self._put(_DONE)
        except BaseException as exc:  # noqa: BLE001 - surfaced in __next__
            self._put(exc)

    def _result(self, future: concurrent.futures.Future):
        """``future.result()``, but raises if a worker process died instead of waiting forever."""
        while True:
            try:
                return future.result(timeout=0.5)
            except concurrent.futures.TimeoutError:
                if self._stop.is_set():
                    raise WorkerError("simulator closed") from None
                processes = dict(getattr(self._executor, "_processes", None) or {})
                dead = [p for p in processes.values() if p.exitcode is not None]
                if dead:
                    raise WorkerError(
                        f"simulation worker process {dead[0].pid} exited with code {dead[0].exitcode}; "
                        "if this is a script, guard its entry point with `if __name__ == '__main__':` "
                        "(worker processes are spawned and re-import the main module)"
                    ) from None

    # consumption
    def __iter__(self) -> Simulator:
        self._launch()
        return self

    def __next__(self):
        if self._finished:
            raise StopIteration
        self._launch()
        while True:
            try:
                item = self._queue.get(timeout=1.0)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    raise WorkerError("simulator background thread stopped without a result") from None
        if item is _DONE:
            self._finished = True
            raise StopIteration
        if isinstance(item, BaseException):
            self._finished = True
            self.close()
            raise item
        return item


def _remote_traceback(exc: BaseException) -> str:
    cause = exc.__cause__
    return f"\n\nWorker traceback:{cause}" if cause is not None else ""
