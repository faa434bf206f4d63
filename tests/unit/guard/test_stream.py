"""Streaming output scanning: hold-back catches values split across chunks; nothing unsafe is released."""

from __future__ import annotations

import random

import pytest

from services.guard.policy import Policy, build_policy
from services.guard.redaction import Vault
from services.guard.stream import StreamScanner
from shared.guard_config import PiiConfig, PolicyConfig, SecretsConfig

TOKEN = "ghp_aB3dE5fG7hI9jK1lM3nO5pQ7rS9tU1vW3xY5"
FILLER = "The quick brown fox jumps over the lazy dog. " * 12


@pytest.fixture(scope="module")
def redacting() -> Policy:
    return build_policy("out", PolicyConfig(secrets=SecretsConfig(action="redact"), pii=PiiConfig(action="redact")))


@pytest.fixture(scope="module")
def blocking() -> Policy:
    return build_policy("out", PolicyConfig(secrets=SecretsConfig(action="block")))


def run(scanner: StreamScanner, text: str, sizes: list[int]) -> tuple[str, list[str]]:
    out: list[str] = []
    actions: list[str] = []
    pos = i = 0
    while pos < len(text):
        n = sizes[i % len(sizes)]
        step = scanner.feed(text[pos : pos + n])
        out.append(step.text)
        actions.extend(d.action for d in step.decisions)
        pos, i = pos + n, i + 1
    step = scanner.flush()
    out.append(step.text)
    actions.extend(d.action for d in step.decisions)
    return "".join(out), actions


@pytest.mark.parametrize("sizes", [[1], [3], [7, 2, 11], [64], [500]])
def test_secret_split_across_chunks_is_redacted(redacting: Policy, sizes: list[int]) -> None:
    text = FILLER + f"here is the token {TOKEN} and mail bob@example.com. " + FILLER
    released, actions = run(StreamScanner(redacting, holdback=64), text, sizes)
    assert TOKEN not in released and "bob@example.com" not in released
    assert "<REDACTED_SECRET_1>" in released and "<REDACTED_EMAIL_1>" in released
    assert released.replace("<REDACTED_SECRET_1>", TOKEN).replace("<REDACTED_EMAIL_1>", "bob@example.com") == text
    assert sorted(actions) == ["redact", "redact"]  # each finding reported once


def test_random_chunkings_match_whole_text_redaction(redacting: Policy) -> None:
    rng = random.Random(5)
    text = FILLER + f"a {TOKEN} b +44 20 7946 0958 c 4111 1111 1111 1111 d " + FILLER + "end bob@example.com"
    expected = redacting.scan(text).text
    for _ in range(30):
        sizes = [rng.randint(1, 40) for _ in range(10)]
        released, _ = run(StreamScanner(redacting, holdback=64), text, sizes)
        # whole-text redaction uses <SECRET_1>; the stream uses <REDACTED_SECRET_1>
        assert released.replace("<REDACTED_", "<") == expected


def test_block_stops_the_stream_before_the_secret_is_released(blocking: Policy) -> None:
    scanner = StreamScanner(blocking, holdback=64)
    text = FILLER + f"token {TOKEN} " + FILLER
    released = []
    blocked_at = None
    for i in range(0, len(text), 5):
        step = scanner.feed(text[i : i + 5])
        released.append(step.text)
        if step.blocked:
            blocked_at = i
            assert [d.finding.rule for d in step.decisions] == ["github-token"]
            break
    assert blocked_at is not None
    assert "ghp_" not in "".join(released)
    assert scanner.feed("more").blocked and scanner.flush().text == ""


def test_hold_back_releases_clean_text_promptly(redacting: Policy) -> None:
    scanner = StreamScanner(redacting, holdback=64)
    step = scanner.feed(FILLER)
    assert 0 < len(step.text) <= len(FILLER) - 64
    assert step.text.endswith(" ")  # never cut inside a word
    assert scanner.flush().text == FILLER[len(step.text) :]


def test_long_token_is_held_until_it_ends(redacting: Policy) -> None:
    scanner = StreamScanner(redacting, holdback=64, max_token=4096)
    first = scanner.feed("x " + "A" * 1000)
    assert first.text == "x "
    assert scanner.feed("B" * 100).text == ""
    assert scanner.flush().text == "A" * 1000 + "B" * 100


def test_pem_block_streaming_is_redacted_whole(redacting: Policy) -> None:
    body = "\n".join("MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7" + str(i) * 12 for i in range(8))
    pem = f"-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----"
    text = FILLER + pem + "\n" + FILLER
    released, actions = run(StreamScanner(redacting, holdback=64), text, [9])
    assert "MIIEvQ" not in released and "BEGIN PRIVATE KEY" not in released
    assert actions == ["redact"]


def test_request_placeholders_are_restored_even_when_split(redacting: Policy) -> None:
    vault = Vault()
    vault.placeholder("EMAIL", "bob@example.com")
    text = FILLER + "I wrote to <EMAIL_1> as asked. " + FILLER
    for sizes in ([1], [4], [13]):
        released, actions = run(StreamScanner(redacting, restore=vault, holdback=64), text, sizes)
        assert released == text.replace("<EMAIL_1>", "bob@example.com")
        assert actions == []  # the restored value is the client's own: not an output finding


def test_flag_findings_are_reported_once_and_text_released_unchanged() -> None:
    policy = build_policy("out", PolicyConfig(pii=PiiConfig(action="flag")))
    text = FILLER + "mail bob@example.com " + FILLER
    released, actions = run(StreamScanner(policy, holdback=64), text, [6])
    assert released == text and actions == ["flag"]


def test_short_stream_is_released_at_flush(redacting: Policy) -> None:
    scanner = StreamScanner(redacting)
    assert scanner.feed("hi ").text == ""
    step = scanner.flush()
    assert (step.text, step.action) == ("hi ", "allow")
    assert scanner.flush().text == ""
