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
