"""The benchmark is a tool, not a test: this only checks that a tiny run produces its table (and that options
it cannot divide by are refused before anything starts)."""
from __future__ import annotations

import itertools
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bench.load import have_wrk, run_wrk
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


def test_the_burst_minimum_counts_the_per_minute_quota():
    from bench.bench import quota_bound
    assert quota_bound(300) == 6.0                     # the burst: 50/s
    assert quota_bound(1000) == 20.0
    assert quota_bound(1100) == 62.0                   # the 1,001st card waits for the minute window
    assert quota_bound(2100) == 122.0
    assert quota_bound(20) == 0.4


def test_a_json_file_in_a_missing_folder_is_refused_before_the_run(tmp_path):
    run = subprocess.run([sys.executable, "bench/bench.py", "--json", str(tmp_path / "no-such" / "x.json"),
                          "--loadgen", "python"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "there is no folder" in run.stderr


@pytest.mark.skipif(not have_wrk(), reason="wrk is not installed")
def test_wrk_counts_every_answer_outside_2xx_not_only_those_from_400():
    """wrk's own status count starts at 400: a redirect would have passed as a success."""
    answers = itertools.count()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response((200, 302, 500)[next(answers) % 3])
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    with ThreadingHTTPServer(("127.0.0.1", 0), Handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        result = run_wrk(f"http://127.0.0.1:{server.server_address[1]}/gitlab-webhook", b"{}", "token",
                         connections=1, seconds=1)
        server.shutdown()
    assert result.requests >= 3 and result.non_2xx == result.requests - (result.requests + 2) // 3
