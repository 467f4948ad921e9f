"""The processes a benchmark run starts (the fake Feishu, the servers) and what they use (CPU, memory)."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

from tests.servers import ROOT, ServiceProcess, free_port, service_env

TOKEN = "bench-secret"


class FakeFeishuProcess:
    """The tests' fake Feishu in its own process, so it does not share a GIL with the load generator."""

    def __init__(self, rtt: float, *, quotas: bool = False):
        command = [sys.executable, "-m", "tests.fake_feishu", "--rtt", str(rtt), "--auto-users"]
        self.process = subprocess.Popen(command + (["--quotas"] if quotas else []), cwd=ROOT,
                                        stdout=subprocess.PIPE, text=True)
        self.url = self.process.stdout.readline().strip()

    def state(self, *, summary: bool = True) -> dict:
        return requests.get(self.url + "/_fake/state" + ("?summary=1" if summary else ""), timeout=10).json()

    def control(self, **commands) -> None:
        requests.post(self.url + "/_fake/control", json=commands, timeout=10).raise_for_status()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def settings_env(folder: Path, fake_url: str, *, pacing: bool, **extra: str) -> dict[str, str]:
    return service_env(FEISHU_APP_ID="cli_test_app", FEISHU_APP_SECRET="test-secret", FEISHU_BASE_URL=fake_url,
                       GITLAB_WEBHOOK_SECRET=TOKEN, OWNERS_FILE=str(folder / "owners.json"),
                       DATA_DIR=str(folder / f"data-{time.monotonic_ns()}"), LOG_DIR=str(folder / "logs"),
                       FEISHU_PACING="on" if pacing else "off", **extra)


def start_service(folder: Path, fake_url: str, *, pacing: bool) -> ServiceProcess:
    return ServiceProcess(settings_env(folder, fake_url, pacing=pacing), folder / "service.log", workers=None).start()


def start_bare_app(folder: Path, fake_url: str, *, card: str, owner: str) -> ServiceProcess:
    """bench/bare_app.py under the service's own command and gunicorn.conf.py."""
    env = settings_env(folder, fake_url, pacing=False, BARE_APP_CARD=card, BARE_APP_OWNER=owner)
    port = free_port()
    command = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--bind", f"127.0.0.1:{port}",
               "bench.bare_app:app"]
    return ServiceProcess(env, folder / "bare_app.log", command=command, port=port).start()


def start_baseline(path: Path, folder: Path, fake_url: str) -> ServiceProcess:
    env = {**os.environ, "FEISHU_BASE_URL": fake_url, "FEISHU_APP_ID": "cli_test_app",
           "FEISHU_APP_SECRET": "test-secret", "OWNERS_FILE": str(folder / "owners.json")}
    port = free_port()
    # Its own folder as the working directory, so gunicorn does not pick up this project's gunicorn.conf.py.
    command = [sys.executable, "-m", "gunicorn", "-w", "4", "-b", f"127.0.0.1:{port}", "--access-logfile", "-",
               f"{path.stem}:app"]
    return ServiceProcess(env, folder / "baseline.log", command=command, port=port, cwd=path.parent).start()


def process_tree(pid: int) -> list[int]:
    """A process and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo += children.get(current, [])
    return tree


def process_tree_rss(pid: int) -> int:
    """Resident memory of a process and all its descendants, in bytes."""
    total = 0
    for member in process_tree(pid):
        try:
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def process_tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by a process and its living descendants."""
    total = 0
    for member in process_tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])         # utime, stime in clock ticks
    return total / os.sysconf("SC_CLK_TCK")


class MemorySampler:
    def __init__(self, pid: int):
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, process_tree_rss(self.pid))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, process_tree_rss(self.pid))
