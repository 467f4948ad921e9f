"""Side-by-side benchmark: this service against the naive reference server, behind a fake Feishu.

    python bench/bench.py [--duration 10] [--connections 16] [--rtt 0.05] [--json results.json]

Both servers run under their production commands on this machine, in the same
run, against the fake Feishu from the tests with an injected round-trip time.
Then: one push to a project with 10 owners, a push while Feishu hangs, the same
load on a bare Flask app that only makes the one Feishu call (bench/bare_app.py,
the stack's own rate on this machine), and a burst of 300 pushes against a fake
that enforces Feishu's quotas.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.load import LoadResult, have_wrk, run_python, run_wrk  # noqa: E402
from bench.processes import (TOKEN, FakeFeishuProcess, MemorySampler, process_tree_cpu,  # noqa: E402
                             start_bare_app, start_baseline, start_service)
from gitlab_feishu.cards import render_content  # noqa: E402
from gitlab_feishu.gitlab import decode_payload, parse_event  # noqa: E402
from tests.servers import ServiceProcess  # noqa: E402

BASELINE = ROOT.parent / "shared" / "baseline" / "seed_server.py"
DEADLINE = 5.0
TEN_OWNERS = [f"owner{i}@example.com" for i in range(10)]
BURST_PROJECTS = 10
# How each server's log shows a handled webhook: the service's one line per webhook (the load's
# Idempotency-Keys start with "bench-"), the naive server's access log.
SERVICE_HANDLED = " key=idem:bench-"
BASELINE_HANDLED = '"POST /gitlab-webhook'


def push_body(path: str, name: str, n: int = 0) -> bytes:
    """A real GitLab push (the Chinese fixture) moved to `path`."""
    payload = json.loads((ROOT / "tests/fixtures/gitlab/chinese_push.json").read_text(encoding="utf-8"))
    web_url = f"https://git.example.cn/{path}"
    payload["project"].update(path_with_namespace=path, name=name, web_url=web_url, homepage=web_url)
    payload["after"] = f"{n + 1:040x}"           # never forty zeros: that would be a branch deletion, no commits
    for commit in payload["commits"]:
        commit["url"] = f"{web_url}/-/commit/{commit['id']}"
    return json.dumps(payload, ensure_ascii=False).encode("utf-8")


def drive(url: str, body: bytes, args, seconds: float) -> LoadResult:
    if args.loadgen == "wrk":
        return run_wrk(url, body, TOKEN, connections=args.connections, seconds=seconds)
    return run_python(url, [body], TOKEN, connections=args.connections, seconds=seconds)


def wait_delivered(fake: FakeFeishuProcess, count: int, timeout: float) -> float | None:
    """Seconds until the fake holds `count` cards, or None if it did not within `timeout`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if fake.state()["delivered"] >= count:
            return time.monotonic() - started
        time.sleep(0.05)
    return None


def settled_state(fake: FakeFeishuProcess, server: ServiceProcess, handled_line: str) -> tuple[dict, int]:
    """The fake's counters and the webhooks the server has handled (its log lines that contain
    `handled_line`), once nothing moves any more."""
    previous = None
    while True:
        current = (fake.state(), server.log().count(handled_line))
        if current == previous:
            return current
        previous = current
        time.sleep(0.5)


def capacity(server: ServiceProcess, fake: FakeFeishuProcess, args, body: bytes, handled_line: str) -> dict:
    """Warm up, then measure webhooks/s, ack latency, Feishu calls and cards per webhook, memory."""
    url = server.url + "/gitlab-webhook"
    if args.warmup:
        drive(url, body, args, args.warmup)
    before, handled_before = settled_state(fake, server, handled_line)
    sampler = MemorySampler(server.process.pid)
    cpu_before = process_tree_cpu(server.process.pid)
    result = drive(url, body, args, args.duration)
    peak = sampler.stop()
    after, handled_after = settled_state(fake, server, handled_line)
    cpu = process_tree_cpu(server.process.pid) - cpu_before     # the webhooks in flight at the end included
    # Counted from the server's log: wrk's tally leaves out requests in flight when it stops.
    handled = max(handled_after - handled_before, 1)
    calls = sum(after["counts"].values()) - sum(before["counts"].values())
    return {"webhooks_per_s": result.rate, "ack_p50_ms": result.p50_ms, "ack_p99_ms": result.p99_ms,
            "feishu_calls_per_webhook": calls / handled,
            "cards_per_webhook": (after["delivered"] - before["delivered"]) / handled,
            "non_2xx": result.non_2xx + result.errors, "refused_by_feishu": after["refused"] - before["refused"],
            "cpu_ms_per_webhook": cpu * 1000 / handled,
            "peak_rss_mb": peak / 2 ** 20, "requests": result.requests}


