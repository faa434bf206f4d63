"""Guardrail policy configuration (the `guardrails:` section of the config file).

Shape (every key optional; unknown keys are rejected with file and line)::

    guardrails:
      default_policy: default          # used when neither the key nor the model names one
      model_policies:                  # model name (or alias) → policy
        gpt-4o-mini: pii-redact
      stream_holdback_chars: 256       # output scanning: characters held back from a stream
      policies:
        default:                       # shipped: blocks secrets and obvious prompt injection
          secrets: {action: block}
          injection: {action: block, min_severity: high}
        pii-redact:
          description: Redact personal data, block secrets.
          min_severity: low            # findings below are ignored, or flagged (below_min: flag)
          below_min: ignore
          max_prompt_chars: 200000     # 0: no limit beyond the server's body limit
          output_policy: pii-redact    # scan responses with this policy ("": responses are not scanned)
          restore_response: true       # put this request's redacted values back into the response
          secrets:
            action: block              # block | redact | flag
            rules: {generic-secret-assignment: flag, stripe-test-key: off}
            generic_min_entropy: 3.5
          pii:
            action: redact
            entities: [email, phone, credit_card, iban, ssn, ip_address, date_of_birth, street_address]
            phone_regions: [US, GB]    # how to read numbers written without +country code
            rules: {ip_address: flag}
          injection:
            action: block
            required: false            # true: refuse to start when the injection scanner is missing
            threshold: 0.9             # classifier probability that flags (unset: the model's own)
          keywords:
            - {name: project-names, words: [bluebird, "project falcon"], action: redact}
          regexes:
            - {name: ticket, pattern: 'ACME-[0-9]{4,6}', action: flag, severity: low}
          topics:
            - {name: weapons, keywords: [rifle, ammunition, explosive], min_hits: 2, action: block}
          language:
            allow: [en, de]            # ISO 639-1 codes; texts in other detected languages hit
            action: flag

Which policy applies: the key's `policy` if set, else `model_policies[model]`, else `default_policy`.
If `policies` leaves out the name `default`, the shipped default policy is kept under that name.
Regexes are compiled with RE2 here, so an invalid one fails at startup with its file and line.
"""

from __future__ import annotations

from typing import Literal

import re2
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Action = Literal["block", "redact", "flag"]
RuleAction = Literal["block", "redact", "flag", "off"]
Severity = Literal["low", "medium", "high", "critical"]
PiiEntity = Literal["email", "phone", "credit_card", "iban", "ssn", "ip_address", "date_of_birth", "street_address"]
ALL_PII: tuple[PiiEntity, ...] = (
    "email",
    "phone",
    "credit_card",
    "iban",
    "ssn",
    "ip_address",
    "date_of_birth",
    "street_address",
)
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
MAX_REGEX_PROGRAM = 20_000  # RE2 program size; bigger user regexes could exhaust the scan Set's DFA memory


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScannerConfig(_Strict):
    """What every scanner section shares: the action on a hit, per-rule overrides, a severity floor."""

    action: Action = "block"
    rules: dict[str, RuleAction] = Field(default_factory=dict, description="rule id → action, or off")
    min_severity: Severity | None = Field(default=None, description="overrides the policy's min_severity")


class SecretsConfig(ScannerConfig):
    generic_min_entropy: float = Field(default=3.5, ge=0.0, le=8.0)


class PiiConfig(ScannerConfig):
    action: Action = "redact"
    entities: list[PiiEntity] = Field(default_factory=lambda: list(ALL_PII), min_length=1)
    phone_regions: list[str] = Field(default_factory=lambda: ["US"])

    @field_validator("phone_regions")
    @classmethod
    def _regions(cls, value: list[str]) -> list[str]:
        for region in value:
            if len(region) != 2 or not region.isalpha() or not region.isupper():
                raise ValueError(f"{region!r} is not a two-letter upper-case region code (e.g. US, GB)")
        return value


class InjectionConfig(ScannerConfig):
    required: bool = Field(default=False, description="fail at startup when the injection scanner is missing")
    threshold: float | None = Field(
        default=None, ge=0.0, le=1.0, description="classifier probability that flags; unset: the model's own"
    )
    # the linear classifier: recall ~0.9 on held-out attacks (rules alone ~0.13) for ~300 µs per 2 KB
    classifier: bool = True
    # classifier findings at or above this probability are high severity (and so blocked where high blocks);
    # above 1.0 the classifier only ever reports medium findings
    strong_threshold: float = Field(default=0.95, ge=0.0, le=1.01)


class KeywordListConfig(_Strict):
    """Words or phrases matched case-insensitively on whole words of the normalised text."""

    name: str = Field(pattern=_NAME)
    words: list[str] = Field(min_length=1)
    action: Action = "block"
    severity: Severity = "medium"

    @field_validator("words")
    @classmethod
    def _nonblank(cls, value: list[str]) -> list[str]:
        if any(not w.strip() for w in value):
            raise ValueError("keywords must not be blank")
        return value


