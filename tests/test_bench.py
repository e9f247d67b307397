"""The benchmark runs end to end and reports what it promises (no assertion on any timing)."""

import json
import subprocess
import sys

import pytest

from helpers import ROOT


@pytest.mark.slow
def test_throughput_bench_runs_both_sides_and_checks_the_compiled_decoder():
    cmd = [
        sys.executable,
        "-m",
        "study.bench",
        "--json",
        "--length",
        "8",
        "--min-length",
        "4",
        "--examples",
        "512",
        "--decode-examples",
        "128",
        "--attention",
        "dot",
        "--units",
        "32",
        "--embedding",
        "8",
    ]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["decode_outputs_identical_to_per_token_loop"] is True
    for key in (
        "train_tokens_per_s",
        "decode_tokens_per_s",
        "baseline_train_tokens_per_s",
        "baseline_decode_tokens_per_s",
        "train_speedup",
    ):
        assert report[key] > 0, key


def test_every_bench_flag_has_help_and_numbers_print_readably():
    from study.bench import _parser, readable_number

    assert all(action.help for action in _parser()._actions if action.option_strings), "a flag without help"
    assert (
        readable_number(2.009338239396104),
        readable_number(123456.7),
        readable_number(0.0001234),
        readable_number(True),
        readable_number(3),
    ) == ("2.01", "123,457", "0.000123", True, 3)