def one_push_latency(url: str, body: bytes) -> float:
    key = os.urandom(8).hex()
    started = time.perf_counter()
    response = requests.post(url, data=body, timeout=15, headers={
        "Content-Type": "application/json", "X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": TOKEN,
        "Idempotency-Key": key, "User-Agent": "GitLab/18.6.0"})
    response.raise_for_status()
    return time.perf_counter() - started


def stack_alone(folder: Path, fake: FakeFeishuProcess, args, body: bytes) -> dict:
    """The same load on bench/bare_app.py, under the service's command and settings: the stack's own rate."""
    card = render_content(parse_event(decode_payload(body), "Push Hook"))    # as the service sends it
    server = start_bare_app(folder, fake.url, card=card, owner="owner@example.com")
    try:
        url = server.url + "/gitlab-webhook"
        if args.warmup:
            drive(url, body, args, args.warmup)
        cpu_before = process_tree_cpu(server.process.pid)
        result = drive(url, body, args, args.duration)
        cpu = process_tree_cpu(server.process.pid) - cpu_before
    finally:
        server.stop()
    return {"webhooks_per_s": result.rate, "ack_p50_ms": result.p50_ms, "ack_p99_ms": result.p99_ms,
            "non_2xx": result.non_2xx + result.errors, "cpu_ms_per_webhook": cpu * 1000 / max(result.requests, 1)}


def ten_owners(url: str, rtt: float) -> dict:
    """One push to a project with 10 owners, caches warm: deliveries run concurrently."""
    body = push_body("bench/ten-owners", "十人项目")
    for _ in range(4):                       # warm the workers' token and open_id caches
        one_push_latency(url, body)
    seconds = statistics.median(one_push_latency(url, body) for _ in range(7))
    return {"ack_ms": seconds * 1000, "ack_rtts": seconds / rtt if rtt else None}


def hanging_feishu(url: str, fake: FakeFeishuProcess) -> dict:
    """Ack latency while every send hangs longer than the delivery deadline."""
    fake.control(hang_sends=DEADLINE + 2)
    try:
        seconds = one_push_latency(url, push_body("bench/yeshui-client", "Y_野水发财（压测）", 99))
    finally:
        fake.control(hang_sends=None)
    return {"ack_s": seconds, "deadline_s": DEADLINE}


def burst(folder: Path, args) -> dict:
    """300 pushes at once over 10 projects with one owner each, Feishu's quotas enforced."""
    fake = FakeFeishuProcess(args.rtt, quotas=True)
    service = start_service(folder, fake.url, pacing=True)
    try:
        url = service.url + "/gitlab-webhook"
        for i in range(BURST_PROJECTS):      # warm the workers' caches, as on a service that has been running
            for n in range(2):
                one_push_latency(url, push_body(f"bench/burst-{i}", f"压测项目{i}", 10_000 + 10 * i + n))
        time.sleep(1.5)                      # let the warm-up leave the quota windows
        fake.control(reset=True)
        bodies = [push_body(f"bench/burst-{n % BURST_PROJECTS}", f"压测项目{n % BURST_PROJECTS}", n)
                  for n in range(args.burst)]
        started = time.monotonic()
        result = run_python(url, bodies, TOKEN, connections=32, total=args.burst)
        waited = wait_delivered(fake, args.burst, max(60.0, 3 * quota_bound(args.burst)))
        drained = time.monotonic() - started if waited is not None else None
        time.sleep(0.5)                      # a late duplicate would land now
        state = fake.state(summary=False)
    finally:
        service.stop()
        fake.stop()
    minimum = quota_bound(args.burst)
    # Each push's card differs (its compare link names the push's own commit): a duplicate is a card seen twice.
    cards = [json.dumps(message["card"], sort_keys=True, ensure_ascii=False) for message in state["messages"]]
    return {"pushes": args.burst, "acked_2xx": result.requests - result.non_2xx,
            "slowest_ack_ms": max(result.latencies_ms or [0]), "drain_s": drained, "quota_bound_s": minimum,
            "delivered": len(cards), "duplicates": len(cards) - len(set(cards)),
            "attempts_per_card": state["counts"]["send"] / max(len(cards), 1), "rate_limited": state["rate_limited"]}


