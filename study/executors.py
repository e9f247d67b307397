"""Where the cells of a study run: this process, worker processes on this machine, or Ray tasks.

    run_cells(todo, config, finish)                      # picks one of the three below
    run_in_process(todo, config, finish)                 # one after the other, here
    run_local(todo, config, workers, plugins, finish)    # spawned processes, one GPU each if any
    run_ray(todo, config, plugins, finish, address=None) # one Ray task per cell

Each runs `study.cell.run_cell_safely` for each (cell, id) in `todo` and hands every
record to `finish` as cells complete; `finish` (in the driver) writes it.
Workers never write results, so a worker that dies loses only its own cell: a local
worker's cell is recorded as failed, naming how it died, and the cells other workers were
running start again on new workers (a Ray worker's cell is retried).
Each stops at its next safe point once Ctrl-C was pressed (`Interrupt.check`).

Every cell trains with `cell_threads(config)` threads (`cell_cpus`, 1 by default) whatever
`--jobs` is, set before TensorFlow or JAX starts: one layout, so one cell gives one record
whether it ran alone or beside others.  On a machine with GPUs, local workers are
pinned round robin, one GPU each (`CUDA_VISIBLE_DEVICES`), with memory growth on so
that two workers can share a card when there are more jobs than GPUs.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
from pathlib import Path
from typing import Callable

from study.backend import start_backend
from study.cell import Cell, Interrupt, failed_record, run_cell_safely
from study.config import StudyConfig
from study.text import comma_list

EXECUTORS = ("local", "ray")
# attempts after a Ray worker dies mid-cell (a Python error inside a cell is a failed record, not a retry)
RAY_RETRIES = 3
ROOT = Path(__file__).resolve().parent.parent
_THREAD_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "TF_NUM_INTRAOP_THREADS",
    "TF_NUM_INTEROP_THREADS",
)


class ExecutorError(RuntimeError):
    """An executor that cannot start (Ray missing, no cluster at the address); one line."""


def thread_env(threads: int) -> dict[str, str]:
    """Environment variables that cap the math libraries at `threads` threads."""
    env = {var: str(threads) for var in _THREAD_VARS}
    env["XLA_FLAGS"] = f"--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads={threads}"
    env["TF_CPP_MIN_LOG_LEVEL"] = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3")
    return env


def limit_threads(backend: str, threads: int) -> None:
    """Caps this process's math libraries; call before TensorFlow/JAX start.  A second call in a
    process whose TensorFlow already runs keeps the first setting."""
    os.environ.update(thread_env(threads))
    start_backend(backend, threads)


def visible_gpus() -> list[str]:
    """The GPUs of this machine: CUDA_VISIBLE_DEVICES when set, else `nvidia-smi`'s list, else []."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g for g in comma_list(listed) if g != "-1"]
    try:
        result = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            encoding="utf-8",
            errors="replace",
            timeout=20,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in result.stdout.splitlines() if line.strip()] if result.returncode == 0 else []


def gpu_assignment(workers: int, gpus: list[str]) -> list[str | None]:
    """The GPU each of `workers` local workers is pinned to: round robin over `gpus`; None without GPUs."""
    return [gpus[i % len(gpus)] if gpus else None for i in range(workers)]


def pin_gpu(gpu: str | None) -> None:
    """Shows only `gpu` to this process's backend (before it starts), with memory growth on."""
    if gpu is None:
        return
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    os.environ["TF_FORCE_GPU_ALLOW_GROWTH"] = "true"
    os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"


# in a local worker: the queue on which it tells the driver which cell it starts (`run_local`)
_STARTED = None


def cell_threads(config: StudyConfig) -> int:
    """The threads one cell trains with, whatever `--jobs` and the executor: `cell_cpus` (1 by
    default, the layout the reference studies ran with).  Float sums split over other threads add
    up in another order and move where a cell stops, so one layout keeps a cell's record
    reproducible; each record says the layout it ran with (`study.cell.thread_layout`)."""
    return config.cell_cpus


