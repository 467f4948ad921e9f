"""The real service as a separate process, for end-to-end tests and the benchmark."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from gitlab_feishu.settings import ENV_NAMES

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition, timeout=8.0) -> bool:
    """Poll `condition` until it holds or `timeout` seconds pass; its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


# A proxy the developer's machine uses (the README sets HTTPS_PROXY machine-wide behind a company proxy) would
# carry the tests' calls to 127.0.0.1 to the proxy's own machine: tests run as if none were set.
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


def service_env(**settings: str) -> dict[str, str]:
    """The process environment with every service setting blanked (so a developer's .env cannot leak in)."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_NAMES and k not in PROXY_VARIABLES}
    env.update({name: "" for name in ENV_NAMES})
    env.update(settings)
    env["PYTHONUTF8"] = "1"
    return env


class ServiceProcess:
    """`gunicorn -c gunicorn.conf.py webhook_server:app` on a free local port."""

    def __init__(self, env: dict[str, str], log_path: Path, *, workers: int | None = 2,
                 command: list[str] | None = None,
                 port: int | None = None, cwd: Path = ROOT):
        self.port = port or free_port()
        self.cwd = cwd
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = env
        self.log_path = log_path
        # workers=None keeps gunicorn.conf.py's own count (the benchmark measures the production settings).
        self.command = command or [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py",
                                   "--bind", f"127.0.0.1:{self.port}",
                                   *(["--workers", str(workers)] if workers else []), "webhook_server:app"]
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> "ServiceProcess":
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(self.command, cwd=self.cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"service exited with {self.process.returncode}:\n{self.log()}")
            try:
                requests.get(self.url + "/healthz", timeout=1)   # any HTTP answer means it is serving
                return self
            except requests.RequestException:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"service did not answer within {timeout} s:\n{self.log()}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        """SIGKILL the master and its workers at once: nothing gets to clean up."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> "ServiceProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
