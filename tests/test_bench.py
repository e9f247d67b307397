"""The benchmark runs end to end and reports what it promises (no assertion on any timing)."""

import json
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.slow
def test_throughput_bench_runs_both_sides_and_checks_the_compiled_decoder():
    cmd = [sys.executable, "-m", "study.bench", "--json", "--length", "8", "--min-length", "4", "--examples", "512",
           "--decode-examples", "128", "--attention", "dot", "--units", "32", "--embedding", "8"]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["decode_outputs_identical_to_per_token_loop"] is True
    for key in ("train_tokens_per_s", "decode_tokens_per_s", "baseline_train_tokens_per_s", "baseline_decode_tokens_per_s", "train_speedup"):
        assert report[key] > 0, key
