#!/usr/bin/env python
"""Run the sequence-length study, redraw its report, ask its trained models, or list what it can run.

    python run_study.py                          # the standard study -> results/standard/
    python run_study.py --profile smoke          # seconds: every stage on a tiny grid
    python run_study.py --tasks copy --models none,additive --seeds 0,1 --lengths 4,8,16,32
    python run_study.py --config my_study.toml --out results/mine
    python run_study.py report results/standard  # tables and figures again, no training
    python run_study.py --profile full --shard 0/8 --out results/full-0   # one of 8 machines
    python run_study.py report results/full-* --out results/full        # merge the shards, report
    python run_study.py --profile full --executor ray --address auto     # cells as Ray tasks
    python run_study.py predict results/standard --task copy --model additive abcdefgh   # ask a trained model
    python run_study.py rescore results/standard # test metrics again from the saved models
    python run_study.py list                     # tasks, models and profiles

Bad input (an unknown name, a malformed value, an unusable output folder) ends
with a one-line message and exit code 2 before anything is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import sys
import time
from pathlib import Path

import study.backend  # noqa: F401  (sets TensorFlow's log level before anything imports it)
from study.text import comma_list

EXIT_BAD_INPUT = 2
EXIT_CELLS_FAILED = 3  # the study ran, but some cells of the grid (or shard) failed; they are listed


class UsageError(ValueError):
    """Bad command-line input; reported as one line with exit code 2."""


COMMANDS = ("run", "report", "list", "predict", "rescore")


class _Parser(argparse.ArgumentParser):
    argv: list[str] = []  # the command line this parser parses (`_remember_argv`), for the hints below

    def error(self, message: str) -> None:  # one line, exit code 2, no usage dump
        stray = message.partition(":")[2].split() if message.startswith("unrecognized arguments") else []
        commands = [token for token in stray if token in COMMANDS]
        if commands:  # `--task-module X list`: a command after options
            message += f"; the command goes first: python run_study.py {commands[0]} [options]"
        # values after a list option, not a mistyped flag
        elif stray and not any(token.startswith("-") for token in stray):
            message += "; lists are comma-separated, e.g. --seeds 0,1,2 --models none,dot"
        raise UsageError(f"{message}{self._misspelt_options()} (see --help)")

    def _misspelt_options(self) -> str:
        """'; --task: did you mean --tasks?' for each option of the command line that the command
        does not know and that is close to one it does ('' when none is)."""
        parser = self
        if self._subparsers is not None and self.argv:  # the top-level parser: the command's own options
            parser = self._subparsers._group_actions[0].choices.get(self.argv[0], self)
        known = [option for option in parser._option_string_actions if option.startswith("--")]
        hints = []
        for token in self.argv:
            flag = token.split("=", 1)[0]
            if flag.startswith("--") and flag not in known:
                close = difflib.get_close_matches(flag, known, n=1, cutoff=0.7)
                if close:
                    hints.append(f"{flag}: did you mean {close[0]}?")
        return "".join(f"; {hint}" for hint in dict.fromkeys(hints))


def _remember_argv(parser: _Parser, argv: list[str]) -> _Parser:
    """`parser` and each command's parser, told the command line they are about to parse (their
    errors suggest options from it); returns `parser`."""
    parser.argv = list(argv)
    for sub in parser._subparsers._group_actions[0].choices.values() if parser._subparsers else ():
        sub.argv = list(argv)
    return parser


def _count(n: int, noun: str) -> str:
    """'1 task', '3 tasks'."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _seeds(value: str) -> list[int]:
    try:
        seeds = [int(v) for v in comma_list(value)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must be comma-separated integers, got {value!r}") from None
    if not seeds or any(s < 0 for s in seeds):
        raise argparse.ArgumentTypeError(f"seeds must be non-negative integers, got {value!r}")
    return seeds


def _shard(value: str) -> tuple[int, int]:
    try:
        index, count = (int(v) for v in value.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard must be I/N with integers, e.g. 0/4, got {value!r}") from None
    if count < 1 or not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"--shard I/N needs N >= 1 and 0 <= I < N, got {value!r}")
    return index, count


def build_parser() -> argparse.ArgumentParser:
    """The command line of every command (`COMMANDS`); a parse error raises `UsageError` (one line)."""
    parser = _Parser(
        prog="run_study.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # a misspelt option is an error, never a silent prefix match (--profil)
    )
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    run = _add_run_command(sub)
    _add_report_command(sub)
    _add_predict_command(sub)
    _add_rescore_command(sub)
    listing = sub.add_parser("list", allow_abbrev=False, help="list tasks, models and profiles")
    _task_module_option(listing)
    options = ", ".join(a.option_strings[-1] for a in run._actions if a.option_strings and a.dest != "help")
    parser.epilog = (
        f"Without a command, the arguments are those of `run`: {options}.\n"
        "Each command's own options: python run_study.py COMMAND --help"
    )
    return parser


def _add_run_command(sub) -> argparse.ArgumentParser:
    """`run` and its options (what the study trains, where and how); returns its parser."""
    from study.config import BACKENDS, REGIMES
    from study.executors import EXECUTORS

    run = sub.add_parser("run", allow_abbrev=False, help="run a study (the default command)")
    run.add_argument("--profile", default="standard", help="smoke, standard (default) or full")
    run.add_argument("--config", type=Path, help="a TOML file with any setting a profile has")
    run.add_argument("--tasks", type=comma_list, help="comma-separated task names (default: the profile's)")
    run.add_argument("--models", type=comma_list, help="comma-separated model names")
    run.add_argument("--seeds", type=_seeds, help="comma-separated seeds, e.g. 0,1,2")
    run.add_argument("--lengths", help="evaluation lengths for every selected task, e.g. 4,8,16 or 4..32")
    run.add_argument("--train-lengths", help="training lengths for every selected task, e.g. 4..32")
    run.add_argument("--regime", choices=REGIMES, help="one model over all training lengths, or one per length")
    run.add_argument("--backend", choices=BACKENDS, help="Keras backend (default tensorflow)")
    run.add_argument(
        "--jobs",
        type=int,
        help="cells trained in parallel processes (default 0: one per CPU core; with GPUs, pinned one GPU each)",
    )
    run.add_argument(
        "--shard", type=_shard, metavar="I/N", help="run only shard I of N (0-based), e.g. one task of a job array"
    )
    run.add_argument("--executor", choices=EXECUTORS, default="local", help="local processes (default) or Ray tasks")
    run.add_argument("--address", help="Ray cluster address for --executor ray (default: start a local Ray instance)")
    run.add_argument("--out", type=Path, help="results folder (default results/<profile>)")
    _task_module_option(run)
    run.add_argument("--fresh", action="store_true", help="recompute cells that are already finished")
    run.add_argument(
        "--tensorboard",
        action="store_true",
        default=None,
        help="write training curves for TensorBoard under <out>/logs/",
    )
    run.add_argument("--quiet", action="store_true", help="no progress bars or per-cell lines")
    return run


def _add_report_command(sub) -> None:
    """`report`: one results folder, or several merged into --out."""
    report = sub.add_parser(
        "report", allow_abbrev=False, help="redraw tables, figures and report.md from a results folder"
    )
    report.add_argument(
        "results_dirs",
        type=Path,
        nargs="+",
        metavar="DIR",
        help="a results folder, or several to merge (shards, machines)",
    )
    report.add_argument(
        "--out", type=Path, help="folder for the merged results and report (needed with several folders)"
    )
    report.add_argument(
        "--all", action="store_true", help="report every record in the folder, not only the latest run's grid"
    )
    _task_module_option(report)


def _add_predict_command(sub) -> None:
    """`predict`: one trained cell asked about the sources of the command line."""
    ask = sub.add_parser(
        "predict", allow_abbrev=False, help="ask a trained model of a finished study about your own inputs"
    )
    ask.add_argument("results_dir", type=Path, metavar="DIR", help="the results folder of a finished study")
    ask.add_argument("--task", required=True, help="the cell's task")
    ask.add_argument("--model", required=True, help="the cell's model")
    ask.add_argument("--seed", type=int, help="the cell's seed (default: the lowest)")
    ask.add_argument(
        "--attention-map", type=Path, metavar="FILE.png", help="draw the attention weights of the first source"
    )
    _task_module_option(ask)
    ask.add_argument("sources", nargs="+", metavar="SOURCE", help="input strings in the task's alphabet")


def _add_rescore_command(sub) -> None:
    """`rescore`: the test metrics of a finished study again, from its saved models."""
    again = sub.add_parser(
        "rescore",
        allow_abbrev=False,
        help="recompute every cell's test metrics from its saved model, then redraw the report",
    )
    again.add_argument("results_dir", type=Path, metavar="DIR", help="the results folder of a finished study")
    _task_module_option(again)


def _task_module_option(parser: argparse.ArgumentParser) -> None:
    """--task-module and --model-module, which every command takes."""
    parser.add_argument(
        "--task-module", action="append", default=[], help="a Python file or module defining extra tasks (repeatable)"
    )
    parser.add_argument(
        "--model-module",
        action="append",
        default=[],
        help="a Python file or module defining a model family (repeatable)",
    )


def _load_task_modules(args: argparse.Namespace) -> None:
    """Loads the --task-module and --model-module files of the command line."""
    from study.models import load_model_module
    from study.tasks import load_task_module

    for module in args.task_module:
        load_task_module(module)
    for module in args.model_module:
        load_model_module(module)


def _require_folder(path: Path, what: str = "results folder") -> Path:
    """`path`, or a UsageError that says whether it is missing or not a folder."""
    if not path.exists():
        raise UsageError(f"{what} {path} does not exist")
    if not path.is_dir():
        raise UsageError(f"{what} {path} is a file, not a folder")
    return path


ATTENTION_MAP_FORMATS = (".png", ".svg", ".pdf")


def _attention_map_path(path: Path | None) -> Path | None:
    """Where `predict --attention-map` draws: `path`, with .png added when it has no suffix;
    refused in one line when its format is not one of ATTENTION_MAP_FORMATS or its folder does
    not exist (nothing is created outside it)."""
    if path is None:
        return None
    if not path.suffix:
        path = path.with_suffix(".png")
    if path.suffix.lower() not in ATTENTION_MAP_FORMATS:
        raise UsageError(
            f"--attention-map {path}: write it as {', '.join(ATTENTION_MAP_FORMATS)} (e.g. {path.with_suffix('.png')})"
        )
    _require_folder(path.parent if str(path.parent) else Path("."), "--attention-map: folder")
    if path.is_dir():
        raise UsageError(f"--attention-map {path} is a folder; give a file name such as {path / 'attention.png'}")
    return path


def _load_config_file(path: Path) -> dict:
    import tomllib

    if path.is_dir():
        raise UsageError(f"config file {path} is a folder, not a TOML file")
    if not path.is_file():
        raise UsageError(f"config file {path} does not exist")
    from study.results import NotUTF8Error, read_text

    try:
        return tomllib.loads(read_text(path))
    except NotUTF8Error as exc:
        raise UsageError(f"config file {exc}") from None
    except OSError as exc:
        raise UsageError(f"config file {path} cannot be read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file {path} is not valid TOML: {exc}") from None


def _command_line(args: argparse.Namespace) -> dict:
    """The study settings given on the command line, as `study.config.study_configs` takes them."""
    from study.config import COMMAND_LINE_SETTINGS

    given = {name: getattr(args, name) for name in COMMAND_LINE_SETTINGS if getattr(args, name) is not None}
    return {**given, "tasks": args.tasks, "train_lengths": args.train_lengths, "eval_lengths": args.lengths}


def _check_output_dir(out: Path) -> None:
    """Refuses a folder the study could not write: a file, a symbolic link to nowhere (itself or
    a parent to be created), or a folder (the nearest existing one, when `out` is still to be
    created) where no file can be made (read-only file system, no permission: a probe file
    is created and removed there)."""
    from study.results import OutputError, check_writable

    if out.exists() and not out.is_dir():
        raise UsageError(f"output path {out} is a file; give a folder with --out")
    probe = out
    while not probe.exists():
        if probe.is_symlink():
            raise UsageError(
                f"output folder {out}: {probe} is a symbolic link to {os.readlink(probe)}, which does not exist; "
                "create its target or give another folder"
            )
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"output folder {out} cannot be created: {probe} is a file")
    try:
        check_writable(probe)
    except OutputError as exc:
        raise UsageError(f"output folder {out} is not writable: {exc}") from None


