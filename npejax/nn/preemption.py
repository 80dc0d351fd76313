"""Training that stops on time (Slurm's warning, preemption, short GPU slots): what asks a run to save and exit
between two train steps.

Training stops at the next step boundary -- between two jitted train calls; with ``train.steps_per_dispatch`` K,
between two calls of K steps -- mid-epoch included, when

* the process receives SIGTERM or SIGUSR1 (:data:`SIGNALS`): what Slurm sends before a job's time limit
  (``#SBATCH --signal=USR1@120``: SIGUSR1 120 s before it) or when it preempts a job (SIGTERM, then SIGKILL
  after the partition's grace time). The handler only sets a flag (:meth:`StopRequest.request`), which the loop
  reads at each boundary (:meth:`StopRequest.poll`). Handlers are installed while training runs
  (:meth:`StopRequest.signal_handlers`; the main thread only), the previous ones restored afterwards;
* ``train.time_limit_minutes`` (> 0; 0: no limit) minutes have passed since the :class:`StopRequest` was made
  (the start of :func:`npejax.nn.train.train_and_evaluate`). Set it a few minutes below the job's time limit:
  the step in progress, the checkpoint and the exit take that long.

:func:`npejax.nn.train.train_and_evaluate` then saves the state at that step as a checkpoint of its own
(``checkpoints/interrupted``, :mod:`npejax.nn.checkpoints`), writes no metrics row for the unfinished epoch and
raises :class:`Stopped`; the command (``python -m npejax.main``) exits with :data:`EXIT_PREEMPTED` (3; 0 is a
finished run, 1 a crash, 2 a user error, 130 Ctrl-C). Running the same command again resumes at that step: the
rest of the epoch is the same batches (cached: the epoch's permutation from the next batch on; on the fly: the
simulator's batch index continuing), and the epoch's metrics row is the uninterrupted run's (the losses of its
first steps are kept in the checkpoint), but for its timing columns.

Several processes (:mod:`npejax.nn.distributed`) stop at the same boundary, whichever process was asked (a
signal or a clock may reach them at different steps): at every boundary each process starts a maximum of the
processes' flags (:func:`npejax.nn.distributed.any_process`, a collective of one integer per device, not waited
for), and the decision at boundary c is the maximum started at boundary c - 1, read once the call before it is
done (the host stays one call ahead of the devices, as without it): every process reads the same value at the
same boundary, one call after the first request.

Simulator workers (:class:`npejax.sim.pipeline.Simulator`) ignore SIGUSR1 (Slurm signals every process of a job
step); a SIGTERM that reaches them too ends them, and in one process the missing batch then stops training at
that boundary like the signal itself (:func:`npejax.nn.train.run_epoch`).
"""

from __future__ import annotations

import collections
import contextlib
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator

import jax

from npejax.nn import distributed

EXIT_PREEMPTED = 3  # the exit status of a run stopped by a signal or train.time_limit_minutes, its checkpoint saved
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
LAG = 1  # several processes: the decision at boundary c is the flags' maximum started at boundary c - LAG


class Stopped(Exception):
    """Training stopped before its end, asked by a signal or ``train.time_limit_minutes``, after saving its
    checkpoint: the same command resumes it. The command exits with :data:`EXIT_PREEMPTED`."""

    exit_code = EXIT_PREEMPTED


def exit_status(train: Callable[[], object]) -> int:
    """Runs ``train()`` for a command (``npejax.main``, ``npejax.experiment``): 0 when it ends, :data:`EXIT_PREEMPTED`
    with one stderr line when it stopped on time (:class:`Stopped`: saved, the same command resumes)."""
    try:
        train()
    except Stopped as stopped:
        sys.stderr.write(f"stopped ({stopped}); run the same command again to resume\n")
        return EXIT_PREEMPTED
    return 0


class StopRequest:
    """Whether training should stop at this step boundary: a signal received (:meth:`request`, set by the
    handlers of :meth:`signal_handlers`) or ``time_limit_minutes`` (> 0) passed since it was made, agreed by every
    process (:meth:`poll`). ``clock``: seconds, monotonic (a test's fake clock)."""

    def __init__(self, time_limit_minutes: float = 0.0, clock: Callable[[], float] = time.monotonic):
        self.time_limit_minutes = float(time_limit_minutes)
        self._clock = clock
        self._deadline = clock() + 60.0 * self.time_limit_minutes if self.time_limit_minutes > 0 else None
        self.reason: str | None = None  # why this process was asked to stop (None: it was not)
        self._pending: collections.deque = collections.deque()

    def request(self, reason: str) -> None:
        """Asks training to stop at the next boundary (the signal handlers call it: it only records the reason)."""
        if self.reason is None:
            self.reason = reason

    def requested(self) -> bool:
        """Whether this process was asked to stop: a signal, or the time limit passed (checked now)."""
        if self.reason is None and self._deadline is not None and self._clock() >= self._deadline:
            self.reason = f"train.time_limit_minutes={self.time_limit_minutes:g} reached"
        return self.reason is not None

    def poll(self, step: int) -> bool:
        """Whether to stop at this boundary, ``step`` train steps done (the boundary's identity: unused here, a test
        stops a run at a given step through it). Every process calls it at every boundary; one process:
        :meth:`requested`; several: the maximum of the processes' flags of the boundary before (module
        docstring), the same answer in every process."""
        asked = self.requested()
        if jax.process_count() == 1:
            return asked
        self._pending.append(distributed.any_process(asked))
        if len(self._pending) <= LAG:
            return False
        agreed = self._pending.popleft()()
        if agreed and self.reason is None:
            self.reason = "another process was asked to stop"
        return agreed

    @contextlib.contextmanager
    def signal_handlers(self) -> Iterator[StopRequest]:
        """Within: SIGTERM and SIGUSR1 call :meth:`request` (with the signal's name) instead of ending the process;
        the previous handlers are restored on exit. Outside the main thread (where Python cannot set handlers)
        nothing is installed: the time limit still applies."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        handler = lambda signum, frame: self.request(signal.Signals(signum).name)
        previous = {sig: signal.signal(sig, handler) for sig in SIGNALS}
        try:
            yield self
        finally:
            for sig, old in previous.items():
                signal.signal(sig, signal.SIG_DFL if old is None else old)
