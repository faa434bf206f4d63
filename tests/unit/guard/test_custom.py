"""Custom rules: keywords on whole words, RE2 regexes, topics, language allow/deny, prompt size."""

# ruff: noqa: RUF001  (look-alike and full-width characters are the point of these tests)
from __future__ import annotations

import pytest

from services.guard.language import detect_language
from services.guard.scanners.custom import (
    CustomScanner,
    KeywordList,
    LanguageScanner,
    RegexRule,
    Topic,
    keyword_pattern,
    size_finding,
)
from shared.config import ConfigError, parse_config


def rules_hit(scanner: CustomScanner, text: str) -> list[tuple[str, str]]:
    return [(f.rule, text[f.start : f.end]) for f in scanner.scan(text)]


def test_keywords_match_whole_words_case_insensitively() -> None:
    s = CustomScanner(keywords=[KeywordList("codenames", ("bluebird", "Project Falcon", "c++"))])
    assert rules_hit(s, "The BlueBird launch and project   falcon.") == [
        ("codenames", "BlueBird"),
        ("codenames", "project   falcon"),
    ]
    assert rules_hit(s, "bluebirds and falconry and xbluebird") == []
    assert rules_hit(s, "I write C++ daily") == [("codenames", "C++")]


def test_keyword_pattern_escapes_regex_syntax() -> None:
    s = CustomScanner(keywords=[KeywordList("k", ("a.b", "(x)"))])
    assert rules_hit(s, "axb (x) a.b") == [("k", "(x)"), ("k", "a.b")] or rules_hit(s, "axb (x) a.b") == [
        ("k", "a.b"),
        ("k", "(x)"),
    ]
    assert "\\b" in keyword_pattern(["word"])


def test_non_ascii_keywords() -> None:
    s = CustomScanner(keywords=[KeywordList("k", ("Müller", "机密"))])
    assert rules_hit(s, "Herr MÜLLER hat 机密文件") == [("k", "MÜLLER"), ("k", "机密")]


def test_user_regexes() -> None:
    s = CustomScanner(
        regexes=[RegexRule("ticket", r"ACME-[0-9]{4,6}"), RegexRule("ci", r"secret sauce", case_insensitive=True)]
    )
    assert rules_hit(s, "see ACME-12345 and acme-12345 and the Secret Sauce") == [
        ("ticket", "ACME-12345"),
        ("ci", "Secret Sauce"),
    ]
    assert s.label("ticket") == "TICKET"


def test_regex_named_group_s_sets_the_span() -> None:
    s = CustomScanner(regexes=[RegexRule("emp", r"employee id:\s*(?P<s>E[0-9]{5})")])
    assert rules_hit(s, "employee id: E12345") == [("emp", "E12345")]


def test_topics_need_min_distinct_hits() -> None:
    s = CustomScanner(topics=[Topic("weapons", ("rifle", "ammunition", "explosive"), min_hits=2)])
    assert rules_hit(s, "a rifle, a rifle, a rifle") == []
    hits = s.scan("where to buy a rifle and ammunition cheaply")
    assert [(f.rule, f.score) for f in hits] == [("weapons", 1.0)]


@pytest.mark.parametrize(
    "yaml_regex,message",
    [
        ("'(?<=a)b'", "not a valid RE2 regex"),
        ("'(a)\\1'", "not a valid RE2 regex"),
        ("'a*'", "matches the empty string"),
        ("'[\\pL]{0,60}x'", "too complex"),
    ],
)
def test_invalid_regex_fails_at_config_load_with_line(yaml_regex: str, message: str) -> None:
    text = f"guardrails:\n  policies:\n    p:\n      regexes:\n        - name: bad\n          pattern: {yaml_regex}\n"
    with pytest.raises(ConfigError) as exc:
        parse_config(text, "g.yaml")
    assert "g.yaml:6: guardrails.policies.p.regexes.0.pattern" in str(exc.value)
    assert message in str(exc.value)


def test_topic_min_hits_must_be_reachable() -> None:
    text = "guardrails:\n  policies:\n    p:\n      topics:\n        - {name: t, keywords: [a, b], min_hits: 3}\n"
    with pytest.raises(ConfigError, match="min_hits=3"):
        parse_config(text)


@pytest.mark.parametrize(
    "text,code",
    [
        ("Please summarise the attached report and tell me what the main risks are for the team.", "en"),
        ("Bitte fasse den Bericht zusammen und sage mir, was die wichtigsten Risiken für das Team sind.", "de"),
        ("Pouvez-vous résumer le rapport et me dire quels sont les principaux risques pour l'équipe ?", "fr"),
        ("Por favor resume el informe y dime cuáles son los principales riesgos para el equipo.", "es"),
        ("Per favore riassumi il rapporto e dimmi quali sono i rischi principali per la squadra.", "it"),
        ("Пожалуйста, кратко изложите отчёт и скажите, что это за риски для команды и как их снизить.", "ru"),
        ("Будь ласка, підсумуйте звіт і скажіть, які основні ризики для команди.", "uk"),
        ("请总结附件中的报告，并告诉我团队面临的主要风险是什么，以及如何降低这些风险。", "zh"),
        ("添付のレポートを要約して、チームにとっての主なリスクを教えてください。", "ja"),
        ("첨부된 보고서를 요약하고 팀의 주요 위험이 무엇인지 알려주세요.", "ko"),
        ("يرجى تلخيص التقرير المرفق وإخباري ما هي المخاطر الرئيسية للفريق.", "ar"),
        ("ok thanks", "und"),  # too short to judge
        ("x = [i * 2 for i in range(10)]; y = sum(x) / len(x)", "und"),  # code: no stopword majority
    ],
)
def test_language_detection(text: str, code: str) -> None:
    assert detect_language(text) == code


def test_language_allow_and_deny() -> None:
    german = "Bitte fasse den Bericht zusammen und sage mir, was die wichtigsten Risiken für das Team sind."
    english = "Please summarise the attached report and tell me what the main risks are for the team."
    allow_en = LanguageScanner(allow=["en"])
    assert allow_en.scan(english) == []
    (finding,) = allow_en.scan(german)
    assert (finding.rule, finding.start, finding.end) == ("language:de", 0, len(german))
    assert LanguageScanner(deny=["de"]).scan(english) == []
    assert LanguageScanner(deny=["de"]).scan(german)[0].rule == "language:de"
    assert allow_en.scan("kurz") == []  # undetermined texts are never judged


def test_size_rule() -> None:
    assert size_finding(10, 0) is None
    assert size_finding(10, 10) is None
    finding = size_finding(11, 10)
    assert finding is not None and (finding.rule, finding.end) == ("max_prompt_chars", 11)
