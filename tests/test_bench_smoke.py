"""The benchmark is a tool, not a test: this only checks that a tiny run produces its table (and that options
it cannot divide by are refused before anything starts)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.servers import ROOT


def test_a_tiny_benchmark_run_prints_its_table(tmp_path):
    results = tmp_path / "bench.json"
    run = subprocess.run([sys.executable, "bench/bench.py", "--duration", "1", "--warmup", "0.3", "--connections", "2",
                          "--burst", "10", "--baseline", "", "--loadgen", "python", "--json", str(results)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    for row in ("webhooks/s", "ack latency p99 (ms)", "Feishu calls per webhook", "cards delivered per webhook",
                "non-2xx", "server CPU per webhook (ms)", "peak memory (MB)", "the stack alone", "10 owners", "Feishu hanging",
                "burst of 10 pushes", "naive server: not run", "0 of them duplicates"):
        assert row in run.stdout
    measured = json.loads(results.read_text(encoding="utf-8"))
    assert {"service", "stack_alone", "ten_owners", "hanging_feishu", "burst", "share_of_limit"} <= set(measured)
    assert measured["service"]["cards_per_webhook"] == 1.0      # the per-webhook rows count the right webhooks


@pytest.mark.parametrize("option", [["--rtt", "0"], ["--connections", "0"], ["--duration", "0"]])
def test_values_the_table_cannot_divide_by_are_refused_before_the_run(option):
    run = subprocess.run([sys.executable, "bench/bench.py", *option, "--loadgen", "python"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "must be above 0" in run.stderr
