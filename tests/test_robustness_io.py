"""Files and folders: text is UTF-8 whatever the locale, names survive a CSV reader, a folder
that cannot be written (or locked) is one line naming it, and nothing is left half-written."""

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from helpers import ROOT, run_cli

# a locale whose encoding is ASCII: Python's UTF-8 mode and C-locale coercion are turned off, so
# anything decoded or encoded with the locale's encoding fails on a non-ASCII character
ASCII_LOCALE = {"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0", "PYTHONIOENCODING": ""}
PROJECT_SOURCES = [ROOT / "run_study.py", *sorted((ROOT / "study").rglob("*.py"))]


def _in_ascii_locale(code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONIOENCODING", "LC_CTYPE")}
    env.update({k: v for k, v in ASCII_LOCALE.items() if v}, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, encoding="utf-8", cwd=ROOT, env=env, timeout=300
    )


def _unencoded_text_calls(tree: ast.AST) -> list[int]:
    """Lines of calls that read or write text with the locale's encoding: `open`, `read_text`,
    `write_text`, `to_csv`/`read_csv` and text-mode `subprocess` calls without `encoding=`."""
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        keywords = {k.arg: k.value for k in node.keywords}
        if "encoding" in keywords:
            continue
        method = isinstance(node.func, ast.Attribute)
        if name in ("read_text", "write_text") and method or name == "read_csv":
            lines.append(node.lineno)
        elif name == "to_csv" and (node.args or "path_or_buf" in keywords):
            lines.append(node.lineno)
        elif name == "open" and not method or name == "fdopen":
            mode = node.args[1] if len(node.args) > 1 else keywords.get("mode")
            if not (isinstance(mode, ast.Constant) and "b" in str(mode.value)):
                lines.append(node.lineno)
        elif name in ("run", "Popen", "check_output") and ("text" in keywords or "universal_newlines" in keywords):
            lines.append(node.lineno)
    return lines


def test_every_text_file_is_read_and_written_with_an_explicit_encoding():
    """No text is decoded or encoded with the locale's encoding anywhere in the project."""
    found = {
        f"{path.relative_to(ROOT)}:{line}"
        for path in PROJECT_SOURCES
        for line in _unencoded_text_calls(ast.parse(path.read_text(encoding="utf-8")))
    }
    assert not found, f"text read or written with the locale's encoding: {sorted(found)}"


def test_a_utf8_config_reads_the_same_under_an_ascii_locale(tmp_path):
    """`alphabet = "abcdéfgh"` is eight symbols under any locale, not a decoding error or mojibake."""
    config = tmp_path / "accents.toml"
    config.write_text('[tasks.copy]\noptions = { alphabet = "abcdéfgh" }\n', encoding="utf-8")
    code = f"import run_study, pathlib; print(ascii(run_study._load_config_file(pathlib.Path({str(config)!r}))))"
    result = _in_ascii_locale(code)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == ascii({"tasks": {"copy": {"options": {"alphabet": "abcdéfgh"}}}})


def test_a_config_that_is_not_utf8_is_one_line_naming_it(tmp_path):
    config = tmp_path / "latin1.toml"
    config.write_bytes('[tasks.copy]\noptions = { alphabet = "abcdéfgh" }\n'.encode("latin-1"))
    result = run_cli("--config", str(config), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert str(config) in result.stderr and "is not UTF-8 text (byte 0xe9" in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()


def test_a_task_module_and_the_terminal_under_an_ascii_locale(tmp_path):
    """A task module is UTF-8 Python source under any locale; a character the terminal's
    encoding cannot show is escaped in the listing instead of ending it with a traceback."""
    plugin = tmp_path / "accent_task.py"
    plugin.write_text(
        textwrap.dedent("""
        from study.tasks import Task, register_task

        @register_task
        class Accents(Task):
            name = "accent_plugin"
            version = 1
            description = "copies é and ü"
            length_unit = "symbols"
            input_alphabet = "éü"
            output_alphabet = "éü"

            def sample(self, rng, n, length):
                src = ["".join("éü"[i] for i in row) for row in rng.integers(0, 2, size=(n, length))]
                return src, src
        """),
        encoding="utf-8",
    )
    code = f"import sys, run_study; sys.exit(run_study.main(['list', '--task-module', {str(plugin)!r}]))"
    result = _in_ascii_locale(code)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "copies \\xe9 and \\xfc" in result.stdout


def _pandas_missing_values() -> list[str]:
    try:
        from pandas._libs.parsers import STR_NA_VALUES
    except ImportError:  # where pandas moves it: the list its documentation gives
        STR_NA_VALUES = {"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND"}
        STR_NA_VALUES |= {"1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"}
    return sorted(STR_NA_VALUES)


@pytest.mark.parametrize("name", [*_pandas_missing_values(), "True", "false", "inf", "Infinity"])
def test_a_name_csv_readers_take_for_a_value_is_refused_at_registration(name, monkeypatch):
    """Task and model names (and a model's attention) name rows of metrics.csv and summary.csv:
    one that `pd.read_csv` reads back as a missing value, a boolean or a number is refused."""
    import dataclasses

    from study.models import MODELS, ModelSpec
    from study.tasks import TASKS, Task, register_task

    for registry in (TASKS, MODELS):  # a name that gets through is gone after the test
        monkeypatch.setattr(registry, "_entries", dict(registry._entries))
    task = type("Named", (Task,), {"name": name})
    with pytest.raises(ValueError, match="task name") as refused:
        register_task(task)
    assert "\n" not in str(refused.value)
    if name.isidentifier():
        assert "read_csv" in str(refused.value)
    with pytest.raises(ValueError, match="model name"):
        MODELS.register(name)(MODELS.get("dot"))
    with pytest.raises(ValueError, match="attention name"):
        dataclasses.replace(ModelSpec("dot_x", "dot", "x"), attention=name)
    assert name not in TASKS and name not in MODELS


def test_every_registered_name_survives_a_csv_round_trip(tmp_path):
    import pandas as pd

    from study.models import MODELS, available_models
    from study.tasks import available_tasks

    names = {
        "task": available_tasks(),
        "model": available_models(),
        "attention": [MODELS.get(m).attention for m in available_models()],
    }
    for column, values in names.items():
        path = tmp_path / f"{column}.csv"
        pd.DataFrame({column: values}).to_csv(path, index=False, encoding="utf-8")
        assert pd.read_csv(path, encoding="utf-8")[column].tolist() == values


def test_a_task_module_registering_a_missing_value_name_is_one_line(tmp_path):
    plugin = tmp_path / "na_task.py"
    plugin.write_text(
        textwrap.dedent("""
        from study.tasks import Task, register_task

        @register_task
        class Missing(Task):
            name = "NA"
            version = 1
            description = "copies"
            length_unit = "symbols"
            input_alphabet = "ab"
            output_alphabet = "ab"

            def sample(self, rng, n, length):
                src = ["a" * length] * n
                return src, src
        """),
        encoding="utf-8",
    )
    result = run_cli("list", "--task-module", str(plugin))
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "na_task.py" in result.stderr and "'NA'" in result.stderr and "missing value" in result.stderr


SMALL_RESULTS = ROOT / "results" / "end-control"  # 6 committed cells: a report without training


def _main(capsys, *argv) -> tuple[int, str]:
    """`run_study.main(argv)` in this process: (exit code, stderr)."""
    import run_study

    code = run_study.main([str(a) for a in argv])
    return code, capsys.readouterr().err


def _one_line(err: str, *words: str) -> None:
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    for word in words:
        assert str(word) in err, (word, err)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def results(tmp_path, monkeypatch):
    """A copy of a small committed results folder; the backend must not start and figures are
    built but not rendered (the slow part)."""
    import shutil

    from study import backend, report

    copy = tmp_path / "results"
    shutil.copytree(SMALL_RESULTS, copy)
    monkeypatch.setattr(report.figures, "_save", lambda fig, folder, name: [f"figures/{name}.png"])
    monkeypatch.setattr(backend, "start_backend", lambda *a, **k: pytest.fail("the backend started"))
    monkeypatch.setenv("KERAS_BACKEND", os.environ.get("KERAS_BACKEND", "tensorflow"))
    return copy


def _failing(errno_: int, where: Path):
    """A stand-in for `open`, `tempfile.mkstemp` and `os.mkdir` that raises `errno_` for
    files and folders written under `where`, as a full disk or a read-only file system does."""
    import io
    import tempfile

    real_open, real_mkstemp, real_mkdir = io.open, tempfile.mkstemp, os.mkdir

    def target(file) -> str:
        return os.readlink(f"/proc/self/fd/{file}") if isinstance(file, int) else os.path.abspath(file)

    def hit(path) -> bool:
        return str(target(path)).startswith(str(where))

    def refuse():
        raise OSError(errno_, os.strerror(errno_))

    def open_(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and hit(file):
            refuse()
        return real_open(file, mode, *args, **kwargs)

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and hit(dir):
            refuse()
        return real_mkstemp(*args, dir=dir, **kwargs)

    def mkdir(path, *args, **kwargs):
        if hit(path):
            refuse()
        return real_mkdir(path, *args, **kwargs)

    return {"open": open_, "mkstemp": mkstemp, "mkdir": mkdir}


def _patch_writes(monkeypatch, errno_: int, where: Path) -> None:
    import builtins
    import io
    import tempfile

    fake = _failing(errno_, where)
    monkeypatch.setattr(builtins, "open", fake["open"])
    monkeypatch.setattr(io, "open", fake["open"])
    monkeypatch.setattr(tempfile, "mkstemp", fake["mkstemp"])
    monkeypatch.setattr(os, "mkdir", fake["mkdir"])


@pytest.mark.parametrize("below", ["", "sub"])
def test_run_out_a_symbolic_link_to_nowhere_is_refused_before_the_backend_starts(tmp_path, results, capsys, below):
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "nowhere")
    out = link / below if below else link
    code, err = _main(capsys, "--profile", "smoke", "--out", out, "--quiet")
    assert code == 2
    _one_line(err, link, "symbolic link", tmp_path / "nowhere", "does not exist")
    assert not (tmp_path / "nowhere").exists()


def test_report_out_a_symbolic_link_to_nowhere_is_one_line(tmp_path, results, capsys):
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "nowhere")
    before = _snapshot(results)
    code, err = _main(capsys, "report", results, "--out", link)
    assert code == 2
    _one_line(err, link, "symbolic link", "does not exist")
    assert _snapshot(results) == before and not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("command", ["report", "rescore"])
def test_report_and_rescore_on_a_read_only_folder_are_one_line_and_change_nothing(
    results, capsys, monkeypatch, command
):
    """A read-only file system, simulated (tests may run as root, for whom permission bits do not
    stop a write): every file or folder created under the results folder fails with EROFS."""
    import errno

    before = _snapshot(results)
    _patch_writes(monkeypatch, errno.EROFS, results)
    code, err = _main(capsys, command, results)
    assert code == 2
    _one_line(err, results, "Read-only file system")
    assert _snapshot(results) == before


class _Full:
    """A file on a disk that fills up: the first write stores half its data, then ENOSPC."""

    def __init__(self, file):
        self.file = file

    def write(self, data):
        import errno

        self.file.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, attr):
        return getattr(self.file, attr)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()


