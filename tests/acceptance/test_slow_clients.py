"""A slow-client attack on `ref2video serve` under a common descriptor limit (`ulimit -n` 1024):
about 1,100 sockets that each send one header line a second, reconnecting whenever the server
closes them. Normal clients are still served meanwhile, a task's worker still fetches its reference,
and nothing in the process runs out of file descriptors."""

from __future__ import annotations

import errno
import resource
import select
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.live import free_port, make_body

from .procs import env_for, spawn, stop, wait_healthy

pytestmark = pytest.mark.slow

FD_LIMIT = 1024  # a common default of `ulimit -n`
ATTACKERS = 1100  # more sockets than the server has descriptors
ATTACK_LIMIT_S = 45.0  # the attacker gives up by itself after this, whatever the test does
CLIENT_TIMEOUT_S = 10.0  # a normal request that takes longer than this counts as not served


class SlowClients(threading.Thread):
    """`count` sockets that send `GET /health` and then a header line every `pace` seconds, never
    ending their headers; one the server closes is opened again at once (a persistent attacker)."""

    def __init__(self, port: int, count: int, pace: float = 1.0) -> None:
        super().__init__(name="slow-clients", daemon=True)
        self.address = ("127.0.0.1", port)
        self.count = count
        self.pace = pace
        self.opened = 0  # connections established, in all
        self.cut = 0  # of those, closed by the server
        self.done = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._attack()
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.error = exc

    def _attack(self) -> None:
        poller = select.poll()
        socks: dict[int, socket.socket] = {}
        connected: set[int] = set()

        def forget(fd: int) -> None:
            poller.unregister(fd)
            connected.discard(fd)
            socks.pop(fd).close()

        deadline = time.monotonic() + ATTACK_LIMIT_S
        next_line = time.monotonic() + self.pace
        try:
            while not self.done.is_set() and time.monotonic() < deadline:
                while len(socks) < self.count:  # connect without waiting: the kernel queues them
                    sock = socket.socket()
                    sock.setblocking(False)
                    if sock.connect_ex(self.address) not in (0, errno.EINPROGRESS):
                        sock.close()
                        break
                    socks[sock.fileno()] = sock
                    poller.register(sock, select.POLLOUT | select.POLLIN)
                for fd, event in poller.poll(100):
                    sock = socks[fd]
                    if fd not in connected:
                        if event & select.POLLOUT and not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                            connected.add(fd)
                            self.opened += 1
                            poller.modify(fd, select.POLLIN)
                            self._send(sock, b"GET /health HTTP/1.1\r\nHost: x\r\n")
                        else:
                            forget(fd)
                    else:  # readable: the server closed it (or answered it, and will close it)
                        self.cut += 1
                        forget(fd)
                if time.monotonic() >= next_line:
                    next_line += self.pace
                    for fd in list(connected):
                        if not self._send(socks[fd], b"X-Slow: 1\r\n"):
                            forget(fd)
        finally:
            for sock in socks.values():
                sock.close()

    @staticmethod
    def _send(sock: socket.socket, data: bytes) -> bool:
        try:
            sock.send(data)
            return True
        except OSError:
            return False


def _fd_limit(limit: int) -> None:
    """In the server's process before it starts: the descriptor limit of many systems."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))


def _served(call: Callable[[], httpx.Response]) -> str:
    """'200', or why the request was not served."""
    try:
        return str(call().status_code)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"


def test_slow_clients_do_not_starve_normal_ones(tmp_path: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = ATTACKERS + 512  # the attacker's sockets, and the reference server's and the test's own
    if soft != resource.RLIM_INFINITY and soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"the attacker needs {need} file descriptors; the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    data = tmp_path / "data"
    env = env_for(data, f"sqlite:///{tmp_path / 'db.sqlite'}", port=port, workers=1, http_header_timeout=3)
    log = tmp_path / "server.log"
    proc = spawn(["serve"], env, log, preexec=lambda: _fd_limit(FD_LIMIT))
    attacker = SlowClients(port, ATTACKERS)
    try:
        wait_healthy(url, proc)
        key = (data / "first-api-key.txt").read_text().strip()

        attacker.start()
        deadline = time.monotonic() + 30
        while attacker.opened < ATTACKERS:  # every slow socket has connected at least once
            assert time.monotonic() < deadline and attacker.is_alive(), (attacker.opened, attacker.error)
            time.sleep(0.05)

        # New connections each time, as a client would make them under attack.
        health = [_served(lambda: httpx.get(f"{url}/health", timeout=CLIENT_TIMEOUT_S)) for _ in range(5)]
        assert health == ["200"] * 5, (health, log.read_text()[-3000:])

        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"},
                          timeout=CLIENT_TIMEOUT_S) as client:
            created = client.post("/task/bailian/ref2video", json=make_body(prompt="steps=2 step_ms=20"))
            assert created.status_code == 200, created.text
            task_id = created.json()["output"]["task_id"]
            deadline = time.monotonic() + 30
            while (output := client.get(f"/api/v1/tasks/{task_id}").json()["output"])["task_status"] not in (
                    "SUCCEEDED", "FAILED", "CANCELED"):
                assert time.monotonic() < deadline, output
                time.sleep(0.05)
            assert output["task_status"] == "SUCCEEDED", (output, log.read_text()[-3000:])

        assert attacker.is_alive(), attacker.error  # the attack ran all along
        assert attacker.cut > 0  # and the server cut slow sockets to serve the normal client
    finally:
        attacker.done.set()
        if attacker.ident is not None:
            attacker.join(ATTACK_LIMIT_S)
        stop(proc)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    text = log.read_text()
    assert "EMFILE" not in text and "Too many open files" not in text, text[-3000:]