def _local_worker_init(backend: str, threads: int, plugins: list[str], gpu_slots, parent: int, started=None) -> None:
    import signal

    global _STARTED
    _STARTED = started

    # the parent handles Ctrl-C; this process started with SIGINT blocked (`_sigint_blocked`), so a
    # Ctrl-C that reached it while Python was starting is pending: ignoring SIGINT discards it
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):  # POSIX
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    _exit_with_parent(parent)
    pin_gpu(gpu_slots.get())
    _prepare_worker(backend, threads, plugins)


def _exit_with_parent(parent: int, every: float = 1.0) -> None:
    """Ends this worker process once its parent `parent` has died (e.g. `kill -9` of the study):
    a daemon thread checks the parent pid every `every` seconds."""
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _prepare_worker(backend: str, threads: int, plugins: list[tuple[str, str]]) -> None:
    os.environ["KERAS_BACKEND"] = backend
    limit_threads(backend, threads)
    from study.plugins import load_plugins

    load_plugins(plugins)


@contextlib.contextmanager
def _sigint_blocked():
    """Holds back SIGINT in this thread while it spawns workers.  A terminal's Ctrl-C reaches the
    whole process group, workers included; a worker inherits the spawning thread's signal mask,
    so it cannot be killed by Ctrl-C before its initializer ignores SIGINT.  This process still
    notes a Ctrl-C at once when another of its threads (a progress bar's) takes the signal, and
    otherwise as soon as the block lifts; either way `Interrupt.handler` only records it.  The
    mask found is restored after."""
    import signal

    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def run_cells(
    todo: list,
    config: StudyConfig,
    finish: Callable[[dict], None],
    executor: str = "local",
    address: str | None = None,
    out: Path | None = None,
    progress: bool = True,
    starting: Callable[[Cell], None] | None = None,
) -> None:
    """Runs the (cell, id) pairs of `todo` and hands each record to `finish` as it completes.

    `executor` "ray" runs them as Ray tasks (`run_ray`, on the cluster at `address`); "local"
    runs them in `config.workers` worker processes (`run_local`), or in this process when one
    worker is enough (`run_in_process`: with `progress`, each cell shows its own progress bar,
    and `starting` is called with each cell before it trains).

    Raises:
        KeyboardInterrupt: Ctrl-C (`Interrupt.requested`), at the executor's next safe point.
        ExecutorError: Ray is missing or its cluster cannot be reached.
    """
    from study.plugins import loaded_plugins

    if not todo:
        return
    workers = min(config.workers, len(todo))
    if executor == "ray":
        run_ray(todo, config, loaded_plugins(), finish, address, out)
    elif workers == 1:
        run_in_process(todo, config, finish, out, progress, starting)
    else:
        run_local(todo, config, workers, loaded_plugins(), finish, out)


def run_in_process(
    todo: list,
    config: StudyConfig,
    finish: Callable[[dict], None],
    out: Path | None = None,
    progress: bool = True,
    starting: Callable[[Cell], None] | None = None,
) -> None:
    """The cells one after the other in this process, with this process's backend, capped at
    `cell_threads` threads unless its TensorFlow already runs (the command line starts it so);
    training checks for Ctrl-C between batches."""
    start_backend(config.backend, cell_threads(config))
    for cell, _ in todo:
        if starting is not None:
            starting(cell)
        finish(run_cell_safely(cell, config, progress=progress, out=out))
        Interrupt.check()


def _run_cell_in_worker(cell, config: StudyConfig, out: Path | None, index: int | None = None) -> dict:
    if index is not None and _STARTED is not None:  # a local worker: the driver learns which cell it runs
        _STARTED.put((index, os.getpid()))
    return run_cell_safely(cell, config, progress=False, out=out)


def _local_pool(context, config: StudyConfig, workers: int, plugins: list[str], started):
    """A process pool of `workers` spawned workers, each pinned to its GPU (if any) and capped at
    `cell_threads(config)` threads; each tells `started` which cell it begins."""
    from concurrent.futures import ProcessPoolExecutor

    gpu_slots = context.SimpleQueue()  # no feeder thread that the interpreter's exit would wait for
    for gpu in gpu_assignment(workers, visible_gpus()):
        gpu_slots.put(gpu)
    return ProcessPoolExecutor(
        workers,
        mp_context=context,
        initializer=_local_worker_init,
        initargs=(config.backend, cell_threads(config), plugins, gpu_slots, os.getpid(), started),
    )


