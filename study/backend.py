"""Starting the Keras backend quietly, before Keras imports it: TensorFlow without its start-up
notices (logging, CPU instructions, oneDNN, absent CUDA drivers), JAX with its persistent
compilation cache.  Every command that runs a model (the study, predict, rescore, the bench,
`study.models.load_trained`) starts the backend here first.

    start_backend("tensorflow")        # before the first `import keras`; Keras computes in float32
    set_random_seed(0)                 # keras.utils.set_random_seed, as quiet on JAX as on TensorFlow
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

# TensorFlow's own C++ logging: errors only; imported before TensorFlow
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


# What TensorFlow's native code prints while it starts, whatever TF_CPP_MIN_LOG_LEVEL says:
# notices about logging, CPU instructions, oneDNN and absent CUDA drivers, not errors.
START_UP_NOTICES = (
    "All log messages before absl::InitializeLog()",
    "oneDNN custom operations are on",
    "Could not find cuda drivers",
    "failed call to cuInit",
    "This TensorFlow binary is optimized to use available CPU instructions",
    "To enable the following instructions",
    "rebuild TensorFlow with the appropriate compiler flags",
    "Unable to register cu",
    "computation placer already registered",
    "TF-TRT Warning",
)


@contextlib.contextmanager
def start_up_notices_filtered():
    """Runs the block with the process's native stderr (file descriptor 2) captured, then writes
    back every line except TensorFlow's start-up notices (`START_UP_NOTICES`), so real errors
    still show and a study's output is not interleaved with them."""
    import sys
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            for line in capture.read().decode(errors="replace").splitlines(keepends=True):
                if not any(notice in line for notice in START_UP_NOTICES):
                    sys.stderr.write(line)
            sys.stderr.flush()


def start_tensorflow(threads: int | None = None):
    """Imports TensorFlow, caps its thread pools at `threads` (None: its defaults) and starts its
    devices, with the start-up notices filtered out.  In a process whose TensorFlow already
    runs, the first thread setting stays."""
    with start_up_notices_filtered():
        import tensorflow as tf

        if threads is not None:
            try:
                tf.config.threading.set_intra_op_parallelism_threads(threads)
                tf.config.threading.set_inter_op_parallelism_threads(threads)
            except RuntimeError:  # TensorFlow is already initialised in this (reused) process
                pass
        tf.config.list_physical_devices("GPU")  # device start-up (CUDA probing) prints here
        # not tf.function's retracing notices, which every new batch shape of greedy decoding triggers
        tf.get_logger().setLevel("ERROR")
    return tf


# the dtype of every model the study builds, whatever `floatx` the user's keras.json (under
# $KERAS_HOME, else ~/.keras) sets: float16 there made training fail (an int16 `Range`), and
# results would not be those of the same cell id in float32; records keep it (`floatx`)
FLOATX = "float32"


def use_study_floatx() -> None:
    """Sets Keras's default float dtype to `FLOATX` for this process."""
    import keras

    keras.config.set_floatx(FLOATX)


def set_random_seed(seed: int) -> None:
    """`keras.utils.set_random_seed(seed)` (Python, NumPy and the backend's generators), with
    TensorFlow's start-up notices filtered out: Keras also seeds TensorFlow whenever it is
    installed, so on JAX this is where TensorFlow is first imported."""
    import keras

    with start_up_notices_filtered():
        keras.utils.set_random_seed(seed)


def jax_cache_dir() -> Path:
    """Where JAX keeps compiled programs between runs: `$XDG_CACHE_HOME` (or ~/.cache)
    /seq2seq-length-study/jax."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "seq2seq-length-study" / "jax"


def enable_jax_compilation_cache() -> None:
    """Turns on JAX's persistent compilation cache (`jax_cache_dir()`), so each bucket shape's
    train step and each decoder compile once per machine, not once per cell and run."""
    import jax

    jax.config.update("jax_compilation_cache_dir", str(jax_cache_dir()))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def start_backend(backend: str | None = None, threads: int | None = None) -> None:
    """Starts the Keras backend (None: `$KERAS_BACKEND`, else TensorFlow) before Keras imports
    it: TensorFlow with its start-up notices filtered and its thread pools capped at `threads`
    (None: its defaults), or JAX with its compilation cache on; then Keras in `FLOATX`."""
    backend = backend or os.environ.get("KERAS_BACKEND", "tensorflow")
    if backend == "tensorflow":
        start_tensorflow(threads)
    elif backend == "jax":
        enable_jax_compilation_cache()
    use_study_floatx()


def start_backend_unless_started() -> None:
    """`start_backend()` in a process that has not imported Keras yet; nothing otherwise (the
    backend is fixed once Keras is imported).  The model modules call it before their own
    `import keras`, so importing them first (to register the classes for
    `keras.saving.load_model`) starts TensorFlow as quietly as a study does."""
    import sys

    if "keras" not in sys.modules:
        start_backend()
