"""Task plugins: one file outside the package, loaded by path, with clear errors."""

import textwrap

import pytest

import study.tasks as tasks
from study.tasks import TaskContractError, TaskModuleError, get_task, load_task_module


def test_plugin_file_registers_its_task(tmp_path):
    plugin = tmp_path / "palindrome_task.py"
    plugin.write_text(
        textwrap.dedent("""
        from study.tasks import Task, register_task

        @register_task
        class Palindrome(Task):
            name = "palindrome_plugin"
            version = 1
            description = "Append the mirror image."
            length_unit = "symbols"
            input_alphabet = "abcd"
            output_alphabet = "abcd"

            def sample(self, rng, n, length):
                src = ["".join("abcd"[i] for i in row) for row in rng.integers(0, 4, size=(n, length))]
                return src, [s + s[::-1] for s in src]
    """)
    )
    assert load_task_module(plugin) == ["palindrome_plugin"]
    assert "palindrome_plugin" in tasks.available_tasks()
    assert get_task("palindrome_plugin").name == "palindrome_plugin"


def test_plugin_that_fails_to_import_names_the_module(tmp_path):
    plugin = tmp_path / "typo_task.py"
    plugin.write_text("import numpy as np\ndef broken(:\n")
    with pytest.raises(TaskModuleError, match=r"task module '.*typo_task.py' failed to import: SyntaxError"):
        load_task_module(plugin)
    with pytest.raises(TaskModuleError, match="no such file"):
        load_task_module(tmp_path / "missing.py")


def test_plugin_that_breaks_the_contract_names_task_and_rule(tmp_path):
    plugin = tmp_path / "empty_task.py"
    plugin.write_text(
        textwrap.dedent("""
        from study.tasks import Task, register_task

        @register_task
        class Empty(Task):
            name = "empty_plugin"
            version = 1
            description = "returns empty targets"
            length_unit = "symbols"
            input_alphabet = "ab"
            output_alphabet = "ab"

            def sample(self, rng, n, length):
                return ["a" * length] * n, [""] * n
    """)
    )
    with pytest.raises(TaskContractError, match=r"task 'empty_plugin'.*every target must be a non-empty str"):
        load_task_module(plugin)


def test_a_plugin_whose_data_depend_on_the_hash_seed_is_refused(tmp_path):
    """An alphabet built from a set differs in every process (PYTHONHASHSEED): the contract check
    draws the data in fresh processes with other hash seeds and says how to fix the task; the
    same task with the set sorted loads."""
    source = textwrap.dedent("""
        from study.tasks import Task, register_task

        LETTERS = ALPHABET


        @register_task
        class SetCopy(Task):
            name = "NAME"
            version = 1
            description = "copy over an alphabet built from a set"
            length_unit = "symbols"
            input_alphabet = output_alphabet = LETTERS

            def sample(self, rng, n, length):
                sources = ["".join(LETTERS[i] for i in row) for row in rng.integers(0, len(LETTERS), size=(n, length))]
                return sources, list(sources)
    """)
    plugin = tmp_path / "set_alphabet_task.py"
    plugin.write_text(source.replace("NAME", "set_alphabet").replace("ALPHABET", '"".join(set("abcdefghij"))'))
    with pytest.raises(
        TaskContractError,
        match=r"task 'set_alphabet' violates the task contract: its alphabets or data differ between processes.*sorted\(set",
    ):
        load_task_module(plugin)
    plugin = tmp_path / "sorted_alphabet_task.py"
    plugin.write_text(
        source.replace("NAME", "sorted_alphabet").replace("ALPHABET", '"".join(sorted(set("abcdefghij")))')
    )
    assert load_task_module(plugin) == ["sorted_alphabet"]