def prepare(args: argparse.Namespace):
    """Validates everything a run needs before anything is written.

    Returns (studies, out): `studies` a list of (config, folder), one per `[variants.NAME]`
    table of the config file (each in `<out>/<NAME>`, reported together in `out`), or the one
    study, in `out` itself."""

    from study.config import study_configs

    _load_task_modules(args)
    file_settings = _load_config_file(args.config) if args.config else {}
    configs = study_configs(args.profile, file_settings, _command_line(args))
    out = args.out or Path("results") / configs[0].profile
    studies = [(config, out / config.variant if config.variant else out) for config in configs]
    backends = {config.backend for config, _ in studies}
    if len(backends) > 1:
        raise UsageError(f"the variants of one config file run on one backend, got {', '.join(sorted(backends))}")
    if len({config.cell_cpus for config, _ in studies}) > 1:
        raise UsageError("the variants of one config file run with one cell_cpus (the threads of each cell)")
    os.environ["KERAS_BACKEND"] = studies[0][0].backend
    if args.address and args.executor != "ray":
        raise UsageError("--address is for --executor ray")
    if args.executor == "ray":
        from study.executors import check_ray_address, ray_available

        if not ray_available():
            raise UsageError("--executor ray needs Ray, which is not installed: pip install -r requirements-ray.txt")
        if args.address:
            check_ray_address(args.address)
    for folder in {out, *(folder for _, folder in studies)}:
        _check_output_dir(folder)
    from study.executors import cell_threads, limit_threads

    # after every check: bad input is refused without waiting for it; capped as every cell is,
    # for the cells this process trains itself (--jobs 1)
    limit_threads(studies[0][0].backend, cell_threads(studies[0][0]))
    return studies, out


