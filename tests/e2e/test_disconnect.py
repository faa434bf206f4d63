"""A client that leaves mid-stream: the upstream call is closed at once, and the record says what it cost."""

from __future__ import annotations

import time

import httpx

from tests.e2e.conftest import API_KEY, RunningStack


def test_client_leaving_mid_stream_closes_upstream_and_records_499(running_stack: RunningStack) -> None:
    emulator = running_stack.emulators["openai"]
    before = len(emulator.state.abandoned)
    body = {"model": "emu-drip", "messages": [{"role": "user", "content": "count slowly"}], "stream": True}
    with httpx.Client(base_url=running_stack.base_url, timeout=30) as client:
        with client.stream(
            "POST", "/chat/completions", json=body, headers={"authorization": f"Bearer {API_KEY}"}
        ) as resp:
            assert resp.status_code == 200
            request_id = resp.headers["x-request-id"]
            events = 0
            for line in resp.iter_lines():
                events += line.startswith("data: ")
                if events >= 4:
                    break
            left = time.monotonic()
    deadline = left + 5
    while len(emulator.state.abandoned) == before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(emulator.state.abandoned) > before, "the upstream stream was never closed"
    closed_after = emulator.state.abandoned[-1][1] - left
    assert closed_after < 1.0, f"upstream closed {closed_after:.2f}s after the client left"

    rows = running_stack.wait_rows(
        "SELECT status, error_code, input_tokens, output_tokens, stream FROM requests "
        f"WHERE request_id = '{request_id}'",
        1,
    ).rows
    assert len(rows) == 1
    status, code, input_tokens, output_tokens, stream = rows[0]
    assert (status, code, stream) == (499, "client_closed_request", True)
    # the provider reports usage only at the end: what was relayed so far is estimated, not zero
    assert input_tokens > 0 and output_tokens >= 3
