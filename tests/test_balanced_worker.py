"""gunicorn's workers take turns at new connections (gitlab_feishu/balanced_worker.py).

Which worker holds a connection is read from /proc: the worker's socket whose peer is the client's port.
"""
from __future__ import annotations

import collections
import os
import socket
from pathlib import Path

import pytest

from tests.servers import ROOT, ServiceProcess, service_env, wait_for

pytestmark = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux's /proc")


def holders(worker_pids: list[int], client_ports: set[int]) -> dict[int, int]:
    """Client port -> pid of the worker holding that connection."""
    pid_of_inode = {}
    for pid in worker_pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                pid_of_inode[target[len("socket:["):-1]] = pid
    held = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        peer_port, inode = int(fields[2].rsplit(":", 1)[1], 16), fields[9]
        if peer_port in client_ports and inode in pid_of_inode:
            held[peer_port] = pid_of_inode[inode]
    return held


def worker_pids(master: int) -> list[int]:
    return [int(pid) for pid in os.listdir("/proc") if pid.isdigit() and _parent(int(pid)) == master]


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def test_kept_alive_connections_opened_at_once_spread_over_every_worker(tmp_path):
    """A load generator or a proxy opens its connections together; on plain gthread one worker took nearly all."""
    env = service_env(OWNERS_FILE=str(ROOT / "config" / "owners.json"), DATA_DIR=str(tmp_path / "data"))
    with ServiceProcess(env, tmp_path / "service.log", workers=None) as service:      # gunicorn.conf.py's 4
        # every worker has built its app (each says it runs in dry-run), so each is waiting for connections
        assert wait_for(lambda: service.log().count("dry run, cards are written to the log") == 4, 15)
        connections = []
        try:
            for _ in range(16):
                connection = socket.socket()
                connection.setblocking(False)
                connection.connect_ex(("127.0.0.1", service.port))
                connections.append(connection)
            for connection in connections:
                connection.setblocking(True)
                connection.settimeout(10)
                connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            for connection in connections:
                assert connection.recv(65536).startswith(b"HTTP/1.1 200")
            held = holders(worker_pids(service.process.pid), {c.getsockname()[1] for c in connections})
        finally:
            for connection in connections:
                connection.close()
    assert len(held) == 16
    per_worker = collections.Counter(held.values())
    assert len(per_worker) == 4 and max(per_worker.values()) <= 8, per_worker