def _study_header(args: argparse.Namespace, config, folder: Path, grid: list) -> str:
    """The line printed before a study runs: its cells (and shard), backend, executor and folder."""
    from study.runner import select_shard

    where = (
        f"Ray ({args.address or 'local instance'})" if args.executor == "ray" else f"{config.workers} parallel job(s)"
    )
    shard = (
        f", shard {args.shard[0]}/{args.shard[1]}: {len(select_shard(grid, args.shard))} of them" if args.shard else ""
    )
    name = f"variant {config.variant} of the " if config.variant else ""
    return (
        f"{name}{config.profile} study: {_count(len(grid), 'cell')} ({_count(len(config.tasks), 'task')} x "
        f"{_count(len(config.models), 'model')} x {_count(len(config.seeds), 'seed')}"
        f"{', one per training length' if config.regime == 'per_length' else ''}{shard}) on {config.backend}, {where} -> {folder}"
    )


def _finish_run(failed: list[dict], n_ok: int, report: Path, started: float) -> int:
    """Prints the failed cells and the run's last line; returns `run`'s exit code."""
    from study.runner import summary_line

    if failed:
        print("failed cells:")
    for r in failed:
        print(summary_line(r))
    print(
        f"done in {(time.perf_counter() - started) / 60:.1f} min: {_count(n_ok, 'cell')} ok, {len(failed)} failed; report: {report}"
    )
    if failed:
        print(
            f"error: {_count(len(failed), 'cell')} of the grid failed (listed above); fix the cause and run the same command again to retry them",
            file=sys.stderr,
        )
        return EXIT_CELLS_FAILED
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    studies, out = prepare(args)
    from study.report import write_report
    from study.runner import StudyInterrupted, expand_grid, run_study, summary_line

    started = time.perf_counter()

    def on_record(record: dict) -> None:
        if not args.quiet:
            from tqdm.auto import tqdm

            tqdm.write(summary_line(record))

    failed = []
    n_ok = 0
    for config, folder in studies:
        grid = [(cell, None) for cell in expand_grid(config)]  # the header's counts: no task is built for ids here
        if not args.quiet:
            print(_study_header(args, config, folder, grid))
        try:
            records = run_study(
                config,
                folder,
                fresh=args.fresh,
                progress=not args.quiet,
                on_record=on_record,
                shard=args.shard,
                executor=args.executor,
                address=args.address,
            )
        except StudyInterrupted as stop:
            print(
                f"\ninterrupted: {stop.done} of {stop.total} cells are done and saved in {folder}; run the same command again to resume",
                file=sys.stderr,
            )
            return 130
        report = write_report(folder)
        failed += [r for r in records if r["status"] != "ok"]
        n_ok += sum(r["status"] == "ok" for r in records)
    if studies[0][1] != out:  # variants: one report over all of them
        from study.results import merge_results

        merge_results([folder for _, folder in studies], out, warn=lambda message: print(message, file=sys.stderr))
        report = write_report(out)
    return _finish_run(failed, n_ok, report, started)


