"""Load generators for the benchmark: wrk when it is installed, a Python one otherwise.

Every request is a real GitLab push with a fresh Idempotency-Key, sent over
kept-alive connections, as GitLab's own HTTP client would.
"""
from __future__ import annotations

import http.client
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

WRK_SCRIPT = r"""
local threads = {}
local counter = 0
local body, token, run
non_2xx = 0   -- global: done() reads each thread's count (wrk's own status count starts at 400)

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

function init(args)
  local file = io.open(args[1], "rb")
  body = file:read("*a")
  file:close()
  token, run = args[2], args[3]
end

function request()
  counter = counter + 1
  local key = string.format("bench-%s-%d-%d", run, tid, counter)
  return wrk.format("POST", nil, {
    ["Content-Type"] = "application/json",
    ["User-Agent"] = "GitLab/18.6.0",
    ["X-Gitlab-Event"] = "Push Hook",
    ["X-Gitlab-Token"] = token,
    ["Idempotency-Key"] = key,
    ["X-Gitlab-Event-UUID"] = key,
  }, body)
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    non_2xx = non_2xx + 1
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  local not_2xx = 0
  for _, thread in ipairs(threads) do
    not_2xx = not_2xx + thread:get("non_2xx")
  end
  io.write(string.format("BENCH %d %d %d %d %d %f %f\n", summary.requests, summary.duration,
    e.connect + e.read + e.write, not_2xx, e.timeout, latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass
class LoadResult:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    errors: int
    latencies_ms: list[float] = field(default_factory=list, repr=False)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def run_wrk(url: str, body: bytes, token: str, *, connections: int, seconds: float) -> LoadResult:
    """Drive `url` with wrk for `seconds` over `connections` kept-alive connections."""
    with tempfile.TemporaryDirectory() as folder:
        script, body_file = Path(folder, "push.lua"), Path(folder, "push.json")
        script.write_text(WRK_SCRIPT, encoding="utf-8")
        body_file.write_bytes(body)
        threads = max(1, min(2, connections))
        duration = f"{max(1, round(seconds))}s"          # wrk takes whole seconds
        out = subprocess.run(["wrk", "-t", str(threads), "-c", str(connections), "-d", duration,
                              "--timeout", "10s", "-s", str(script), url, "--", str(body_file), token,
                              uuid.uuid4().hex],
                             capture_output=True, text=True, check=True).stdout
    line = next(line for line in out.splitlines() if line.startswith("BENCH "))
    requests, micros, socket_errors, status_errors, timeouts, p50, p99 = line.split()[1:]
    return LoadResult(requests=int(requests), seconds=int(micros) / 1e6, p50_ms=float(p50) / 1000,
                      p99_ms=float(p99) / 1000, non_2xx=int(status_errors),
                      errors=int(socket_errors) + int(timeouts))


def run_python(url: str, bodies: list[bytes], token: str, *, connections: int, seconds: float | None = None,
               total: int | None = None) -> LoadResult:
    """Drive `url` from threads, for `seconds` or until `total` requests have been sent (cycling `bodies`)."""
    parts = urlsplit(url)
    lock = threading.Lock()
    sent = 0
    latencies: list[float] = []
    statuses: list[int] = []
    errors = 0
    stop_at = time.monotonic() + seconds if seconds is not None else None     # 0 s: nothing is sent

    interrupted = threading.Event()

    def next_body() -> bytes | None:
        nonlocal sent
        with lock:
            if interrupted.is_set() or (total is not None and sent >= total) or \
                    (stop_at and time.monotonic() >= stop_at):
                return None
            sent += 1
            return bodies[(sent - 1) % len(bodies)]

    def client() -> None:
        nonlocal errors
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=15)
        while (body := next_body()) is not None:
            key = f"bench-{uuid.uuid4()}"      # as wrk's keys: bench.py counts the service's lines by this prefix
            headers = {"Content-Type": "application/json", "User-Agent": "GitLab/18.6.0",
                       "X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": token, "Idempotency-Key": key,
                       "X-Gitlab-Event-UUID": key}
            started = time.perf_counter()
            try:
                conn.request("POST", parts.path, body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=15)
                with lock:
                    errors += 1
                continue
            with lock:
                latencies.append((time.perf_counter() - started) * 1000)
                statuses.append(status)
        conn.close()

    started = time.monotonic()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(connections)]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            thread.join()
    except BaseException:       # Ctrl+C or kill: the clients stop now, not at the end of the run's duration
        interrupted.set()
        raise
    elapsed = time.monotonic() - started
    ordered = sorted(latencies) or [0.0]
    return LoadResult(requests=len(latencies), seconds=elapsed, p50_ms=statistics.median(ordered),
                      p99_ms=ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
                      non_2xx=sum(1 for s in statuses if not 200 <= s < 300), errors=errors, latencies_ms=latencies)
