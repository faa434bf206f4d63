"""`gatehouse up` as a user runs it: starts everything, serves, answers `gatehouse sql`, stops on Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gatehouse.natsserver import free_port

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
PROVIDER_KEY = "sk-launcher-provider-key"


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True, check=False)
    return [int(p) for p in out.stdout.split()]


def test_up_serves_records_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    port, metrics_port = free_port(), free_port()
    data = tmp_path / "data"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gatehouse.cli",
            "up",
            "--data-dir",
            str(data),
            "--port",
            str(port),
            "--nats-port",
            "0",
            "--prefix",
            "launch",
            "--metrics-port",
            str(metrics_port),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "OPENAI_API_KEY": PROVIDER_KEY, "UNRELATED_SECRET": "s3cret"},
    )
    try:
        deadline = time.monotonic() + 90
        while not (data / "state.json").exists() or not _ready(port):
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "stack did not become ready"
            time.sleep(0.3)
        children = _children(proc.pid)
        assert len(children) >= 6  # nats-server and five services
        _assert_private_and_least_privileged(data, children)
        r = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            headers={"Authorization": "Bearer sk-gatehouse-dev"},
            json={"model": "mock", "messages": [{"role": "user", "content": "launcher test"}]},
            timeout=20,
        )
        assert r.status_code == 200, r.text
        rid = r.headers["x-request-id"]
        rows: list[dict[str, object]] = []
        for _ in range(60):
            out = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "gatehouse.cli",
                    "sql",
                    "--data-dir",
                    str(data),
                    "--format",
                    "json",
                    f"SELECT request_id, requested_model, status FROM requests WHERE request_id = '{rid}'",
                ],
                cwd=REPO,
                capture_output=True,
                text=True,
                check=False,
                timeout=60,
            )
            assert out.returncode == 0, out.stdout + out.stderr
            rows = json.loads(out.stdout)
            if rows:
                break
            time.sleep(0.5)
        assert rows == [{"request_id": rid, "requested_model": "mock", "status": 200}]
        # every process serves Prometheus metrics where `gatehouse up` says (ingress on its own port)
        urls = json.loads((data / "state.json").read_text())["metrics_urls"].split(",")
        assert f"http://127.0.0.1:{port}/metrics" in urls and f"http://127.0.0.1:{metrics_port}/metrics" in urls
        assert len(urls) == 5  # accounting, router, guard, batch and ingress (mcp only with mcp.servers)
        for url in urls:
            families = {f.name for f in text_string_to_metric_families(httpx.get(url, timeout=10).text)}
            assert "gatehouse_nats_reconnects" in families, url
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            output, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
            pytest.fail(f"gatehouse up did not stop on SIGINT:\n{output}")
    assert proc.returncode == 0, output
    assert "stopped" in output
    assert f"metrics (Prometheus): accounting-0 http://127.0.0.1:{metrics_port}/metrics" in output
    for pid in children:
        assert not os.path.exists(f"/proc/{pid}") or _zombie(pid), f"child {pid} still running"
    assert not (data / "state.json").exists()


def _assert_private_and_least_privileged(data: Path, children: list[int]) -> None:
    """Data, logs and credentials are the owner's only; nats-server holds public keys only; each child has
    its own credential, and the provider key reaches the router alone."""
    for path in (data, data / "logs", data / "creds", data / "nats"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    seeds = sorted((data / "creds").glob("*.nk"))
    roles = ["accounting", "admin", "batch", "batch_producer", "guard", "ingress", "mcp", "router"]
    assert [p.stem for p in seeds] == roles  # batch_producer's is for pipelines; no service is given it
    for path in [*seeds, data / "nats.conf", data / "state.json"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    conf = (data / "nats.conf").read_text()
    assert "authorization" in conf and "max_payload" in conf
    assert not any(seed.read_text().strip() in conf for seed in seeds)
    state = json.loads((data / "state.json").read_text())
    assert state["admin_seed_file"] == str(data / "creds" / "admin.nk")
    services = {}
    for pid in children:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        env = dict(item.split("=", 1) for item in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in item)
        assert "UNRELATED_SECRET" not in env
        if any(b"services." + name in cmdline for name in (b"router", b"guard", b"ingress", b"batch")):
            name = next(c.decode() for c in cmdline if c.startswith(b"services."))[len("services.") :]
            services[name] = env
            assert env["GATEHOUSE_NATS_NKEY_SEED_FILE"] == str(data / "creds" / f"{name}.nk")
        elif b"services.accounting" in cmdline:
            services["accounting"] = env
            assert env["GATEHOUSE_ACCOUNTING_NATS_NKEY_SEED_FILE"] == str(data / "creds" / "accounting.nk")
        else:
            assert b"nats-server" in cmdline[0], cmdline
            assert not any(k.startswith("GATEHOUSE_") for k in env)
    assert sorted(services) == ["accounting", "batch", "guard", "ingress", "router"]
    for name, env in services.items():
        assert (env.get("OPENAI_API_KEY") == PROVIDER_KEY) == (name == "router"), name


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True
