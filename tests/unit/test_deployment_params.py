"""A deployment's default params merged under the typed request: the client wins, params fill what it left
unset, unknown params travel in `extra`, and a param of the wrong type is a clear error (at config load,
and at request time for a target built any other way)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from services.router.providers.anthropic import AnthropicTranslator
from services.router.providers.azure import AzureTranslator
from services.router.providers.base import Target, Translator
from services.router.providers.cohere import CohereTranslator
from services.router.providers.gemini import GeminiTranslator
from services.router.providers.mistral import MistralTranslator
from services.router.providers.openai import OpenAITranslator
from shared.config import ConfigError, parse_config
from shared.errors import GatewayError
from shared.schemas.openai import ResponseFormat
from shared.schemas.params import check_params, with_defaults
from tests.unit.providers.roundtrip import canonical, canonical_embeddings

USER = [{"role": "user", "content": "hi"}]


def test_client_values_win_and_params_fill_unset_fields_typed() -> None:
    req = canonical({"messages": USER, "temperature": 0.8})
    out = with_defaults(req, {"temperature": 0.1, "top_p": 0.5, "response_format": {"type": "json_object"}})
    assert out.temperature == 0.8
    assert out.top_p == 0.5
    # converted to the field's type, as if the client had sent it
    assert out.response_format == ResponseFormat(type="json_object")


def test_unknown_params_go_to_extra_under_the_clients_extras() -> None:
    req = canonical({"messages": USER, "top_k": 3})
    out = with_defaults(req, {"top_k": 9, "safe_prompt": True})
    assert out.extra == {"top_k": 3, "safe_prompt": True}


def test_the_clients_request_is_left_as_it_was() -> None:
    # the next deployment of a failover must start from the client's request, not the previous one's params
    req = canonical({"messages": USER})
    out = with_defaults(req, {"temperature": 0.1, "thinking": {"type": "enabled"}})
    assert out is not req and req.temperature is None and req.extra == {}
    assert with_defaults(req, {}) is req


def test_a_limit_under_either_name_keeps_the_default_under_the_other_out() -> None:
    params = {"max_completion_tokens": 9000}
    out = with_defaults(canonical({"messages": USER, "max_tokens": 50}), params)
    assert (out.max_tokens, out.max_completion_tokens) == (50, None)
    assert with_defaults(canonical({"messages": USER}), params).max_completion_tokens == 9000
    out = with_defaults(canonical({"messages": USER, "max_completion_tokens": 70}), {"max_tokens": 10})
    assert (out.max_tokens, out.max_completion_tokens) == (None, 70)


def test_embeddings_params() -> None:
    req = canonical_embeddings({"input": "x", "dimensions": 256})
    out = with_defaults(req, {"dimensions": 1024, "encoding_format": "float", "input_type": "search_query"})
    assert (out.dimensions, out.encoding_format, out.extra) == (256, "float", {"input_type": "search_query"})


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"temperature": "hot"}, "`$.temperature`"),
        ({"max_tokens": 1.5}, "`$.max_tokens`"),
        ({"stop": [1]}, "`$.stop"),
        ({"response_format": {"type": 1}}, "`$.response_format.type`"),
        ({"dimensions": "big"}, "`$.dimensions`"),
        ({"model": "other"}, "'model' cannot be a default param"),
        ({"stream": True}, "'stream' cannot be a default param"),
    ],
)
def test_a_param_that_does_not_fit_is_a_clear_error(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("$", r"\$").replace("[", r"\[")):
        check_params(params)


def test_a_bad_param_in_the_config_names_file_line_and_param() -> None:
    text = (
        "providers:\n  p: {kind: openai}\nmodels:\n  - name: a\n    deployments:\n"
        "      - provider: p\n        model: m\n        params:\n          temperature: warm\n"
    )
    with pytest.raises(ConfigError) as exc:
        parse_config(text, "gh.yaml")
    assert "gh.yaml:9: models.0.deployments.0.params: " in str(exc.value)  # where the params begin
    assert "`$.temperature`" in str(exc.value)
    ok = parse_config(text.replace("warm", "0.2") + "          top_k: 5\n")
    assert ok.models[0].deployments[0].params == {"temperature": 0.2, "top_k": 5}


TRANSLATORS: list[tuple[str, Translator]] = [
    ("openai", OpenAITranslator()),
    ("azure", AzureTranslator()),
    ("anthropic", AnthropicTranslator()),
    ("gemini", GeminiTranslator()),
    ("mistral", MistralTranslator()),
    ("cohere", CohereTranslator()),
]


@pytest.mark.parametrize(("kind", "translator"), TRANSLATORS)
def test_a_bad_param_at_request_time_is_the_deployments_error(kind: str, translator: Translator) -> None:
    target = Target("p", kind, "m", "http://h", params={"temperature": "warm"})
    with pytest.raises(GatewayError, match=r"Deployment p/m: .*\$\.temperature") as exc:
        translator.chat_request(canonical({"messages": USER}), target, stream=False)
    assert exc.value.status == 500


def _limit(body: dict[str, Any]) -> object:
    gen = body.get("generationConfig") or {}
    return {k: v for k, v in {**body, **gen}.items() if k in {"max_tokens", "max_completion_tokens", "maxOutputTokens"}}


@pytest.mark.parametrize(("kind", "translator"), TRANSLATORS)
def test_regression_a_default_limit_no_longer_beats_the_clients_other_name(kind: str, translator: Translator) -> None:
    # the dict merge put both names in the body: Gemini, Mistral and Cohere then read the deployment's
    # max_completion_tokens ahead of the client's max_tokens, and OpenAI and Azure were sent both
    target = Target("p", kind, "m", "http://h", params={"max_completion_tokens": 9000, "temperature": 0.2})
    up = translator.chat_request(canonical({"messages": USER, "max_tokens": 50}), target, stream=False)
    body = msgspec.json.decode(up.body)
    name = {"gemini": "maxOutputTokens", "anthropic": "max_tokens"}.get(kind, "max_tokens")
    assert _limit(body) == {name: 50}
