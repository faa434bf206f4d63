"""Run the whole stack on one machine: nats-server (JetStream on a local dir, one NKey user per role) and every
service process, each with only its own credential and environment; restart whichever of them dies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from gatehouse.childenv import SERVICES, service_env
from gatehouse.credentials import RoleKey, ensure_admin_key, ensure_credentials, private_dir, producer_keys
from gatehouse.natsconf import render_config
from gatehouse.natsserver import NatsServer, free_port, restart_nats, start_nats
from shared.config import load_config
from shared.natsconn import server_max_payload
from shared.permissions import Role
from shared.producers import Namespace
from shared.subjects import Subjects

# what a data dir holds; a dir holding only these (or nothing) is ours to make private
DATA_DIR_ENTRIES = frozenset({"nats", "logs", "creds", "clickhouse", "nats.conf", "state.json"})
# stop order: stop taking requests first (batch items in hand finish), then the stages behind, accounting
# last so it flushes everything
STOP_ORDER = ("ingress", "batch", "guard", "router", "mcp", "accounting")
# services that do no interactive request-path work, run at a lower CPU priority by the one-machine launcher
# (batch items yield to interactive requests in the router too: services/router/priority.py)
BACKGROUND = frozenset({"accounting", "batch"})
BACKGROUND_NICE = 10


@dataclass
class Child:
    service: str
    index: int
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    last_start: float = 0.0
    metrics_url: str = ""  # where Prometheus scrapes this process ('' : nowhere)

    def start(self) -> None:
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", f"services.{self.service}"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the launcher only; it stops children in order
        )
        log.close()
        if self.service in BACKGROUND:
            # on a shared machine the request path gets the CPU first; storing events can wait a moment
            os.setpriority(os.PRIO_PROCESS, self.process.pid, BACKGROUND_NICE)
        self.last_start = time.monotonic()

    @property
    def name(self) -> str:
        return f"{self.service}-{self.index}"


@dataclass
class Stack:
    config: Path
    data_dir: Path
    host: str
    port: int
    prefix: str = "gh"
    nats_port: int | None = None
    replicas: dict[str, int] = field(default_factory=dict)
    nats: NatsServer | None = None
    children: list[Child] = field(default_factory=list)
    credentials: dict[Role, RoleKey] = field(default_factory=dict)
    admin_key_name: str = "GATEHOUSE_ADMIN_KEY"
    admin_key_file: Path = Path()
    nats_restarts: int = 0
    # first metrics port of guard, router and accounting processes (one each, counting up past taken ports);
    # None: free ports; 0: none. Ingress serves /metrics on its own port
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    _max_payload: int | None = None
    _producers: dict[Namespace, str] = field(default_factory=dict)  # the scoped producers nats-server knows

    @property
    def ingress_urls(self) -> list[str]:
        """Every ingress replica's URL (replica i listens on port + i)."""
        return [f"http://{self.host}:{self.port + i}" for i in range(self.replicas.get("ingress", 1))]

    @property
    def ingress_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def admin_seed_file(self) -> Path:
        """The admin credential (`gatehouse sql`); its path may be shown, its content never."""
        return self.credentials["admin"].seed_file

    def start(self) -> None:
        config = load_config(self.config)
        fresh = not self.data_dir.exists()
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if fresh or set(os.listdir(self.data_dir)) <= DATA_DIR_ENTRIES:
            self.data_dir.chmod(0o700)
        logs = private_dir(self.data_dir / "logs")
        self.credentials = ensure_credentials(self.data_dir / "creds")
        self.admin_key_name = config.governance.admin_key_env
        self.admin_key_file = ensure_admin_key(self.data_dir / "creds")
        conf = self.data_dir / "nats.conf"
        self._max_payload = server_max_payload(config.server.max_body_bytes)
        self._producers = self._render_nats_config(conf)
        nats_port: int | None = 4222 if self.nats_port is None else self.nats_port
        if nats_port == 0 or (nats_port is not None and not _port_free(nats_port)):
            nats_port = None  # nats-server picks a free one itself
        self.nats = start_nats(
            private_dir(self.data_dir / "nats"), port=nats_port, log_file=logs / "nats-server.log", config_file=conf
        )
        next_port = self.metrics_port
        taken = {urlsplit(url).port or 0 for url in self.ingress_urls} | {self.nats.port}
        for service in SERVICES:
            if service == "mcp" and not config.mcp.servers:
                continue  # no upstream MCP server configured: no stage to hold their sessions
            for i in range(self.replicas.get(service, 1)):
                launcher_env = self._launcher_env(service, i)
                metrics_url = ""
                if service == "ingress":
                    metrics_url = f"{self.ingress_urls[i]}/metrics"
                    launcher_env["GATEHOUSE_METRICS_PORT"] = "0"  # its /metrics is on its own port
                elif next_port != 0:
                    port = metrics_port(frozenset(taken), next_port)
                    taken.add(port)
                    next_port = None if next_port is None else port + 1
                    name = "GATEHOUSE_ACCOUNTING_METRICS_PORT" if service == "accounting" else "GATEHOUSE_METRICS_PORT"
                    launcher_env[name] = str(port)
                    metrics_url = f"http://{self.metrics_host}:{port}/metrics"
                env = service_env(service, os.environ, config, launcher_env)
                # each replica names itself in the records it contributes to, as its log file is named
                env["GATEHOUSE_REPLICA"] = f"{service}-{i}"
                child = Child(service, i, env, logs / f"{service}-{i}.log", metrics_url=metrics_url)
                child.start()
                self.children.append(child)
        self._write_state()

    def _render_nats_config(self, conf: Path) -> dict[Namespace, str]:
        """Write nats-server's config: the roles and every scoped producer issued under the data dir's creds."""
        producers = {ns: key.public_key for ns, key in producer_keys(self.data_dir / "creds").items()}
        public = {role: key.public_key for role, key in self.credentials.items()}
        text = render_config(Subjects(self.prefix), public, max_payload=self._max_payload, producers=producers)
        _write_private(conf, text)
        return producers

    def _reload_producers(self) -> list[str]:
        """A producer credential issued or revoked (`gatehouse batch-producers`) while the stack runs: nats-server
        reloads its config (SIGHUP), so a new key may connect and a revoked one may not."""
        if self.nats is None or self.nats.config_file is None:
            return []
        try:
            current = {ns: key.public_key for ns, key in producer_keys(self.data_dir / "creds").items()}
        except (OSError, ValueError) as exc:
            return [f"batch producer credentials unreadable ({exc}); nats-server keeps the ones it has"]
        if current == self._producers:
            return []
        self._producers = self._render_nats_config(self.nats.config_file)
        self.nats.process.send_signal(signal.SIGHUP)
        return [f"batch producers now: {', '.join(ns.name for ns in sorted(current)) or 'none'} (nats-server reloaded)"]

    def _launcher_env(self, service: Role, index: int = 0) -> dict[str, str]:
        """What the launcher tells one service: where NATS is, as whom to connect, the config."""
        assert self.nats is not None
        seed = str(self.credentials[service].seed_file)
        if service == "accounting":  # the accounting service's own settings use their own prefix
            return {
                "GATEHOUSE_ACCOUNTING_NATS_URL": self.nats.url,
                "GATEHOUSE_ACCOUNTING_NATS_NKEY_SEED_FILE": seed,
                "GATEHOUSE_ACCOUNTING_CONFIG": str(self.config),
                "GATEHOUSE_ACCOUNTING_SUBJECT_PREFIX": self.prefix,
                "GATEHOUSE_ACCOUNTING_CLICKHOUSE_DSN": os.environ.get(
                    "GATEHOUSE_ACCOUNTING_CLICKHOUSE_DSN", f"chdb://{(self.data_dir / 'clickhouse').resolve()}"
                ),
                "GATEHOUSE_ACCOUNTING_DATA_DIR": str(self.data_dir),  # the spool of its spans
                "GATEHOUSE_ACCOUNTING_METRICS_HOST": self.metrics_host,
            }
        env = {
            "GATEHOUSE_NATS_URL": self.nats.url,
            "GATEHOUSE_NATS_NKEY_SEED_FILE": seed,
            "GATEHOUSE_CONFIG": str(self.config),
            "GATEHOUSE_SUBJECT_PREFIX": self.prefix,
            "GATEHOUSE_DATA_DIR": str(self.data_dir),  # event spools: <data_dir>/spool/<service>/
            "GATEHOUSE_METRICS_HOST": self.metrics_host,
        }
        if service == "ingress":
            # each ingress replica on its own port (port, port+1, …): a load balancer goes in front
            env |= {"GATEHOUSE_INGRESS_HOST": self.host, "GATEHOUSE_INGRESS_PORT": str(self.port + index)}
            # the admin API's key: the operator's, else the one generated under the data dir
            admin = os.environ.get(self.admin_key_name) or self.admin_key_file.read_text().strip()
            env[self.admin_key_name] = admin
        return env

    def _write_state(self) -> None:
        assert self.nats is not None
        state = {
            "nats_url": self.nats.url,
            "ingress_url": self.ingress_url,
            "ingress_urls": ",".join(self.ingress_urls),
            "subject_prefix": self.prefix,
            "admin_seed_file": str(self.admin_seed_file),
            "admin_key_file": str(self.admin_key_file),
            "metrics_urls": ",".join(c.metrics_url for c in self.children if c.metrics_url),
            "pid": os.getpid(),
        }
        _write_private(self.data_dir / "state.json", json.dumps(state, indent=2))

    def wait_ready(self, timeout: float = 60.0) -> bool:
        """Every ingress replica answers /readyz (so guard and router replicas answer it too)."""
        deadline = time.monotonic() + timeout
        waiting = list(self.ingress_urls)
        while time.monotonic() < deadline:
            if self.dead():
                return False
            try:
                with urllib.request.urlopen(f"{waiting[0]}/readyz", timeout=1) as resp:  # noqa: S310
                    if resp.status == 200:
                        waiting.pop(0)
                        if not waiting:
                            return True
                        continue
            except OSError:
                pass
            time.sleep(0.2)
        return False

    def dead(self) -> list[Child]:
        return [c for c in self.children if c.process is not None and c.process.poll() is not None]

    def supervise_once(self) -> list[str]:
        """Restart nats-server and children that exited; returns what happened, for the console."""
        notes = self._supervise_nats() + self._reload_producers()
        for child in self.dead():
            code = child.process.returncode if child.process else None
            if time.monotonic() - child.last_start < 2.0 and child.restarts >= 5:
                continue  # crash loop: leave it down, the log says why
            child.restarts += 1
            notes.append(f"{child.name} exited with {code}; restarting (see {child.log_path})")
            child.start()
        return notes

    def _supervise_nats(self) -> list[str]:
        """A dead nats-server comes back on the same port, data dir and config; services reconnect to it."""
        if self.nats is None or self.nats.process.poll() is None:
            return []
        code = self.nats.process.returncode
        try:
            self.nats = restart_nats(self.nats)
        except (TimeoutError, OSError) as exc:
            return [f"nats-server exited with {code}; restarting it failed ({exc}); trying again"]
        self.nats_restarts += 1
        return [f"nats-server exited with {code}; restarted on {self.nats.url} (see {self.nats.log_file})"]

    def stop(self) -> None:
        for service in STOP_ORDER:
            group = [c for c in self.children if c.service == service and c.process and c.process.poll() is None]
            for child in group:
                assert child.process is not None
                child.process.send_signal(signal.SIGTERM)
            for child in group:
                assert child.process is not None
                try:
                    child.process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    child.process.kill()
                    child.process.wait()
        if self.nats is not None:
            self.nats.stop()
        state = self.data_dir / "state.json"
        if state.exists():
            state.unlink()


def _port_free(port: int, host: str = "127.0.0.1") -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def _next_free(port: int, host: str = "127.0.0.1", taken: frozenset[int] = frozenset()) -> int:
    """`port`, or the first free one after it, passing over the ports in `taken`."""
    while port in taken or not _port_free(port, host):
        port += 1
    return port


def metrics_port(taken: frozenset[int], start: int | None = None) -> int:
    """A free port for a service's /metrics that is none of the stack's own ports in `taken` (ingress listens on
    its port only once its process has started: until then the OS may hand the same free port out again)."""
    if start is not None:
        return _next_free(start, taken=taken)
    while (port := free_port()) in taken:
        pass
    return port


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (created that way: never readable by others, even briefly)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    path.chmod(0o600)


def read_state(data_dir: Path) -> dict[str, str]:
    path = data_dir / "state.json"
    if not path.exists():
        raise FileNotFoundError(f"no running stack found ({path} is missing); start one with `gatehouse up`")
    data: dict[str, str] = json.loads(path.read_text())
    return data
