"""Request validation gives OpenAI-style 400s that name the offending parameter."""

from __future__ import annotations

import pytest

from services.ingress.auth import KeyRing
from services.ingress.validate import chat_fields, embeddings_model
from shared.config import parse_config
from shared.errors import AuthenticationError, InvalidRequestError


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        (b"{", None, "valid JSON"),
        (b"[]", None, "Expected `object`"),
        (b"{}", "model", "Missing required parameter: 'model'"),
        (b'{"model":"m"}', "messages", "Missing required parameter: 'messages'"),
        (b'{"model":"m","messages":[]}', "messages", "empty array"),
        (b'{"model":"m","messages":[{"role":"robot"}]}', "messages[0].role", "robot"),
        (b'{"model":"m","messages":[{"content":"x"}]}', "messages[0].role", "Missing required"),
        (b'{"model":5,"messages":[{"role":"user"}]}', "model", "Expected `str`"),
        (
            b'{"model":"m","messages":[{"role":"user"}],"stream_options":{"include_usage":true}}',
            "stream_options",
            "only allowed",
        ),
    ],
)
def test_bad_chat_bodies(body: bytes, param: str | None, fragment: str) -> None:
    with pytest.raises(InvalidRequestError) as exc:
        chat_fields(body)
    info = exc.value.info()
    assert info.status == 400 and info.param == param and fragment in info.message


def test_good_chat_body_extracts_stream_flags() -> None:
    f = chat_fields(
        b'{"model":"m","messages":[{"role":"user","content":"x"}],"stream":true,'
        b'"stream_options":{"include_usage":true},"seed":3}'
    )
    assert (f.model, f.stream, f.include_usage) == ("m", True, True)
    assert chat_fields(b'{"model":"m","messages":[{"role":"user"}]}').stream is False


def test_embeddings_body() -> None:
    assert embeddings_model(b'{"model":"e","input":["a","b"]}') == "e"
    with pytest.raises(InvalidRequestError):
        embeddings_model(b'{"model":"e","input":[]}')
    with pytest.raises(InvalidRequestError):
        embeddings_model(b'{"input":"x"}')


def test_keyring_accepts_bearer_and_x_api_key_and_masks_bad_keys() -> None:
    config = parse_config("keys:\n  - id: k\n    env: K\n    team: t\n")
    ring = KeyRing(config.key_hashes({"K": "sk-test-1234567890"}))
    caller, _ = ring.authenticate("Bearer sk-test-1234567890")
    assert caller.key_id == "k" and caller.team == "t"
    assert ring.authenticate(None, "sk-test-1234567890")[0].key_id == "k"
    with pytest.raises(AuthenticationError) as exc:
        ring.authenticate("Bearer sk-wrong-0000000000")
    assert "sk-wrong-0000000000" not in exc.value.message
    with pytest.raises(AuthenticationError):
        ring.authenticate(None)