def quota_bound(cards: int, owners: int = BURST_PROJECTS) -> float:
    """Seconds the quotas alone need for `cards` spread evenly over `owners`: 50/s and 1,000 a minute per app,
    5/s to each owner (the first card goes at 0 s)."""
    if cards <= 0:
        return 0.0
    minutes = (cards - 1) // 1000                    # every full 1,000 waits for the minute window to turn
    app = 60 * minutes + (cards - 1000 * minutes) / 50
    return max(app, -(-cards // owners) / 5)


def write_owners(folder: Path) -> None:
    owners = {"bench/yeshui-client": "owner@example.com", "bench/ten-owners": TEN_OWNERS}
    owners.update({f"bench/burst-{i}": f"burst{i}@example.com" for i in range(BURST_PROJECTS)})
    # Plain UTF-8 without a BOM: the naive server reads it with encoding="utf-8".
    (folder / "owners.json").write_text(json.dumps(owners, ensure_ascii=False, indent=1), encoding="utf-8")


def run(args) -> dict:
    results: dict = {"cores": os.cpu_count(), "rtt_ms": args.rtt * 1000, "connections": args.connections,
                     "duration_s": args.duration, "loadgen": args.loadgen}
    body = push_body("bench/yeshui-client", "Y_野水发财（压测）")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_owners(folder)
        fake = FakeFeishuProcess(args.rtt)
        try:
            service = start_service(folder, fake.url, pacing=False)
            try:
                url = service.url + "/gitlab-webhook"
                results["service"] = capacity(service, fake, args, body, SERVICE_HANDLED)
                results["ten_owners"] = ten_owners(url, args.rtt)
                results["hanging_feishu"] = hanging_feishu(url, fake)
            finally:
                service.stop()
            fake.control(reset=True)
            results["stack_alone"] = stack_alone(folder, fake, args, body)
            if args.baseline and Path(args.baseline).is_file():
                fake.control(reset=True)
                baseline = start_baseline(Path(args.baseline), folder, fake.url)
                try:
                    results["baseline"] = capacity(baseline, fake, args, body, BASELINE_HANDLED)
                finally:
                    baseline.stop()
            else:
                results["baseline_not_run"] = args.baseline
        finally:
            fake.stop()
        if args.burst:
            results["burst"] = burst(folder, args)
    return results


ROWS = [("webhooks/s", "webhooks_per_s", "{:.1f}"), ("ack latency p50 (ms)", "ack_p50_ms", "{:.1f}"),
        ("ack latency p99 (ms)", "ack_p99_ms", "{:.1f}"), ("Feishu calls per webhook", "feishu_calls_per_webhook", "{:.2f}"),
        ("cards delivered per webhook", "cards_per_webhook", "{:.2f}"), ("non-2xx", "non_2xx", "{:d}"),
        ("requests Feishu refused", "refused_by_feishu", "{:d}"),
        ("server CPU per webhook (ms)", "cpu_ms_per_webhook", "{:.2f}"), ("peak memory (MB)", "peak_rss_mb", "{:.1f}")]


def summarize(results: dict) -> None:
    """Add what the table derives: the ratios to the naive server and the share of the synchronous limit."""
    service, baseline = results["service"], results.get("baseline")
    if baseline:
        results["ratios"] = {key: service[key] / baseline[key] for _, key, _ in ROWS if baseline[key]}
    results["synchronous_limit_per_s"] = results["connections"] / (results["rtt_ms"] / 1000)
    results["share_of_limit"] = service["webhooks_per_s"] / results["synchronous_limit_per_s"]
    if results.get("stack_alone"):
        bare = results["stack_alone"]
        bare["share_of_limit"] = bare["webhooks_per_s"] / results["synchronous_limit_per_s"]
        results["share_of_stack_alone"] = service["webhooks_per_s"] / bare["webhooks_per_s"]


def table(results: dict) -> str:
    service, baseline = results["service"], results.get("baseline")
    lines = [f"{results['cores']} cores, Feishu RTT {results['rtt_ms']:.0f} ms, {results['connections']} connections, "
             f"{results['duration_s']:g} s per server, load: {results['loadgen']}", "",
             f"{'':<30}{'this service':>14}{'naive server':>14}{'ratio':>9}"]
    for label, key, fmt in ROWS:
        other = fmt.format(baseline[key]) if baseline else "-"
        ratio = f"{results['ratios'][key]:.1f}x" if key in results.get("ratios", {}) else ""
        lines.append(f"{label:<30}{fmt.format(service[key]):>14}{other:>14}{ratio:>9}")
    lines += ["", f"synchronous limit (connections / RTT): {results['synchronous_limit_per_s']:.0f}/s; "
                  f"this service reached {results['share_of_limit']:.0%}"]
    if "baseline_not_run" in results:
        path = results["baseline_not_run"]
        lines.append(f"naive server: not run ({path} not found; --baseline PATH names it)" if path else
                     "naive server: not run (--baseline was empty)")
    if results.get("stack_alone"):
        bare = results["stack_alone"]
        lines.append(f"the stack alone (bench/bare_app.py: one Feishu call, same command and settings): "
                     f"{bare['webhooks_per_s']:.1f}/s = {bare['share_of_limit']:.0%} of the limit, "
                     f"p99 {bare['ack_p99_ms']:.1f} ms; this service ran at {results['share_of_stack_alone']:.0%} of that rate")
    ten = results["ten_owners"]
    lines.append(f"10 owners, warm caches: acked in {ten['ack_ms']:.0f} ms = {ten['ack_rtts']:.2f} RTT")
    hang = results["hanging_feishu"]
    lines.append(f"Feishu hanging: acked in {hang['ack_s']:.2f} s (deadline {hang['deadline_s']:g} s)")
    if "burst" in results:
        b = results["burst"]
        drain = f"{b['drain_s']:.1f} s" if b["drain_s"] is not None else \
            f"NOT drained in {max(60.0, 3 * b['quota_bound_s']):g} s"
        lines += [f"burst of {b['pushes']} pushes over {BURST_PROJECTS} projects, Feishu quotas enforced:",
                  f"  acked 2xx {b['acked_2xx']}/{b['pushes']}, slowest ack {b['slowest_ack_ms']:.0f} ms; "
                  f"drained in {drain} (quota-bound minimum {b['quota_bound_s']:.1f} s); "
                  f"{b['delivered']} cards, {b['duplicates']} of them duplicates",
                  f"  send attempts per card {b['attempts_per_card']:.2f}, "
                  f"429s received (rate-limit refusals) {b['rate_limited']}"]
    return "\n".join(lines)


def stop_on_signals() -> None:
    """`kill` (SIGTERM) or a closed terminal (SIGHUP) stop the run as Ctrl+C does: the servers and the fake are
    stopped and the temporary folder removed. Python's default for both ends the process at once, and the
    servers, in sessions of their own, went on running."""
    def stop(signum, frame):
        for name in ("SIGTERM", "SIGHUP"):
            signal.signal(getattr(signal, name), signal.SIG_IGN)     # a second one must not cut the clean-up short
        raise SystemExit(128 + signum)
    for name in ("SIGTERM", "SIGHUP"):
        signal.signal(getattr(signal, name), stop)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/bench.py", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per server (default 10)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before measuring (default 3)")
    parser.add_argument("--connections", type=int, default=16, help="concurrent connections (default 16)")
    parser.add_argument("--rtt", type=float, default=0.05, help="Feishu round-trip time in seconds (default 0.05)")
    parser.add_argument("--burst", type=int, default=300, help="pushes in the burst scenario (0 skips it)")
    parser.add_argument("--baseline", default=str(BASELINE), help="the naive server (default: %(default)s)")
    parser.add_argument("--loadgen", choices=("wrk", "python"), default="wrk" if have_wrk() else "python")
    parser.add_argument("--json", metavar="FILE", help="also write the results to FILE")
    args = parser.parse_args(argv)
    if args.loadgen == "wrk" and not have_wrk():
        parser.error("--loadgen wrk: wrk is not installed (apt install wrk), or use --loadgen python")
    if args.rtt <= 0 or args.connections < 1 or args.duration <= 0 or args.warmup < 0 or args.burst < 0:
        parser.error("--rtt, --connections and --duration must be above 0 (the synchronous limit is connections / RTT); "
                     "--warmup and --burst at least 0")
    if args.json and not Path(args.json).resolve().parent.is_dir():       # found now, not after minutes of load
        parser.error(f"--json {args.json}: there is no folder {Path(args.json).resolve().parent}")
    stop_on_signals()
    results = run(args)
    summarize(results)
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, ensure_ascii=False), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
