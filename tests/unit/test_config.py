"""Config loading: valid files load, every mistake names file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.config import ConfigError, hash_key, load_config, parse_config

REPO = Path(__file__).resolve().parents[2]


def test_shipped_config_loads() -> None:
    config = load_config(REPO / "deploy" / "gatehouse.yaml")
    index = config.model_index()
    assert index["mock"].name == "mock-1"
    assert config.key_hashes({})[hash_key("sk-gatehouse-dev")].id == "dev"


def test_unknown_key_names_file_line_and_field() -> None:
    text = "server:\n  port: 8080\n  hots: 1.2.3.4\n"
    with pytest.raises(ConfigError) as exc:
        parse_config(text, "gh.yaml")
    assert "gh.yaml:3: server.hots: Extra inputs are not permitted" in str(exc.value)


def test_wrong_type_in_a_list_item_points_at_its_line() -> None:
    text = "models:\n  - name: a\n    deployments:\n      - provider: p\n        model: m\n        weight: many\n"
    with pytest.raises(ConfigError) as exc:
        parse_config(text, "gh.yaml")
    assert "gh.yaml:6: models.0.deployments.0.weight" in str(exc.value)


def test_deployment_must_name_a_known_provider() -> None:
    text = "providers:\n  mock: {kind: mock}\nmodels:\n  - name: a\n    deployments: [{provider: nope, model: m}]\n"
    with pytest.raises(ConfigError, match="unknown provider 'nope'"):
        parse_config(text)


def test_duplicate_model_names_and_aliases_rejected() -> None:
    text = (
        "providers:\n  mock: {kind: mock}\nmodels:\n"
        "  - {name: a, deployments: [{provider: mock, model: m}]}\n"
        "  - {name: b, aliases: [a], deployments: [{provider: mock, model: m}]}\n"
    )
    with pytest.raises(ConfigError, match="defined twice"):
        parse_config(text)


def test_key_needs_exactly_one_source() -> None:
    with pytest.raises(ConfigError, match="exactly one"):
        parse_config("keys:\n  - id: k\n")


def test_env_key_is_read_from_the_environment_only() -> None:
    config = parse_config("keys:\n  - id: k\n    env: MY_KEY\n")
    assert config.key_hashes({}) == {}
    assert config.key_hashes({"MY_KEY": "secret"})[hash_key("secret")].id == "k"


def test_not_yaml_and_missing_file() -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_config("a: [", "x.yaml")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config("/nonexistent/gatehouse.yaml")


def test_shipped_config_starts_on_a_fresh_machine_without_provider_keys() -> None:
    config = load_config(REPO / "deploy" / "gatehouse.yaml", environ={})
    assert config.providers["openai"].optional  # the one keyed provider may be absent in dev


PROVIDERS = """\
providers:
  mock: {kind: mock}
  openai:
    kind: openai
    api_key_env: OPENAI_API_KEY
  spare:
    kind: anthropic
    api_key_env: NOBODY_SETS_THIS
models:
  - name: a
    deployments:
      - {provider: mock, model: m}
      - {provider: openai, model: gpt}
