"""Files and folders: text is UTF-8 whatever the locale, names survive a CSV reader, a folder
that cannot be written (or locked) is one line naming it, and nothing is left half-written."""

import ast
import os
import subprocess
import sys
import textwrap

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