def run_local(
    todo: list,
    config: StudyConfig,
    workers: int,
    plugins: list[str],
    finish: Callable[[dict], None],
    out: Path | None = None,
) -> None:
    """Cells in `workers` spawned processes, each with the thread layout of `cell_threads` and
    pinned to one GPU when the machine has any.  Workers ignore Ctrl-C and exit by themselves
    when the parent dies; the parent notices Ctrl-C (`Interrupt.requested`) within half a second
    of waiting, never while it spawns a worker (a worker cut off mid-spawn prints a traceback),
    and then stops its workers.

    A worker that dies (killed, out of memory) breaks the pool, which stops every worker: the
    cell it was running gets a failed record naming how it died, the cells the others were
    running or had not started go to a new pool, and records already handed back are kept
    (`_after_a_dead_worker`)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    started = context.SimpleQueue()
    remaining = dict(enumerate(cell for cell, _ in todo))
    suspected: dict[int, int] = {}  # cell index -> pools that broke, with no culprit known, while it ran
    while remaining:
        pool = _local_pool(context, config, min(workers, len(remaining)), plugins, started)
        lost, running, processes = _run_pool(pool, remaining, config, finish, out, started)
        if not lost:
            return
        for index, error in _after_a_dead_worker(lost, running, processes, suspected).items():
            finish(failed_record(remaining.pop(index), config, error))


def _run_pool(pool, remaining: dict, config: StudyConfig, finish, out, started) -> tuple[set, dict, dict]:
    """Submits every cell of `remaining` ({index: cell}) to `pool` and hands each record to
    `finish` as it comes (removing its cell from `remaining`) until all are done or the pool
    breaks.  Returns (the indices of the cells lost with a broken pool, {worker pid: index of
    the last cell it started}, {pid: worker process}); the pool is shut down."""

    def note_started() -> None:  # read as it comes: a full pipe would block the workers
        while not started.empty():
            index, pid = started.get()
            running[pid] = index

    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, wait
    from concurrent.futures.process import BrokenProcessPool

    running: dict[int, int] = {}
    processes: dict = {}
    lost: set[int] = set()
    try:
        pending = {}
        with _sigint_blocked():  # a pool spawns its workers as cells are submitted
            for index, cell in remaining.items():
                try:
                    pending[pool.submit(_run_cell_in_worker, cell, config, out, index)] = index
                except BrokenProcessPool:  # a worker died already
                    lost.add(index)
        while pending and not lost:
            done, _ = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)  # wakes up for Ctrl-C
            processes.update(getattr(pool, "_processes", None) or {})  # to tell, once one dies, which it was
            note_started()
            for future in done:
                index = pending.pop(future)
                try:
                    record = future.result()
                except BrokenProcessPool:
                    lost.add(index)
                    continue
                remaining.pop(index)
                finish(record)
            Interrupt.check()
        lost.update(pending.values())
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        for child in multiprocessing.active_children():
            child.terminate()
        raise
    pool.shutdown()  # a broken pool has stopped its workers: their exit codes are known after this
    note_started()
    return lost, running, processes


def _after_a_dead_worker(lost: set, running: dict, processes: dict, suspected: dict) -> dict[int, str]:
    """The cells of a broken pool that fail, {index: one-line reason}; the other `lost` cells run
    again.  A worker that ended other than by the pool's own SIGTERM died by itself: the cell it
    was running fails, naming how it died.  When no such worker ran a lost cell, every lost cell
    that had started is suspected and runs again, and one suspected a second time fails.  Raises
    ExecutorError when the workers of two pools died before starting any cell."""
    import signal

    pool_stop = -signal.SIGTERM
    dead = {pid: p.exitcode for pid, p in processes.items() if p.exitcode not in (None, 0, pool_stop)}
    culprits = {running[pid]: code for pid, code in dead.items() if running.get(pid) in lost}
    if culprits:
        return {
            index: f"WorkerDied: its worker process {_how_it_ended(code)} while running this cell; the other cells went on"
            for index, code in culprits.items()
        }
    if not running:  # key -1: pools whose workers died before any of them started a cell
        suspected[-1] = suspected.get(-1, 0) + 1
        if suspected[-1] >= 2:
            raise ExecutorError("worker processes die before they start a cell; run with --jobs 1 to see why")
    failed = {}
    for index in lost & set(running.values()):
        suspected[index] = suspected.get(index, 0) + 1
        if suspected[index] >= 2:
            failed[index] = (
                "WorkerDied: a worker process died twice while this cell was running; the other cells went on"
            )
    return failed


def _how_it_ended(exitcode: int) -> str:
    """'was killed by SIGKILL (out of memory?)', 'exited with code 1', ..."""
    import signal

    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"was killed by {name}" + (" (out of memory, or kill -9)" if name == "SIGKILL" else "")
    return f"exited with code {exitcode}"


def _run_cell_on_ray(cell, config: StudyConfig, plugins: list[str], out: Path | None) -> dict:
    import ray

    _prepare_worker(config.backend, cell_threads(config), plugins)
    record = _run_cell_in_worker(cell, config, out)
    # Ray's own record of the task
    record.setdefault("worker", {})["ray_task_id"] = ray.get_runtime_context().get_task_id()
    return record


def ray_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("ray") is not None


def check_ray_address(address: str, timeout: float = 5.0) -> None:
    """Refuses, in one line, an address no Ray cluster answers at (Ray itself would retry for minutes).
    `auto` and `ray://` client addresses are left to Ray."""
    import socket

    if address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ExecutorError(f"--address must be auto, HOST:PORT or ray://HOST:PORT, got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ExecutorError(
            f"no Ray cluster answers at {address} ({exc.strerror or exc}); start one with 'ray start --head' or check the address"
        ) from None


def run_ray(
    todo: list,
    config: StudyConfig,
    plugins: list[str],
    finish: Callable[[dict], None],
    address: str | None = None,
    out: Path | None = None,
) -> None:
    """One Ray task per cell, each asking for `config.cell_cpus` CPUs and `config.cell_gpus` GPUs.

    With `address`, joins that cluster and ships this project's code to it
    (Ray's `working_dir`; task modules must be at the same path on every node);
    without, starts a local Ray instance with `config.workers` CPUs.  Cells save their
    backups and models under `out`, which must be a path every node can write (a shared
    file system on a cluster).  A cell
    whose worker dies is retried up to RAY_RETRIES times, then recorded as failed.
    """
    if not ray_available():
        raise ExecutorError("--executor ray needs Ray: pip install -r requirements-ray.txt")
    import ray
    from ray.exceptions import RayError

    # set when a worker process starts, before NumPy loads its BLAS (which reads the thread caps once);
    # `_prepare_worker` repeats them for workers of a Ray instance started elsewhere
    runtime_env = {"env_vars": {"KERAS_BACKEND": config.backend, **thread_env(cell_threads(config))}}
    started_here = not ray.is_initialized()
    if started_here:
        try:
            if address:
                runtime_env["working_dir"] = str(ROOT)
                runtime_env["excludes"] = ["datasets/", "results/", ".venv*/", ".git/"]
                ray.init(address=address, runtime_env=runtime_env, log_to_driver=False, logging_level="ERROR")
            else:
                ray.init(
                    num_cpus=config.workers,
                    runtime_env=runtime_env,
                    include_dashboard=False,
                    log_to_driver=False,
                    logging_level="ERROR",
                    object_store_memory=200 * 2**20,
                )
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ExecutorError(
                f"could not start Ray{f' at {address}' if address else ''}: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}"
            ) from None
    task = ray.remote(_run_cell_on_ray).options(
        num_cpus=config.cell_cpus, num_gpus=config.cell_gpus, max_retries=RAY_RETRIES, retry_exceptions=False
    )
    pending = {task.remote(cell, config, plugins, out): cell for cell, _ in todo}
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)  # wakes up for Ctrl-C
            for ref in done:
                cell = pending.pop(ref)
                try:
                    record = ray.get(ref)
                except RayError as exc:  # the worker died on every attempt, or the cluster lost it
                    record = failed_record(
                        cell, config, f"{type(exc).__name__} after {RAY_RETRIES} retries: {str(exc).strip()[:300]}"
                    )
                finish(record)
            Interrupt.check()
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    finally:
        if started_here:
            ray.shutdown()
