"""Request validation gives OpenAI-style 400s that name the offending parameter."""

from __future__ import annotations

import msgspec
import pytest

from shared.auth import Authenticator
from shared.config import parse_config
from shared.directory import Directory
from shared.errors import AuthenticationError, InvalidRequestError
from shared.schemas.openai import to_json
from shared.validate import chat_request, embeddings_request, include_usage


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
        # they size a budget reservation: zero or less would reserve nothing, or hand spend back
        (b'{"model":"m","messages":[{"role":"user"}],"max_tokens":-5}', "max_tokens", "Expected a value >= 1"),
        (b'{"model":"m","messages":[{"role":"user"}],"max_tokens":0}', "max_tokens", "below minimum value"),
        (b'{"model":"m","messages":[{"role":"user"}],"max_completion_tokens":0}', "max_completion_tokens", ">= 1"),
        (b'{"model":"m","messages":[{"role":"user"}],"n":0}', "n", "below minimum value"),
        (b'{"model":"m","messages":[{"role":"user"}],"n":129}', "n", "Expected a value <= 128"),
    ],
)
def test_bad_chat_bodies(body: bytes, param: str | None, fragment: str) -> None:
    with pytest.raises(InvalidRequestError) as exc:
        chat_request(body)
    info = exc.value.info()
    assert info.status == 400 and info.param == param and fragment in info.message


def test_good_chat_body_extracts_stream_flags() -> None:
    req = chat_request(
        b'{"model":"m","messages":[{"role":"user","content":"x"}],"stream":true,'
        b'"stream_options":{"include_usage":true},"seed":3}'
    )
    assert (req.model, req.stream, include_usage(req), req.seed) == ("m", True, True, 3)
    assert not chat_request(b'{"model":"m","messages":[{"role":"user"}]}').stream


def test_documented_and_unknown_fields_survive_the_round_trip() -> None:
    """seed, logit_bias, metadata and reasoning_effort are typed; vendor fields ride in `extra`; the body
    re-encoded for an OpenAI-compatible server carries all of them unchanged."""
    sent = {
        "model": "m",
        "messages": [{"role": "user", "content": "x", "name": "ann"}],
        "seed": 7,
        "logit_bias": {"50256": -100, "11": 2.5},
        "metadata": {"team": "ml"},
        "reasoning_effort": "low",
        "temperature": 1,
        "top_k": 40,
        "guided_json": {"type": "object"},
        "chat_template_kwargs": {"enable_thinking": False},
    }
    req = chat_request(msgspec.json.encode(sent))
    assert req.seed == 7 and req.logit_bias == {"50256": -100, "11": 2.5}
    assert req.metadata == {"team": "ml"} and req.reasoning_effort == "low"
    assert req.extra == {
        "top_k": 40,
        "guided_json": {"type": "object"},
        "chat_template_kwargs": {"enable_thinking": False},
    }
    assert msgspec.json.decode(to_json(req)) == sent
    assert b'"temperature":1,' in to_json(req)  # an integer stays an integer


def test_embeddings_body() -> None:
    assert embeddings_request(b'{"model":"e","input":["a","b"]}').model == "e"
    assert embeddings_request(b'{"model":"e","input":[[1,2],[3]],"user_tag":"x"}').extra == {"user_tag": "x"}
    with pytest.raises(InvalidRequestError):
        embeddings_request(b'{"model":"e","input":[]}')
    with pytest.raises(InvalidRequestError):
        embeddings_request(b'{"input":"x"}')


def test_keyring_accepts_bearer_and_x_api_key_and_masks_bad_keys() -> None:
    config = parse_config("keys:\n  - id: k\n    env: K\n    team: t\n")
    ring = Authenticator(Directory.with_static(config.key_hashes({"K": "sk-test-1234567890"})))
    caller = ring.authenticate("Bearer sk-test-1234567890").caller
    assert caller.key_id == "k" and caller.team == "t"
    assert ring.authenticate(None, "sk-test-1234567890").caller.key_id == "k"
    with pytest.raises(AuthenticationError) as exc:
        ring.authenticate("Bearer sk-wrong-0000000000")
    assert "sk-wrong-0000000000" not in exc.value.message
    with pytest.raises(AuthenticationError):
        ring.authenticate(None)


def test_output_limits_and_choices_in_range_pass() -> None:
    req = chat_request(b'{"model":"m","messages":[{"role":"user"}],"max_tokens":1,"max_completion_tokens":1,"n":128}')
    assert (req.max_tokens, req.max_completion_tokens, req.n) == (1, 1, 128)