"""


def test_a_missing_provider_key_fails_the_load_naming_file_line_and_variable() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(PROVIDERS, "gh.yaml", environ={"OPENAI_API_KEY": ""})
    message = str(exc.value)
    assert (
        "gh.yaml:5: providers.openai.api_key_env: provider 'openai': environment variable OPENAI_API_KEY is not set"
        in message
    )
    assert "NOBODY_SETS_THIS" not in message  # no model deploys to `spare`: its key is never needed
    assert parse_config(PROVIDERS, "gh.yaml", environ={"OPENAI_API_KEY": "k"}).providers["openai"]
    assert parse_config(PROVIDERS, "gh.yaml").providers["openai"]  # services that hold no keys do not check


def test_an_optional_provider_may_lack_its_key_and_a_deployment_override_is_checked_at_its_line() -> None:
    optional = PROVIDERS.replace("api_key_env: OPENAI_API_KEY", "api_key_env: OPENAI_API_KEY\n    optional: true")
    assert parse_config(optional, environ={}).providers["openai"].optional
    override = PROVIDERS.replace("{provider: openai, model: gpt}", "{provider: openai, model: gpt, api_key_env: K2}")
    with pytest.raises(ConfigError, match=r"gh.yaml:13: models.0.deployments.1.api_key_env: .*variable K2 is not set"):
        parse_config(override, "gh.yaml", environ={"OPENAI_API_KEY": "k"})


def test_bedrock_is_a_provider_kind_and_an_unknown_kind_is_refused_at_its_line() -> None:
    text = "providers:\n  mock: {kind: mock}\n  aws:\n    kind: bedrock\n    region: us-east-1\n"
    assert parse_config(text, "gh.yaml").providers["aws"].kind == "bedrock"
    with pytest.raises(ConfigError, match=r"gh.yaml:4: providers.aws.kind: Input should be"):
        parse_config(text.replace("bedrock", "vertex-someday"), "gh.yaml")


def test_response_limits_are_validated() -> None:
    assert parse_config("providers:\n  p: {kind: openai}\n").providers["p"].max_response_bytes == 32 * 1024 * 1024
    with pytest.raises(ConfigError, match=r"gh.yaml:2: providers.p.max_response_bytes"):
        parse_config("providers:\n  p: {kind: openai, max_response_bytes: 0}\n", "gh.yaml")
    with pytest.raises(ConfigError, match="max_sse_event_bytes cannot exceed max_response_bytes"):
        parse_config("providers:\n  p: {kind: openai, max_response_bytes: 10, max_sse_event_bytes: 11}\n")


def test_gatehouse_up_refuses_a_missing_key_before_starting_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from gatehouse.cli import app

    config = tmp_path / "gh.yaml"
    config.write_text(PROVIDERS)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    result = CliRunner().invoke(app, ["up", "--config", str(config), "--data-dir", str(tmp_path / "data")])
    assert result.exit_code == 2
    assert "environment variable OPENAI_API_KEY is not set" in result.output.replace("\n", "")
    assert not (tmp_path / "data").exists()  # nothing was started


def test_which_client_protocols_a_model_takes_unchanged() -> None:
    config = parse_config(
        """
providers:
  claude: {kind: anthropic}
  oai: {kind: openai}
  vllm: {kind: openai, api_base: "http://vllm:8000/v1", passthrough: false}
  az: {kind: azure, api_base: "https://x.openai.azure.com"}
models:
  - {name: a, deployments: [{provider: claude, model: c}, {provider: az, model: g}]}
  - {name: b, deployments: [{provider: vllm, model: l}, {provider: oai, model: g}]}
  - {name: c, deployments: [{provider: vllm, model: l}, {provider: az, model: g}]}
"""
    )
    got = {m.name: config.native_protocols(m) for m in config.models}
    assert got == {"a": {"anthropic-messages"}, "b": {"openai-responses"}, "c": frozenset()}


def test_a_request_timeout_past_the_counters_duplicate_window_is_refused() -> None:
    # a lease's give-back and accounting's release of it share increment ids; they may come a request timeout plus
    # the grace apart, and the counters deduplicate ids for 900 s
    with pytest.raises(ConfigError, match=r"request_timeout_s \(870\).*at least the budget counters' duplicate window"):
        parse_config("server:\n  request_timeout_s: 870\n", "gh.yaml")
    with pytest.raises(ConfigError, match="reservation_grace_s"):
        parse_config("governance:\n  reservation_grace_s: 400\nserver:\n  request_timeout_s: 500\n", "gh.yaml")
    assert parse_config("server:\n  request_timeout_s: 800\n").server.request_timeout_s == 800
    # without leases nothing is given back that way: long requests (reasoning models) may take longer
    no_leases = parse_config("governance:\n  leases: false\nserver:\n  request_timeout_s: 1800\n", "gh.yaml")
    assert no_leases.server.request_timeout_s == 1800
