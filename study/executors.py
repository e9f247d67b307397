"""Where the cells of a study run: this process, worker processes on this machine, or Ray tasks.

    run_cells(todo, config, finish)                      # picks one of the three below
    run_in_process(todo, config, finish)                 # one after the other, here
    run_local(todo, config, workers, plugins, finish)    # spawned processes, one GPU each if any
    run_ray(todo, config, plugins, finish, address=None) # one Ray task per cell

Each runs `study.cell.run_cell_safely` for each (cell, id) in `todo` and hands every
record to `finish` as cells complete; `finish` (in the driver) writes it.
Workers never write results, so a worker that dies loses only its own cell.
Each stops at its next safe point once Ctrl-C was pressed (`Interrupt.check`).

Each worker is limited to its share of the CPU cores before TensorFlow or JAX
starts.  On a machine with GPUs, local workers are pinned round robin, one
GPU each (`CUDA_VISIBLE_DEVICES`), with memory growth on so that two workers
can share a card when there are more jobs than GPUs.
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
from study.config import StudyConfig, available_cores
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


def _local_worker_init(backend: str, threads: int, plugins: list[str], gpu_slots, parent: int) -> None:
    import signal

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
    """The cells one after the other in this process, with this process's backend and threads;
    training checks for Ctrl-C between batches."""
    for cell, _ in todo:
        if starting is not None:
            starting(cell)
        finish(run_cell_safely(cell, config, progress=progress, out=out))
        Interrupt.check()


def _run_cell_in_worker(cell, config: StudyConfig, out: Path | None) -> dict:
    return run_cell_safely(cell, config, progress=False, out=out)


def run_local(
    todo: list,
    config: StudyConfig,
    workers: int,
    plugins: list[str],
    finish: Callable[[dict], None],
    out: Path | None = None,
) -> None:
    """Cells in `workers` spawned processes, each limited to its share of the cores and pinned
    to one GPU when the machine has any.  Workers ignore Ctrl-C and exit by themselves when the
    parent dies; the parent notices Ctrl-C (`Interrupt.requested`) within half a second of
    waiting, never while it spawns a worker (a worker cut off mid-spawn prints a traceback),
    and then stops its workers."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    context = multiprocessing.get_context("spawn")
    gpu_slots = context.SimpleQueue()  # no feeder thread that the interpreter's exit would wait for
    for gpu in gpu_assignment(workers, visible_gpus()):
        gpu_slots.put(gpu)
    threads = max(1, available_cores() // workers)
    pool = ProcessPoolExecutor(
        workers,
        mp_context=context,
        initializer=_local_worker_init,
        initargs=(config.backend, threads, plugins, gpu_slots, os.getpid()),
    )
    try:
        with _sigint_blocked():  # a pool spawns its workers as cells are submitted
            pending = {pool.submit(_run_cell_in_worker, cell, config, out) for cell, _ in todo}
        while pending:
            done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)  # wakes up for Ctrl-C
            for future in done:
                finish(future.result())
            Interrupt.check()
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        for child in multiprocessing.active_children():
            child.terminate()
        raise
    pool.shutdown()


def _run_cell_on_ray(cell, config: StudyConfig, plugins: list[str], out: Path | None) -> dict:
    import ray

    _prepare_worker(config.backend, config.cell_cpus, plugins)
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
    runtime_env = {"env_vars": {"KERAS_BACKEND": config.backend, **thread_env(config.cell_cpus)}}
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