def cmd_report(args: argparse.Namespace) -> int:
    from study.report import write_report

    _load_task_modules(args)
    for folder in args.results_dirs:
        _require_folder(folder)
    if len(args.results_dirs) > 1 and args.out is None:
        raise UsageError("several results folders are merged into one: give the merged folder with --out")
    out = args.out or args.results_dirs[0]
    _check_output_dir(out)
    if out.resolve() != args.results_dirs[0].resolve() or len(args.results_dirs) > 1:
        from study.results import merge_results

        records, _ = merge_results(args.results_dirs, out, warn=lambda message: print(message, file=sys.stderr))
        print(f"merged {len(records)} cells from {len(args.results_dirs)} folder(s) into {out}")
    print(f"report: {write_report(out, every=args.all)}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from study.config import PROFILES
    from study.tasks import available_tasks, get_task

    _load_task_modules(args)
    print("tasks:")
    for name in available_tasks():
        task = get_task(name)
        data = "".join(f" ({k} {v})" for k, v in task.data_versions.items())
        print(f"  {name:<12} v{task.version}  length = {task.length_unit:<8} {task.description}{data}")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    from study.models import FAMILIES, MODELS, available_models

    print("models:")
    width = max(map(len, available_models()))
    for name in available_models():
        print(f"  {name:<{width}}  {MODELS.get(name).description}")
    print("model settings ([model] table), by family:")
    for name in FAMILIES.in_order():
        fields = dataclasses.fields(FAMILIES.get(name).settings)
        print(f"  {name:<{width}}  {', '.join(f'{f.name} = {f.default!r}' for f in fields)}")
    print("profiles:")
    for name, p in PROFILES.items():
        print(f"  {name:<12} tasks {', '.join(p['tasks'])}; models {', '.join(p['models'])}; seeds {p['seeds']}")
    return 0


def _results_folder(args: argparse.Namespace) -> Path:
    _load_task_modules(args)
    _require_folder(args.results_dir)
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    return args.results_dir


def cmd_predict(args: argparse.Namespace) -> int:
    from study.backend import start_backend
    from study.results import check_prediction, predict

    attention_map = _attention_map_path(args.attention_map)
    out = _results_folder(args)
    # a wrong folder, task, model, seed, source or a missing model is named before the backend's seconds of start-up
    check_prediction(out, args.task, args.model, args.seed, args.sources, attention_map)
    start_backend()
    rows = predict(out, args.task, args.model, args.seed, args.sources, attention_map)
    print(f"{args.task}/{args.model}, cell {rows[0]['cell']}:")
    for row in rows:
        verdict = "" if row["target"] is None else ("  right" if row["exact"] else f"  wrong (target {row['target']})")
        print(f"  {row['source']} -> {row['prediction']}{verdict}")
    from study.vocab import INVALID

    if any(INVALID in row["prediction"] for row in rows):
        print(f"  ({INVALID} marks where the model wrote a special token before END, or never wrote END)")
    if attention_map:
        print(f"attention map: {attention_map}")
    return 0


def cmd_rescore(args: argparse.Namespace) -> int:
    from study.backend import start_backend
    from study.cell import rescore
    from study.report import write_report

    out = _results_folder(args)
    _check_output_dir(out)  # before the backend starts
    start_backend()
    done, skipped = rescore(out, warn=lambda message: print(message, file=sys.stderr))
    if skipped and not done:
        raise UsageError(f"no cell of {out} could be rescored ({skipped} skipped, warnings above); nothing was changed")
    print(
        f"rescored {done} cells ({skipped} without a saved model or a task this machine can rebuild left as they were); report: {write_report(out)}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    for stream in (sys.stdout, sys.stderr):  # a character the terminal's encoding lacks is escaped, not fatal
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    if argv and not argv[0].startswith("-") and argv[0] not in COMMANDS:  # `run` takes no positional arguments
        close = difflib.get_close_matches(argv[0], COMMANDS, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        print(f"error: unknown command {argv[0]!r}{hint} (commands: {', '.join(COMMANDS)})", file=sys.stderr)
        return EXIT_BAD_INPUT
    if not argv or argv[0] not in (*COMMANDS, "-h", "--help"):
        argv = ["run", *argv]
    from study.config import ConfigError
    from study.executors import ExecutorError
    from study.models import ModelModuleError
    from study.registry import UnknownNameError
    from study.results import MergeConflictError, NoResultsError, OutputError, StudyLockedError, TrainedModelError
    from study.tasks import TaskContractError, TaskModuleError, TaskOptionError

    try:
        args = _remember_argv(build_parser(), argv).parse_args(argv)
        command = {
            "run": cmd_run,
            "report": cmd_report,
            "list": cmd_list,
            "predict": cmd_predict,
            "rescore": cmd_rescore,
        }
        code = command[args.command](args)
        sys.stdout.flush()  # a pipe closed early shows here, not at the interpreter's exit
        return code
    except (
        UsageError,
        ConfigError,
        UnknownNameError,
        TaskContractError,
        TaskModuleError,
        TaskOptionError,
        ModelModuleError,
        NoResultsError,
        StudyLockedError,
        ExecutorError,
        MergeConflictError,
        TrainedModelError,
        OutputError,
    ) as exc:
        from study.text import one_line

        print(f"error: {one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:  # the output went into a pipe that closed early (`list | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes at exit
        return 141  # 128 + SIGPIPE, what a shell reports for other tools stopped this way
    except KeyboardInterrupt:  # before the study started, or while the report was drawn
        print("\ninterrupted: finished cells are saved; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
