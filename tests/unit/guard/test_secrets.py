"""Secrets scanner: one positive per rule, spans cover the value only, and the hard negatives stay quiet."""

from __future__ import annotations

import base64
import json
import random
import string
from pathlib import Path

import pytest

from services.guard.scanners.base import Finding
from services.guard.scanners.secrets import SecretRule, SecretsScanner, load_rules

rng = random.Random(42)
A = string.ascii_letters + string.digits
U = A + "_-"
H = "0123456789abcdef"
B32 = string.ascii_uppercase + "234567"


def r(alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def _jwt() -> str:
    head = base64.urlsafe_b64encode(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()).decode().rstrip("=")
    body = base64.urlsafe_b64encode(json.dumps({"sub": "42", "iat": 1700000000}).encode()).decode().rstrip("=")
    return f"{head}.{body}.{r(U, 43)}"


PEM = (
    "-----BEGIN RSA PRIVATE KEY-----\n"
    + "\n".join(r(A + "+/", 64) for _ in range(5))
    + "\n-----END RSA PRIVATE KEY-----"
)

# rule id → (text, the secret value inside it)
SAMPLES: dict[str, tuple[str, str]] = {}


def sample(rule: str, template: str, value: str) -> None:
    SAMPLES[rule] = (template.format(v=value), value)


sample("openai-api-key", "key: {v}", "sk-proj-" + r(U, 74) + "T3BlbkFJ" + r(U, 74))
sample("openai-project-key", "OPENAI_KEY {v}", "sk-proj-" + r(A, 60))
sample("anthropic-api-key", "x-api-key: {v}", "sk-ant-api03-" + r(U, 93) + "AA")
sample("google-api-key", "?key={v}&q=1", "AIza" + r(U, 35))
sample("google-oauth-client-secret", "secret {v}", "GOCSPX-" + r(U, 28))
sample("google-oauth-access-token", "Bearer-ish {v} end", "ya29." + r(U, 100))
sample("groq-api-key", "{v}", "gsk_" + r(A, 52))
sample("xai-api-key", "{v}", "xai-" + r(A, 80))
sample("perplexity-api-key", "{v}", "pplx-" + r(A, 48))
sample("replicate-api-token", "{v}", "r8_" + r(A, 37))
sample("huggingface-token", "login {v}", "hf_" + r(string.ascii_letters, 34))
sample("aws-access-key-id", "id={v}", "AKIA" + r(B32, 16))
sample("aws-secret-access-key", "aws_secret_access_key = {v}\n", r(A + "/+", 40))
sample(
    "azure-storage-account-key",
    "AccountName=x;AccountKey={v};EndpointSuffix=core",
    base64.b64encode(rng.randbytes(64)).decode(),
)
sample("azure-sas-signature", "https://a.blob.core.windows.net/c/f?sv=2022-11-02&sp=r&sig={v}", r(A, 40) + "%3D")
sample("azure-ad-client-secret", "secret: {v}", "abc8Q~" + r(A, 34))
sample("digitalocean-token", "{v}", "dop_v1_" + r(H, 64))
sample("databricks-token", "{v}", "dapi" + r(H, 32))
sample("heroku-api-key", "HEROKU_API_KEY={v}", "3f2c1a9e-8b7d-4c6e-a5f4-2e1d0c9b8a7f")
sample("hashicorp-vault-token", "VAULT_TOKEN={v}", "hvs." + r(U, 95))
sample("github-token", "{v}", "ghp_" + r(A, 36))
sample("github-fine-grained-pat", "{v}", "github_pat_" + r(A, 22) + "_" + r(A, 59))
sample("gitlab-token", "{v}", "glpat-" + r(U, 20))
sample("gitlab-pipeline-trigger-token", "{v}", "glptt-" + r(H, 40))
sample("gitlab-runner-registration-token", "{v}", "GR1348941" + r(U, 20))
sample("npm-token", "//registry.npmjs.org/:_authToken={v}", "npm_" + r(A, 36))
sample("pypi-token", "password = {v}", "pypi-AgEIcHlwaS5vcmc" + r(U, 80))
sample("atlassian-api-token", "{v}", "ATATT3" + r(U, 186))
sample("postman-api-key", "{v}", f"PMAK-{r(H, 24)}-{r(H, 34)}")
sample("linear-api-key", "{v}", "lin_api_" + r(A, 40))
sample("grafana-token", "{v}", "glsa_" + r(A, 32) + "_" + r(H, 8))
sample("doppler-token", "DOPPLER={v}", "dp.st.prd." + r(A, 40))
sample("slack-token", "{v}", f"xoxb-{r(string.digits, 12)}-{r(string.digits, 13)}-{r(A, 24)}")
sample("slack-app-token", "{v}", f"xapp-1-A{r(B32, 10)}-{r(string.digits, 13)}-{r(H, 64)}")
sample("slack-webhook-url", "https://{v}", f"hooks.slack.com/services/T{r(B32, 9)}/B{r(B32, 9)}/{r(A, 24)}")
sample("discord-bot-token", "{v}", "M" + r(A, 23) + "." + r(U, 6) + "." + r(U, 27))
sample("discord-webhook-url", "https://{v}", f"discord.com/api/webhooks/{r(string.digits, 18)}/{r(U, 68)}")
sample("telegram-bot-token", "https://api.telegram.org/bot{v}/getMe", f"{r(string.digits, 10)}:AA{r(U, 33)}")
sample("stripe-secret-key", "{v}", "sk_live_" + r(A, 24))
sample("stripe-test-key", "{v}", "sk_test_" + r(A, 24))
sample("stripe-webhook-secret", "{v}", "whsec_" + r(A, 32))
sample("square-token", "{v}", "sq0csp-" + r(U, 43))
sample("shopify-token", "{v}", "shpat_" + r(H, 32))
sample("twilio-api-key", "{v}", "SK" + r(H, 32))
sample("twilio-auth-token", "TWILIO_AUTH_TOKEN={v}", r(H, 32))
sample("sendgrid-api-key", "{v}", "SG." + r(U, 22) + "." + r(U, 43))
sample("mailgun-api-key", "MAILGUN_API_KEY={v}", "key-" + r(H, 32))
sample("mailchimp-api-key", "{v}", r(H, 32) + "-us14")
sample("private-key", "here:\n{v}\n", PEM)
sample(
    "putty-private-key",
    "{v}",
    "PuTTY-User-Key-File-2: ssh-rsa\nEncryption: none\nComment: k\nPublic-Lines: 6\nPrivate-Lines: 14",
)
sample("age-secret-key", "{v}", "AGE-SECRET-KEY-1" + r("QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L", 58))
sample("jwt", "Authorization-ish {v}", _jwt())
sample("url-credentials", "postgres://app:{v}@db:5432/x", "Xk9" + r(A, 9))
sample("connection-string-password", "Server=db;Database=x;User Id=sa;Password={v};", "Q7!" + r(A, 8))
sample("password-assignment", 'cfg = {{"password": "{v}"}}', "Tr0ub4dor" + r(A, 3))
sample("unquoted-password", "db:\n  password: {v}\n", "S3cr3t" + r(A, 6))
sample("env-password-inline", "PGPASSWORD={v} psql -h db", "Zx9!" + r(A, 8))
sample("mysql-password-flag", "mysql -u root -p{v} -h db", "S3cr3t" + r(A, 6))
sample("password-in-prose", "my wifi password is {v} by the way", "BlueFalcon#42")
sample("authorization-header", "Authorization: Bearer {v}", r(A, 40))
sample("generic-secret-assignment", 'client_secret = "{v}"', r(A, 32))


@pytest.fixture(scope="module")
def scanner() -> SecretsScanner:
    return SecretsScanner()


def test_every_rule_has_a_sample() -> None:
    ids = {rule.id for rule in load_rules()}
    assert ids == set(SAMPLES), f"missing: {ids - set(SAMPLES)}, unknown: {set(SAMPLES) - ids}"


@pytest.mark.parametrize("rule", sorted(SAMPLES))
def test_each_rule_finds_its_secret_and_reports_only_the_value(scanner: SecretsScanner, rule: str) -> None:
    text, value = SAMPLES[rule]
    findings = scanner.scan(text)
    assert findings, f"{rule}: nothing found in {text!r}"
    start = text.index(value)
    covering = [f for f in findings if f.start <= start and f.end >= start + len(value)]
    assert covering, f"{rule}: no finding covers the value: {findings}"
    assert covering[0].rule == rule, f"{rule}: reported as {covering[0].rule}"
    if rule not in ("putty-private-key",):
        assert text[covering[0].start : covering[0].end] == value


@pytest.mark.parametrize(
    "text",
    [
        'client = OpenAI(api_key="sk-...")',
        "OPENAI_API_KEY=sk-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
        "export GITHUB_TOKEN=ghp_XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
        "aws_access_key_id = AKIAIOSFODNN7EXAMPLE",
        "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "api_key = os.environ['OPENAI_API_KEY']",
        'password = "********"',
        "DB_PASSWORD=${DB_PASSWORD}",
        "postgres://user:password@localhost:5432/app",
        "The header -----BEGIN RSA PRIVATE KEY----- marks a PEM file; never share one.",
        "commit 9fceb02d0ae598e95dc970b74767f19372d61af8",
        "request_id=550e8400-e29b-41d4-a716-446655440000",
        '"integrity": "sha512-' + base64.b64encode(bytes(range(64))).decode() + '"',
        'next_page_token: "CiAKGjBpNDd2Nmp2Zml2cXRwYjBpOXA3Z2tqZhIHEgVzcGFjZQ"',
        "token = getUserAccessTokenFromCache(session)",
        "The password is incorrect, please try again.",
        "env:\n  GITHUB_TOKEN: ${{ secrets.GITHUB_TOKEN }}",
        "const publishable = 'pk_live_51H8xYzAbCdEfGhIjKlMnOpQr';",
        "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABgQC7vbqajDhA5FQ4mWk9yWLkqg9Zcv8NP9G dev@laptop",
    ],
)
def test_hard_negatives(scanner: SecretsScanner, text: str) -> None:
    assert scanner.scan(text) == []


def test_overlapping_rules_report_once(scanner: SecretsScanner) -> None:
    token = "ghp_" + r(A, 36)
    findings = scanner.scan(f"https://user:{token}@github.com/acme/app.git")
    assert [f.rule for f in findings] == ["github-token"]


def test_two_secrets_back_to_back(scanner: SecretsScanner) -> None:
    a, b = "ghp_" + r(A, 36), "npm_" + r(A, 36)
    findings = scanner.scan(f"{a},{b} {a}")
    assert [(f.rule, f.start) for f in findings] == [("github-token", 0), ("npm-token", 41), ("github-token", 82)]


def test_spans_are_character_offsets_in_non_ascii_text(scanner: SecretsScanner) -> None:
    token = "ghp_" + r(A, 36)
    text = f"Schlüssel für München 🔑: {token} — danke"
    (finding,) = scanner.scan(text)
    assert text[finding.start : finding.end] == token


def test_secret_split_by_whitespace_is_not_caught(scanner: SecretsScanner) -> None:
    """Known limit: a token broken across spaces or lines is not reassembled."""
    token = "ghp_" + r(A, 36)
    assert scanner.scan(token[:20] + " " + token[20:]) == []


def test_zero_width_inside_a_token_is_not_caught_by_the_scanner_alone(scanner: SecretsScanner) -> None:
    """The policy's de-obfuscation pass catches it (see test_policy); the raw scanner does not."""
    token = "ghp_" + r(A, 36)
    assert scanner.scan(token[:10] + "\u200b" + token[10:]) == []


def test_disabled_rules_and_entropy_setting() -> None:
    value = r(A, 32)
    text = f'api_key = "{value}"'
    assert SecretsScanner(disabled=frozenset({"generic-secret-assignment"})).scan(text) == []
    assert SecretsScanner(generic_min_entropy=6.0).scan(text) == []
    assert SecretsScanner().scan(text) == [Finding("secrets", "generic-secret-assignment", "medium", 11, 43)]


def test_invalid_rule_is_a_startup_error() -> None:
    with pytest.raises(ValueError, match="invalid RE2 pattern"):
        SecretsScanner([SecretRule(id="bad", severity="high", pattern="(?<=x)y")])
    with pytest.raises(ValueError, match="unknown check"):
        SecretsScanner([SecretRule(id="bad", severity="high", pattern="x", check="nope")])


def test_rule_file_is_valid(tmp_path: Path) -> None:
    rules = load_rules()
    assert len(rules) >= 50
    dup = tmp_path / "dup.yaml"
    dup.write_text("rules:\n  - {id: a, severity: low, pattern: x}\n  - {id: a, severity: low, pattern: y}\n")
    with pytest.raises(ValueError, match="unique"):
        load_rules(dup)


def test_linear_time_on_adversarial_input(scanner: SecretsScanner) -> None:
    """RE2 has no backtracking: pathological inputs for backtracking engines stay fast."""
    import time

    evil = "password=" + "a" * 50_000 + "!" + " key=" * 5000
    start = time.perf_counter()
    scanner.scan(evil)
    assert time.perf_counter() - start < 1.0
