"""`gatehouse up` as a user runs it: starts everything, serves, answers `gatehouse sql`, stops on Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from gatehouse.natsserver import free_port

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True, check=False)
    return [int(p) for p in out.stdout.split()]


def test_up_serves_records_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    port = free_port()
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
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while not (data / "state.json").exists() or not _ready(port):
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "stack did not become ready"
            time.sleep(0.3)
        children = _children(proc.pid)
        assert len(children) >= 5  # nats-server and four services
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
    for pid in children:
        assert not os.path.exists(f"/proc/{pid}") or _zombie(pid), f"child {pid} still running"
    assert not (data / "state.json").exists()


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