class RegexRuleConfig(_Strict):
    """A user regex in RE2 syntax (linear time: no backreferences or look-around, and no ReDoS)."""

    name: str = Field(pattern=_NAME)
    pattern: str = Field(min_length=1)
    case_insensitive: bool = False
    action: Action = "block"
    severity: Severity = "medium"

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            compiled = re2.compile(value)
        except re2.error as exc:
            raise ValueError(f"not a valid RE2 regex: {exc}") from exc
        if compiled.search("") is not None:
            raise ValueError("the regex matches the empty string")
        if compiled.programsize > MAX_REGEX_PROGRAM:
            raise ValueError(
                f"the regex is too complex ({compiled.programsize} RE2 instructions, limit {MAX_REGEX_PROGRAM}); "
                "avoid counted repetition of large classes such as [\\pL]{0,60}"
            )
        return value


class TopicConfig(_Strict):
    """A banned topic: hit when at least `min_hits` distinct keywords of the topic occur."""

    name: str = Field(pattern=_NAME)
    keywords: list[str] = Field(min_length=1)
    min_hits: int = Field(default=1, ge=1)
    action: Literal["block", "flag"] = "block"
    severity: Severity = "medium"

    @model_validator(mode="after")
    def _reachable(self) -> TopicConfig:
        distinct = {k.strip().casefold() for k in self.keywords if k.strip()}
        if self.min_hits > len(distinct):
            raise ValueError(f"min_hits={self.min_hits} but the topic has {len(distinct)} distinct keywords")
        return self


class LanguageConfig(_Strict):
    """Allowed or denied languages (ISO 639-1), judged by a cheap script and stopword detector."""

    allow: list[str] = Field(default_factory=list)
    deny: list[str] = Field(default_factory=list)
    action: Literal["block", "flag"] = "block"
    severity: Severity = "medium"
    min_letters: int = Field(default=24, ge=1, description="shorter texts are never judged")

    @model_validator(mode="after")
    def _one_list(self) -> LanguageConfig:
        if not self.allow and not self.deny:
            raise ValueError("give `allow` or `deny`")
        for code in (*self.allow, *self.deny):
            if len(code) != 2 or not code.isalpha() or not code.islower():
                raise ValueError(f"{code!r} is not a two-letter lower-case ISO 639-1 code")
        return self


class PolicyConfig(_Strict):
    """One named policy: which scanners run and what they do on a hit (a scanner left out does not run)."""

    description: str = ""
    max_prompt_chars: int = Field(default=0, ge=0, description="0 means no limit beyond the server's body limit")
    min_severity: Severity = "low"
    below_min: Literal["ignore", "flag"] = "ignore"
    output_policy: str = Field(default="", description="policy for responses; empty: responses are not scanned")
    restore_response: bool = Field(
        default=False, description="put redacted values back into the response (the provider never saw them)"
    )
    secrets: SecretsConfig | None = None
    pii: PiiConfig | None = None
    injection: InjectionConfig | None = None
    keywords: list[KeywordListConfig] = Field(default_factory=list)
    regexes: list[RegexRuleConfig] = Field(default_factory=list)
    topics: list[TopicConfig] = Field(default_factory=list)
    language: LanguageConfig | None = None

    @model_validator(mode="after")
    def _distinct_rule_names(self) -> PolicyConfig:
        names = [k.name for k in self.keywords] + [r.name for r in self.regexes] + [t.name for t in self.topics]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"keyword, regex and topic names must be distinct; repeated: {', '.join(dupes)}")
        return self


def shipped_default_policy() -> PolicyConfig:
    return PolicyConfig(
        description="Blocks secrets and obvious prompt injection.",
        secrets=SecretsConfig(action="block"),
        # phrase-rule hits (high severity) block. The classifier is left to policies that opt in: it costs
        # ~300 µs per 2 KB and misfires on some benign prose (bench/injection_eval.py), so by default it
        # would only ever flag.
        injection=InjectionConfig(action="block", min_severity="high", classifier=False),
        below_min="flag",
    )


class GuardrailsConfig(_Strict):
    default_policy: str = "default"
    policies: dict[str, PolicyConfig] = Field(default_factory=lambda: {"default": shipped_default_policy()})
    model_policies: dict[str, str] = Field(default_factory=dict, description="model name or alias → policy")
    stream_holdback_chars: int = Field(default=256, ge=64, le=65536)

    @field_validator("policies", mode="after")
    @classmethod
    def _keep_shipped_default(cls, value: dict[str, PolicyConfig]) -> dict[str, PolicyConfig]:
        if "default" not in value:
            return {"default": shipped_default_policy(), **value}
        return value

    @model_validator(mode="after")
    def _references(self) -> GuardrailsConfig:
        known = ", ".join(sorted(self.policies))
        if self.default_policy not in self.policies:
            raise ValueError(f"default_policy: unknown policy {self.default_policy!r} (known: {known})")
        for model, policy in self.model_policies.items():
            if policy not in self.policies:
                raise ValueError(f"model_policies.{model}: unknown policy {policy!r} (known: {known})")
        for name, cfg in self.policies.items():
            if cfg.output_policy and cfg.output_policy not in self.policies:
                raise ValueError(
                    f"policies.{name}.output_policy: unknown policy {cfg.output_policy!r} (known: {known})"
                )
        return self