def _disk_full_at(monkeypatch, name: str) -> None:
    """Every file named `name` (or a temporary file for it) fills the disk when written."""
    import builtins
    import io

    real_open = io.open

    def open_(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        path = os.readlink(f"/proc/self/fd/{file}") if isinstance(file, int) else str(file)
        full = any(c in mode for c in "wa") and os.path.basename(path).startswith((name, f".{name}."))
        return _Full(handle) if full else handle

    monkeypatch.setattr(builtins, "open", open_)
    monkeypatch.setattr(io, "open", open_)


@pytest.mark.parametrize("name", ["metrics.csv", "summary.md", "report.md"])
def test_a_full_disk_while_the_report_is_written_is_one_line_and_leaves_no_partial_file(
    results, capsys, monkeypatch, name
):
    """ENOSPC in the middle of writing one file of the report: the error names that file, the
    previous version of it stays whole, the records are untouched and no temporary file is left."""
    before = _snapshot(results)
    _disk_full_at(monkeypatch, name)
    code, err = _main(capsys, "report", results)
    assert code == 2
    _one_line(err, results / name, "No space left on device")
    after = _snapshot(results)
    assert after[name] == before[name]
    assert {k: v for k, v in after.items() if k.startswith("cells")} == {
        k: v for k, v in before.items() if k.startswith("cells")
    }
    assert not [p for p in results.rglob(".*") if p.name != ".lock"], "a temporary file was left"


def test_a_figure_that_cannot_be_written_leaves_no_partial_file(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from study.report.figures import _save

    figures = tmp_path / "figures"
    _save(plt.figure(), figures, "curve")
    before = _snapshot(figures)
    _disk_full_at(monkeypatch, "curve.png")
    with pytest.raises(OSError, match=f"{figures / 'curve.png'}: No space left on device"):
        _save(plt.figure(), figures, "curve")
    assert _snapshot(figures) == before and sorted(p.name for p in figures.iterdir()) == ["curve.png", "curve.svg"]


@pytest.mark.parametrize("code", ["ENOSYS", "EOPNOTSUPP", "ENOLCK"])
def test_a_folder_on_a_file_system_without_flock_is_one_line_and_leaves_no_lock_file(
    tmp_path, results, capsys, monkeypatch, code
):
    """`flock` failing as on Lustre or some NFS mounts: merging into (or running a study in) such a
    folder is refused naming the folder and what to do, and the `.lock` the attempt made is gone."""
    import errno
    import fcntl

    def no_flock(file, operation):
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)))

    monkeypatch.setattr(fcntl, "flock", no_flock)
    out = tmp_path / "merged"
    code_, err = _main(capsys, "report", results, "--out", out)
    assert code_ == 2
    _one_line(err, out, "flock", "local disk")
    assert not (out / ".lock").exists()
    (results / ".lock").write_text("4242", encoding="utf-8")  # a lock file made earlier is left alone

    from study.results import StudyLock, StudyLockedError

    with pytest.raises(StudyLockedError, match="flock does not work on its file system"):
        StudyLock(results).__enter__()
    assert (results / ".lock").read_text(encoding="utf-8") == "4242"
