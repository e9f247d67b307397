"""Task and model files loaded from outside the repository (`--task-module`, `--model-module`),
listed so that worker processes load them again before they build a cell:

    plugins = loaded_plugins()    # [("task", "/abs/my_tasks.py"), ("model", "/abs/my_model.py")]
    load_plugins(plugins)         # in a worker process
"""

from __future__ import annotations


def loaded_plugins() -> list[tuple[str, str]]:
    """The task and model files and modules this process loaded, tasks first, each in order."""
    from study.models import loaded_model_modules
    from study.tasks import loaded_plugins as loaded_task_modules

    return [("task", p) for p in loaded_task_modules()] + [("model", p) for p in loaded_model_modules()]


def load_plugins(plugins: list[tuple[str, str]]) -> None:
    """Loads what `loaded_plugins` listed (in another process)."""
    from study.models import load_model_module
    from study.tasks import load_task_module

    for kind, module in plugins:
        (load_task_module if kind == "task" else load_model_module)(module)
