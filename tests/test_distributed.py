"""Spreading a study: shards that partition the grid, merged results, GPU pinning, and Ray."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pandas as pd
import pytest

from helpers import ROOT, run_cli
from study.config import build_study_config
from study.executors import gpu_assignment, pin_gpu, ray_available, visible_gpus
from study.results import MergeConflictError, merge_results
from study.runner import select_shard, study_cells

SLURM = ROOT / "examples" / "slurm"


def _same_metrics(a, b, seeds=None, models=None, tasks=None) -> None:
    """Two metrics.csv files hold the same rows (order aside), `b` only those of `seeds`,
    `models` and `tasks` if given."""
    # text columns read as text even where a subset of rows leaves them empty
    text = {"task_data": "string", "stop_reason": "string"}
    left, right = (pd.read_csv(p, dtype=text).sort_values(["cell_id", "length"]).reset_index(drop=True) for p in (a, b))
    if seeds is not None:
        right = right[right["seed"].isin(seeds)].reset_index(drop=True)
    if models is not None:
        right = right[right["model"].isin(models)].reset_index(drop=True)
    if tasks is not None:
        right = right[right["task"].isin(tasks)].reset_index(drop=True)
    pd.testing.assert_frame_equal(left, right)


@pytest.mark.parametrize("profile", ["smoke", "standard", "full"])
@pytest.mark.parametrize("count", [1, 2, 3, 7, 64])
def test_shards_partition_the_grid(profile, count):
    grid = study_cells(build_study_config(profile))
    shards = [select_shard(grid, (i, count)) for i in range(count)]
    ids = [cid for shard in shards for _, cid in shard]
    assert sorted(ids) == sorted(cid for _, cid in grid)  # every cell once: no gap, no overlap
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1


def test_shard_of_a_cell_does_not_depend_on_the_order_of_the_grid():
    config = build_study_config("standard")
    reordered = dataclasses.replace(
        config, tasks=config.tasks[::-1], models=config.models[::-1], seeds=config.seeds[::-1]
    )
    for i in range(3):
        assert {cid for _, cid in select_shard(study_cells(config), (i, 3))} == {
            cid for _, cid in select_shard(study_cells(reordered), (i, 3))
        }


def test_bad_shard_is_refused_in_one_line(tmp_path):
    for bad in ("2/2", "1", "a/b", "0/0"):
        result = run_cli("--profile", "smoke", "--shard", bad, "--out", str(tmp_path / "x"))
        assert result.returncode == 2 and result.stderr.startswith("error: ") and "--shard" in result.stderr, (
            bad,
            result.stderr,
        )
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_slurm_array_shards_then_merge_reproduce_the_single_machine_study(smoke_run, tmp_path):
    """The example job-array scripts, run as SLURM would run them, give the smoke study's metrics
    (its seed-0 `dot` cells: the same cells, as ids do not depend on the rest of the grid)."""
    out = tmp_path / "smoke"
    env = {
        **os.environ,
        "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}",
        "PROFILE": "smoke",
        "OUT": str(out),
        "SLURM_SUBMIT_DIR": str(ROOT),
        "SLURM_ARRAY_TASK_COUNT": "2",
        "STUDY_ARGS": "--seeds 0 --models dot",
    }
    shards = [
        subprocess.Popen(
            ["bash", str(SLURM / "study_shard.sbatch")],
            env={**env, "SLURM_ARRAY_TASK_ID": str(i)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    for shard in shards:
        _, err = shard.communicate(timeout=900)
        assert shard.returncode == 0, err[-3000:]
    shard_cells = [json.loads((out / f"shard-{i}" / "study.json").read_text())["cells"] for i in range(2)]
    assert len(shard_cells[0]) == len(shard_cells[1]) == 1 and not set(shard_cells[0]) & set(shard_cells[1])
    merged = subprocess.run(
        ["bash", str(SLURM / "report.sbatch")], env=env, capture_output=True, text=True, timeout=900
    )
    assert merged.returncode == 0, merged.stderr[-3000:]
    assert "merged 2 cells from 2 folder(s)" in merged.stdout and "warning" not in merged.stderr
    _same_metrics(out / "metrics.csv", smoke_run[0] / "metrics.csv", seeds=[0], models=["dot"])
    assert (out / "report.md").is_file()


def _copy_results(source, target, keep=None):
    shutil.copytree(source, target)
    if keep is not None:
        for path in (target / "cells").glob("*.json"):
            if path.stem not in keep:
                path.unlink()
        manifest = json.loads((target / "study.json").read_text())
        manifest["cells"] = [c for c in manifest["cells"] if c in keep]
        (target / "study.json").write_text(json.dumps(manifest))


@pytest.mark.slow
def test_merge_accepts_identical_duplicates_prefers_finished_cells_and_names_missing_ones(smoke_run, tmp_path):
    source = smoke_run[0]
    ids = json.loads((source / "study.json").read_text())["cells"]
    _copy_results(source, tmp_path / "a", keep=set(ids[:5]))
    _copy_results(source, tmp_path / "b", keep=set(ids[3:7]))  # cells 3, 4 in both; cell 7 in neither
    record = json.loads((tmp_path / "b" / "cells" / f"{ids[3]}.json").read_text())
    record["wall_seconds"] += 5  # another run of the same cell: timings differ, results do not
    (tmp_path / "b" / "cells" / f"{ids[3]}.json").write_text(json.dumps(record))
    failed = json.loads((tmp_path / "a" / "cells" / f"{ids[4]}.json").read_text())
    failed.update(status="failed", error="RuntimeError: out of memory", metrics=[])
    (tmp_path / "a" / "cells" / f"{ids[4]}.json").write_text(json.dumps(failed))
    warnings = []
    records, missing = merge_results([tmp_path / "a", tmp_path / "b"], tmp_path / "merged", warn=warnings.append)
    assert [r["id"] for r in records] == ids[:7] and missing == ids[7:]
    assert next(r for r in records if r["id"] == ids[4])["status"] == "ok"
    assert len(warnings) == 1 and "1 of 8 cells" in warnings[0]
    assert json.loads((tmp_path / "merged" / "study.json").read_text())["cells"] == ids[:7]


@pytest.mark.slow
def test_conflicting_duplicates_are_reported_and_nothing_is_written(smoke_run, tmp_path):
    source = smoke_run[0]
    _copy_results(source, tmp_path / "a")
    _copy_results(source, tmp_path / "b")
    cid = json.loads((source / "study.json").read_text())["cells"][2]
    record = json.loads((tmp_path / "b" / "cells" / f"{cid}.json").read_text())
    record["metrics"][0]["seq_acc"] = 0.123
    (tmp_path / "b" / "cells" / f"{cid}.json").write_text(json.dumps(record))
    with pytest.raises(
        MergeConflictError, match=rf"1 cell\(s\) finished with different results in different folders: {cid} "
    ):
        merge_results([tmp_path / "a", tmp_path / "b"], tmp_path / "merged")
    assert not (tmp_path / "merged").exists()
    result = run_cli("report", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "merged"))
    assert (
        result.returncode == 2
        and result.stderr.startswith("error: 1 cell(s) finished with different results")
        and "Traceback" not in result.stderr
    )
    result = run_cli("report", str(tmp_path / "a"), str(tmp_path / "b"))
    assert result.returncode == 2 and "--out" in result.stderr


def test_jobs_are_pinned_one_gpu_each_round_robin(monkeypatch):
    assert gpu_assignment(4, ["0", "1"]) == ["0", "1", "0", "1"]
    assert gpu_assignment(2, ["0", "1", "2", "3"]) == ["0", "1"]
    assert gpu_assignment(3, []) == [None, None, None]
    for var in ("TF_FORCE_GPU_ALLOW_GROWTH", "XLA_PYTHON_CLIENT_PREALLOCATE"):
        monkeypatch.setenv(var, "unset after the test")  # pin_gpu sets them; monkeypatch restores them
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    assert visible_gpus() == ["2", "5"]
    pin_gpu("5")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "5" and os.environ["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == []


def test_without_ray_the_ray_executor_is_a_one_line_error(tmp_path):
    if ray_available():
        pytest.skip("Ray is installed here; the missing-Ray message cannot be shown")
    result = run_cli("--profile", "smoke", "--executor", "ray", "--out", str(tmp_path / "x"))
    assert result.returncode == 2 and "requirements-ray.txt" in result.stderr


def test_address_needs_the_ray_executor(tmp_path):
    result = run_cli("--profile", "smoke", "--address", "auto", "--out", str(tmp_path / "x"))
    assert result.returncode == 2 and result.stderr == "error: --address is for --executor ray\n"


@pytest.mark.skipif(not ray_available(), reason="Ray is not installed (pip install -r requirements-ray.txt)")
def test_an_address_without_a_cluster_is_a_one_line_error(tmp_path):
    import socket

    with socket.socket() as probe:  # a local port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for address, message in (
        (f"127.0.0.1:{port}", "no Ray cluster answers at"),
        ("nonsense", "--address must be auto, HOST:PORT"),
    ):
        result = run_cli("--profile", "smoke", "--executor", "ray", "--address", address, "--out", str(tmp_path / "x"))
        assert result.returncode == 2 and result.stderr.startswith(f"error: {message}"), result.stderr
    assert not (tmp_path / "x").exists()


needs_ray = pytest.mark.skipif(
    not ray_available(),
    reason="Ray is not installed (pip install -r requirements-ray.txt); the Ray executor tests need it",
)


DIES_ONCE = textwrap.dedent("""
        import os
        from pathlib import Path

        from study.tasks import register_task
        from study.tasks.base import SymbolTask


        @register_task
        class DiesOnce(SymbolTask):
            name = "dies_once"
            version = 1
            description = "copy, but the first process to draw a training set exits at once"

            def __init__(self, marker: str = "", alphabet: str = "abcdefgh") -> None:
                super().__init__(alphabet)
                self.options["marker"] = marker  # a fresh cache key per test run
                self.marker = marker

            def transform(self, source):
                return source

            def sample(self, rng, n, length):
                if n > 8 and self.marker and not Path(self.marker).exists():  # not the contract check's 8
                    Path(self.marker).write_text(str(os.getpid()))
                    os._exit(1)
                return super().sample(rng, n, length)
    """)


@pytest.mark.slow
@needs_ray
def test_ray_executor_gives_the_local_executors_metrics_and_retries_a_dead_worker(smoke_run, tmp_path):
    """The smoke profile's copy/dot seed-0 cell as a Ray task on a local instance (ray.init(num_cpus=2))
    gives the local executor's metrics; beside them, a task whose first worker process exits
    mid-cell (while generating the cell's data): Ray replaces the worker and the cell runs again,
    to a finished record."""
    plugin, marker, config = tmp_path / "dies_once.py", tmp_path / "died", tmp_path / "study.toml"
    plugin.write_text(DIES_ONCE)
    config.write_text(
        f'[tasks.copy]\n[tasks.dies_once]\ntrain_lengths = [2, 3]\neval_lengths = [3]\noptions = {{ marker = "{marker}" }}\n'
    )
    out = tmp_path / "ray"
    driver = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "run_study.py"),
            "--profile",
            "smoke",
            "--config",
            str(config),
            "--seeds",
            "0",
            "--models",
            "dot",
            "--task-module",
            str(plugin),
            "--executor",
            "ray",
            "--jobs",
            "2",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stdout, stderr = driver.communicate(timeout=900)
    assert driver.returncode == 0, stderr[-3000:]
    assert "Ray (local instance)" in stdout and stdout.count("exact-match") == 2  # progress: a line per cell
    records = [json.loads(p.read_text()) for p in (out / "cells").glob("*.json")]
    assert marker.exists() and {r["status"] for r in records if r["task"] == "dies_once"} == {
        "ok"
    }  # a worker did die; its cell finished
    smoke = out / "smoke-tasks.csv"
    frame = pd.read_csv(out / "metrics.csv")
    frame[frame["task"] != "dies_once"].to_csv(smoke, index=False)
    _same_metrics(smoke, smoke_run[0] / "metrics.csv", seeds=[0], models=["dot"], tasks=["copy"])
    workers = [r["worker"] for r in records]
    assert len(workers) == 2 and all(w["pid"] != driver.pid for w in workers)  # trained outside the driver
    assert len({w["ray_task_id"] for w in workers}) == 2  # each cell one Ray task, by Ray's own ids
    local = [json.loads(p.read_text())["worker"] for p in (smoke_run[0] / "cells").glob("*.json")]
    assert not any("ray_task_id" in w for w in local)


def test_a_worker_with_other_locale_data_fails_its_cell_under_the_asked_id(tmp_path, monkeypatch):
    """A worker (a Ray node, say) whose Babel ships another CLDR computes another cell id for a
    date_format cell; the driver records the cell it asked for as failed, naming the cause and
    keeping the worker's own error, instead of saving a record the grid never asked for."""
    from study import executors, runner
    from study.cell import failed_record
    from study.tasks import date_format

    config = build_study_config(
        "smoke",
        {
            "tasks": {"date_format": {"train_lengths": [1], "eval_lengths": [1]}},
            "models": ["none"],
            "seeds": [0],
            "jobs": 1,
        },
    )
    config = dataclasses.replace(config, tasks=tuple(t for t in config.tasks if t.name == "date_format"))
    ((_, asked),) = study_cells(config)

    def other_machine(cell, config, **kwargs):
        with monkeypatch.context() as patch:
            patch.setattr(date_format, "get_cldr_version", lambda: "1")
            return failed_record(cell, config, "RuntimeError: boom")

    monkeypatch.setattr(executors, "run_cell_safely", other_machine)
    (record,) = runner.run_study(config, tmp_path / "out", progress=False, warn=lambda m: None)
    assert record["id"] == asked and record["status"] == "failed"
    assert (
        "instead of" in record["error"]
        and "package versions (e.g. Babel) differ" in record["error"]
        and "boom" in record["error"]
    )
    assert [p.stem for p in (tmp_path / "out" / "cells").glob("*.json")] == [asked]
