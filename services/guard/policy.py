"""Compiled guard policies (pure): run a policy's scanners over texts and decide block / redact / flag / allow.

Build once at startup, then scan per request::

    guardrails = Guardrails.from_config(config)          # every policy compiled; raises on a bad one
    policy = guardrails.resolve(key_policy=req.caller.policy, model=req.model)
    result = policy.scan_texts(["system prompt", "user message"])   # or policy.scan(text)
    result.action        # "block" > "redact" > "flag" > "allow"
    result.decisions     # each Finding with its action and the index of the text it was found in
    result.texts         # the texts to forward (placeholders in place of redacted values)
    result.restore(s)    # put the originals back into a response; result.placeholders is the map

Per finding, the action is the scanner section's `rules[rule]` if set (`off` drops it), else the
section's `action`; findings below the section's (or policy's) `min_severity` are dropped, or
flagged when the policy says `below_min: flag`. PII, secrets and custom rules scan the original text
(so spans index it) and, when the text hides characters (zero-width, full-width, tag characters),
the de-obfuscated copy too, with its spans mapped back. The injection scanner gets the original text
and normalises for itself, and reads the text's identifier-like runs as words (`identifiers.words_view`).
`scan_texts` keeps each text's decisions in a bounded cache of the policy's own (`scancache`): agents resend
the same tools and history on every turn.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from services.guard import identifiers
from services.guard.redaction import Span, Vault, redact
from services.guard.scancache import ScanCache
from services.guard.scanners.base import SEVERITY_RANK, Finding, Scanner
from services.guard.scanners.custom import size_finding
from services.guard.scanners.injection import CLASSIFIER_RULE
from services.guard.scanners.registry import ScannerRegistry, ScannerUnavailable
from services.guard.textmap import MappedText, deobfuscate
from shared.config import GatehouseConfig
from shared.guard_config import Action, GuardrailsConfig, PolicyConfig, RuleAction, ScannerConfig
from shared.schemas.chat import GuardFinding

Verdict = Literal["allow", "flag", "redact", "block"]
# put before a part of a words view that starts mid-line: not a character a line-anchored rule allows at a line's start
_MID_LINE = "."
VERDICT_RANK: dict[str, int] = {"allow": 0, "flag": 1, "redact": 2, "block": 3}


class PolicyError(ValueError):
    """A policy cannot be built (e.g. it requires a scanner that is not installed)."""


@dataclass(frozen=True, slots=True)
class Decision:
    """A finding and what the policy does about it; `part` indexes the scanned texts."""

    finding: Finding
    action: Action
    part: int = 0


@dataclass(frozen=True, slots=True)
class PolicyResult:
    policy: str
    action: Verdict
    decisions: tuple[Decision, ...]
    texts: tuple[str, ...]  # as given, or redacted when action == "redact"
    vault: Vault

    @property
    def text(self) -> str:
        return self.texts[0] if self.texts else ""

    @property
    def findings(self) -> tuple[Finding, ...]:
        return tuple(d.finding for d in self.decisions)

    @property
    def placeholders(self) -> dict[str, str]:
        """placeholder → original; in-flight only, never to be logged or stored."""
        return self.vault.mapping

    def restore(self, text: str) -> str:
        return self.vault.restore(text)


@dataclass(frozen=True, slots=True)
class _Step:
    scanner: Scanner
    action: Action
    rules: Mapping[str, RuleAction]
    min_rank: int
    rescan_cleaned: bool


def _label(scanner: Scanner, rule: str) -> str:
    label = getattr(scanner, "label", None)
    if callable(label):
        return _clean(str(label(rule)))
    return _clean(scanner.name)


def _clean(name: str) -> str:
    return "".join(c if c.isascii() and c.isalnum() else "_" for c in name.upper()).strip("_") or "REDACTED"


class Policy:
    """One compiled policy. Thread-safe; between calls it keeps only a cache of per-text decisions (the same text
    always gets the same ones: scanners are pure); a Vault carries per-request state."""

    def __init__(
        self,
        name: str,
        steps: Sequence[_Step],
        *,
        description: str = "",
        max_prompt_chars: int = 0,
        below_min: Literal["ignore", "flag"] = "ignore",
        output_policy: str = "",
        unavailable: Sequence[str] = (),
        cache: ScanCache[tuple[Decision, ...]] | None = None,
    ) -> None:
        """`cache`: where `scan_texts` keeps each text's decisions (scanners are pure: a text scanned again gets the
        same ones); None scans every text every time."""
        self.name = name
        self.description = description
        self.max_prompt_chars = max_prompt_chars
        self.output_policy = output_policy
        self.unavailable = tuple(unavailable)  # scanners the config asked for but that are not installed
        self._steps = tuple(steps)
        self._by_name = {s.scanner.name: s.scanner for s in steps}
        self._below_min = below_min
        self._rescan = any(s.rescan_cleaned for s in steps)
        self._injection = next((s for s in self._steps if s.scanner.name == "injection"), None)
        self._cache = cache

    @property
    def scanners(self) -> tuple[str, ...]:
        return tuple(s.scanner.name for s in self._steps)

    def label(self, finding: Finding) -> str:
        """The placeholder label for a redacted finding (EMAIL, SECRET, ...)."""
        scanner = self._by_name.get(finding.scanner)
        return _label(scanner, finding.rule) if scanner is not None else _clean(finding.scanner)

    def decide(self, text: str, part: int = 0) -> list[Decision]:
        """Every finding in `text` that the policy acts on, with its action (no redaction, no size check)."""
        out: list[Decision] = []
        cleaned: MappedText | None = deobfuscate(text) if self._rescan else None
        for step in self._steps:
            findings = step.scanner.scan(text)
            if cleaned is not None and step.rescan_cleaned:
                findings = _with_cleaned(findings, step.scanner.scan(cleaned.text), cleaned)
            for finding in findings:
                action = self._action(step, finding)
                if action is not None:
                    out.append(Decision(finding, action, part))
        return out

    def _action(self, step: _Step, finding: Finding) -> Action | None:
        chosen = step.rules.get(finding.rule, step.action)
        if chosen == "off":
            return None
        if SEVERITY_RANK.get(finding.severity, 0) < step.min_rank:
            return "flag" if self._below_min == "flag" else None
        return chosen

    def scan(self, text: str, vault: Vault | None = None) -> PolicyResult:
        return self.scan_texts((text,), vault)

    def scan_texts(
        self,
        texts: Sequence[str],
        vault: Vault | None = None,
        *,
        tokens: Collection[int] = (),
        scope: str | None = None,
    ) -> PolicyResult:
        """Scan the texts of one request together: one verdict, one size limit, one placeholder map.

        `tokens` are the indexes of texts that are single words (JSON keys, say): every scanner reads them but the
        injection classifier, whose reading of a lone word ("text", "content") is no verdict. A text that holds a
        long identifier-like run (a key, a name, a run inside a sentence) is also read by the injection scanner with
        its runs as the words they join (`identifiers.words_view`), classifier included.

        `scope` (the caller's virtual key): the texts' decisions are kept in, and taken from, the policy's cache
        under it, so a caller reaches only its own; None: no cache."""
        vault = Vault() if vault is None else vault
        decisions: list[Decision] = []
        too_big = size_finding(sum(len(t) for t in texts), self.max_prompt_chars)
        if too_big is not None:
            # refuse before scanning: a huge prompt must not cost scan time
            decisions.append(Decision(too_big, "block", 0))
        else:
            for i, text in enumerate(texts):
                decisions.extend(self._text_decisions(text, i, i in tokens, scope))
        verdict: Verdict = "allow"
        for d in decisions:
            if VERDICT_RANK[d.action] > VERDICT_RANK[verdict]:
                verdict = d.action
        out = tuple(texts)
        if verdict == "redact":
            avoid = "\x00".join(texts)
            spans: dict[int, list[Span]] = {}
            for d in decisions:
                if d.action == "redact":
                    f = d.finding
                    spans.setdefault(d.part, []).append(Span(f.start, f.end, self.label(f)))
            out = tuple(redact(t, spans.get(i, ()), vault, avoid) for i, t in enumerate(texts))
        return PolicyResult(self.name, verdict, tuple(decisions), out, vault)

    def _text_decisions(self, text: str, part: int, token: bool, scope: str | None) -> list[Decision]:
        """What the policy decides on one text of a request, from the cache when the caller's scope scanned it
        before."""
        if scope is None or self._cache is None:
            return self._scan_text(text, part, token)
        cached = self._cache.get(text, token, scope)
        if cached is not None:
            return [replace(d, part=part) for d in cached]
        found = self._scan_text(text, part, token)
        self._cache.put(text, token, tuple(found), scope)
        return found

    def _scan_text(self, text: str, part: int, token: bool) -> list[Decision]:
        found = self.decide(text, part)
        if token:
            found = [d for d in found if d.finding.rule != CLASSIFIER_RULE]
        found += self._as_words(text, part, found)
        return found

    def _as_words(self, text: str, part: int, found: list[Decision]) -> list[Decision]:
        """The injection scanner's findings in the text's words view (`identifiers.words_view`: a run is one token to
        it, so `ignore_all_previous_instructions` would read as nothing), spans mapped back to the text, each run
        spanned whole; none it found already. Only the spaced runs with their context are read again
        (`WordsView.windows`): the rest of the view is the text's own, copied, which `decide` has just read."""
        step = self._injection
        view = identifiers.words_view(text) if step is not None else None
        if step is None or view is None:
            return []
        seen = {d.finding.rule for d in found if d.finding.scanner == step.scanner.name}
        out: list[Decision] = []
        # only the spaced runs in their context: the rest of the view is the text's own, which `decide` scanned
        for left, right in view.windows():
            # a part cut mid-line must not read as a line's start to the rules anchored there (`system:` headers)
            lead = _MID_LINE if left > 0 and view.text[left - 1] != "\n" else ""
            part_text = lead + view.text[left:right]
            for finding in step.scanner.scan(part_text):
                if finding.rule in seen:
                    continue
                if finding.rule == CLASSIFIER_RULE and not identifiers.classifier_stands(part_text, finding.score):
                    continue  # short spaced names read like prompts to it (identifiers.CLASSIFIER_FLOOR)
                seen.add(finding.rule)
                offset = left - len(lead)
                start, end = view.to_original(max(finding.start + offset, left), max(finding.end + offset, left + 1))
                mapped = replace(finding, start=start, end=end)
                action = self._action(step, mapped)
                if action is not None:
                    out.append(Decision(mapped, action, part))
        return out


def _with_cleaned(found: list[Finding], extra: list[Finding], cleaned: MappedText) -> list[Finding]:
    seen = {(f.rule, f.start, f.end) for f in found}
    out = list(found)
    for f in extra:
        start, end = cleaned.to_original(f.start, f.end)
        if (f.rule, start, end) not in seen:
            seen.add((f.rule, start, end))
            out.append(replace(f, start=start, end=end))
    return out


def _step(scanner: Scanner, section: ScannerConfig, policy: PolicyConfig, rescan: bool) -> _Step:
    floor = section.min_severity or policy.min_severity
    return _Step(scanner, section.action, dict(section.rules), SEVERITY_RANK[floor], rescan)


def build_policy(
    name: str, cfg: PolicyConfig, registry: ScannerRegistry | None = None, *, cache: bool = True
) -> Policy:
    """Compile one policy config; scanners come from the registry (shared across policies). `cache`: keep each
    text's decisions in a bounded cache of the policy's own (`scancache`)."""
    registry = ScannerRegistry() if registry is None else registry
    steps: list[_Step] = []
    unavailable: list[str] = []
    sections: list[tuple[str, ScannerConfig | None]] = [
        ("secrets", cfg.secrets),
        ("pii", cfg.pii),
        ("injection", cfg.injection),
    ]
    for section_name, section in sections:
        if section is None:
            continue
        try:
            scanner = registry.create(section_name, cfg)
        except ScannerUnavailable as exc:
            if getattr(section, "required", False):
                raise PolicyError(f"policy {name!r} requires the {section_name} scanner: {exc}") from exc
            unavailable.append(section_name)
            continue
        steps.append(_step(scanner, section, cfg, registry.factory(section_name).rescan_cleaned))
    floor = SEVERITY_RANK[cfg.min_severity]
    if cfg.keywords or cfg.regexes or cfg.topics:
        rules: dict[str, RuleAction] = {k.name: k.action for k in cfg.keywords}
        rules |= {r.name: r.action for r in cfg.regexes}
        rules |= {t.name: t.action for t in cfg.topics}
        steps.append(_Step(registry.create("custom", cfg), "block", rules, floor, True))
    if cfg.language is not None:
        steps.append(_Step(registry.create("language", cfg), cfg.language.action, {}, floor, False))
    return Policy(
        name,
        steps,
        description=cfg.description,
        max_prompt_chars=cfg.max_prompt_chars,
        below_min=cfg.below_min,
        output_policy=cfg.output_policy,
        unavailable=unavailable,
        cache=ScanCache() if cache else None,
    )


class Guardrails:
    """Every policy of the config, compiled, and the rule that picks one for a request."""

    def __init__(
        self,
        config: GuardrailsConfig,
        *,
        model_names: Mapping[str, Sequence[str]] | None = None,
        registry: ScannerRegistry | None = None,
        cache: bool = True,
    ) -> None:
        """`model_names`: model name → its aliases; when given, model_policies must name known models. `cache`: each
        policy keeps the decisions of texts it scanned (`build_policy`)."""
        registry = ScannerRegistry() if registry is None else registry
        self.config = config
        self.policies = {name: build_policy(name, cfg, registry, cache=cache) for name, cfg in config.policies.items()}
        self.default = self.policies[config.default_policy]
        self.stream_holdback_chars = config.stream_holdback_chars
        self._by_model: dict[str, Policy] = {}
        for model, policy in config.model_policies.items():
            names: Sequence[str] = (model,)
            if model_names is not None:
                canonical = next((m for m, aliases in model_names.items() if model == m or model in aliases), None)
                if canonical is None:
                    raise PolicyError(f"guardrails.model_policies: unknown model {model!r}")
                names = (canonical, *model_names[canonical])
            for n in names:
                self._by_model[n] = self.policies[policy]

    @classmethod
    def from_config(
        cls, config: GatehouseConfig, registry: ScannerRegistry | None = None, *, cache: bool = True
    ) -> Guardrails:
        models = {m.name: tuple(m.aliases) for m in config.models}
        return cls(config.guardrails, model_names=models, registry=registry, cache=cache)

    @property
    def unavailable(self) -> dict[str, tuple[str, ...]]:
        """policy → scanners it names that are not installed (log these at startup)."""
        return {name: p.unavailable for name, p in self.policies.items() if p.unavailable}

    def policy(self, name: str) -> Policy:
        return self.policies[name]

    def resolve(self, *, key_policy: str = "", model: str = "") -> Policy:
        """The key's policy, else the model's, else the default."""
        if key_policy:
            return self.policies[key_policy]
        return self._by_model.get(model, self.default)

    def output_policy(self, policy: Policy) -> Policy | None:
        """The policy that scans this policy's responses, if any."""
        return self.policies.get(policy.output_policy) if policy.output_policy else None


def guard_findings(
    result: PolicyResult, *, direction: str = "input", locations: Sequence[str] = ()
) -> list[GuardFinding]:
    """The bus form of a result's findings (never the matched values); `locations[part]` names each text."""
    return decision_findings(result.decisions, direction=direction, locations=locations)


def decision_findings(
    decisions: Sequence[Decision], *, direction: str = "input", locations: Sequence[str] = (), location: str = ""
) -> list[GuardFinding]:
    """Decisions in bus form; a decision's text is named by `locations[part]`, else by `location`."""
    return [
        GuardFinding(
            scanner=d.finding.scanner,
            rule=d.finding.rule,
            action=d.action,
            severity=d.finding.severity,
            start=d.finding.start,
            end=d.finding.end,
            direction=direction,
            location=locations[d.part] if d.part < len(locations) else location,
        )
        for d in decisions
    ]
