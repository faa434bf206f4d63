"""Scanners by name: how each policy section becomes a scanner, and where optional scanners plug in.

`secrets`, `pii`, `custom` and `language` are built in. `injection` is looked up at policy build time
in `services.guard.scanners.injection` (class `InjectionScanner`; `threshold` is passed when set);
while that module does not exist the scanner is reported unavailable and a policy that does not mark
it `required` simply runs without it. `register()` replaces or adds a factory (tests, plug-ins).
Scanners are built once per distinct configuration and shared between policies.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from services.guard.scanners.base import Scanner
from services.guard.scanners.custom import CustomScanner, KeywordList, LanguageScanner, RegexRule, Topic
from services.guard.scanners.pii import PiiScanner
from services.guard.scanners.secrets import SecretsScanner
from shared.guard_config import PolicyConfig

INJECTION_MODULE = "services.guard.scanners.injection"


class ScannerUnavailable(Exception):
    """The scanner's implementation is not installed; the message says what is missing."""


@dataclass(frozen=True, slots=True)
class ScannerFactory:
    """Builds the scanner for one policy section; `key` says which configs may share one instance."""

    build: Callable[[PolicyConfig], Scanner]
    key: Callable[[PolicyConfig], str]
    # run again on the de-obfuscated text (zero-width removed, full-width folded) and map spans back;
    # off for scanners that normalise for themselves
    rescan_cleaned: bool = True


def _secrets(cfg: PolicyConfig) -> Scanner:
    assert cfg.secrets is not None
    off = frozenset(rule for rule, action in cfg.secrets.rules.items() if action == "off")
    return SecretsScanner(generic_min_entropy=cfg.secrets.generic_min_entropy, disabled=off)


def _pii(cfg: PolicyConfig) -> Scanner:
    assert cfg.pii is not None
    wanted = [e for e in cfg.pii.entities if cfg.pii.rules.get(e) != "off"]
    return PiiScanner(entities=wanted, phone_regions=cfg.pii.phone_regions)


def _custom(cfg: PolicyConfig) -> Scanner:
    return CustomScanner(
        keywords=[KeywordList(k.name, tuple(k.words), k.severity) for k in cfg.keywords],
        regexes=[RegexRule(r.name, r.pattern, r.severity, r.case_insensitive) for r in cfg.regexes],
        topics=[Topic(t.name, tuple(t.keywords), t.min_hits, t.severity) for t in cfg.topics],
    )


def _language(cfg: PolicyConfig) -> Scanner:
    assert cfg.language is not None
    lang = cfg.language
    return LanguageScanner(lang.allow, lang.deny, lang.severity, lang.min_letters)


def _injection(cfg: PolicyConfig) -> Scanner:
    try:
        module = importlib.import_module(INJECTION_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name != INJECTION_MODULE:
            raise  # the module exists but one of its own imports is missing: a real error
        raise ScannerUnavailable(f"{INJECTION_MODULE} is not installed") from exc
    cls = getattr(module, "InjectionScanner", None)
    if cls is None:
        raise ScannerUnavailable(f"{INJECTION_MODULE} has no InjectionScanner")
    options: dict[str, float | bool] = {}
    if cfg.injection is not None and cfg.injection.threshold is not None:
        options["threshold"] = cfg.injection.threshold
    if cfg.injection is not None:
        options["strong_threshold"] = cfg.injection.strong_threshold
        options["classifier"] = cfg.injection.classifier
    scanner: Scanner = cls(**options)
    return scanner


def _off(rules: dict[str, str]) -> str:
    return ",".join(sorted(rule for rule, action in rules.items() if action == "off"))


def _secrets_key(cfg: PolicyConfig) -> str:
    assert cfg.secrets is not None
    return f"{cfg.secrets.generic_min_entropy}|{_off(dict(cfg.secrets.rules))}"


def _pii_key(cfg: PolicyConfig) -> str:
    assert cfg.pii is not None
    return f"{sorted(cfg.pii.entities)}|{cfg.pii.phone_regions}|{_off(dict(cfg.pii.rules))}"


def _language_key(cfg: PolicyConfig) -> str:
    assert cfg.language is not None
    return cfg.language.model_dump_json()


def _injection_key(cfg: PolicyConfig) -> str:
    if cfg.injection is None:
        return ""
    return f"{cfg.injection.threshold}|{cfg.injection.strong_threshold}|{cfg.injection.classifier}"


def _custom_key(cfg: PolicyConfig) -> str:
    return cfg.model_dump_json(include={"keywords", "regexes", "topics"})


class ScannerRegistry:
    """Name → factory, plus the instances built so far (one per distinct configuration)."""

    def __init__(self) -> None:
        self._factories: dict[str, ScannerFactory] = {
            "secrets": ScannerFactory(_secrets, _secrets_key),
            "pii": ScannerFactory(_pii, _pii_key),
            "custom": ScannerFactory(_custom, _custom_key),
            "language": ScannerFactory(_language, _language_key),
            "injection": ScannerFactory(_injection, _injection_key, rescan_cleaned=False),
        }
        self._built: dict[tuple[str, str], Scanner] = {}

    def register(self, name: str, factory: ScannerFactory) -> None:
        self._factories[name] = factory
        self._built = {k: v for k, v in self._built.items() if k[0] != name}

    def names(self) -> tuple[str, ...]:
        return tuple(self._factories)

    def factory(self, name: str) -> ScannerFactory:
        return self._factories[name]

    def create(self, name: str, cfg: PolicyConfig) -> Scanner:
        """The scanner for `name` under this policy; raises ScannerUnavailable when it is not installed."""
        factory = self._factories.get(name)
        if factory is None:
            raise ScannerUnavailable(f"no scanner registered as {name!r}")
        key = (name, factory.key(cfg))
        scanner = self._built.get(key)
        if scanner is None:
            scanner = factory.build(cfg)
            self._built[key] = scanner
        return scanner
