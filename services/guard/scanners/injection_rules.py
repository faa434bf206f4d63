"""Phrase rules for prompt injection and jailbreaks, written against ``normalize.match_view`` text.

Patterns are RE2 syntax, lower-case (the view is lower-cased), and tolerate missing or repeated
separators (``\\W{0,6}``), because spaced-out letters collapse to "ignoreprevious". They aim at
precision: the classifier carries recall. A rule that would fire on ordinary questions *about*
prompt injection ("what is a system prompt?", "enable developer mode on Android") is a bug.
"""

# ruff: noqa: E501  (RE2 alternations read better whole than re-wrapped at 120 columns)

from __future__ import annotations

from dataclasses import dataclass

from services.guard.scanners.base import Severity

S = r"\W{0,6}"  # between two words: spaces, punctuation, or nothing (collapsed spaced-out letters)
W = r"(?:[a-z']+\W{1,6}){0,%d}?"  # up to N filler words


def _any(*words: str) -> str:
    return "(?:" + "|".join(words) + ")"


# The override form ("ignore all previous instructions") is built from words that also make everyday requests
# ("delete all old tasks", "drop existing firewall rules", "skip the current settings screen"). What makes it an
# attack is its object: instructions themselves, or rules, settings, context… that a qualifier ties to the model
# ("your rules", "the previous context"). Verbs that are mostly ordinary work (delete, drop, erase, skip, omit,
# discard) count only with an instruction-type object. Measured by bench/default_policy_eval.py.
_GENERIC_VERB = _any("ignore", "disregard", "forget", "bypass", "overlook", "neglect", "abandon", "nevermind",
                     "never mind")  # fmt: skip
# "override the previous settings" is configuration talk: with a generic object "override" counts only when the
# object is tied to the model after it ("the rules you were given"); "override your rules" is disable_safety's
_OVERRIDE_VERB = _any(_GENERIC_VERB, "override")
_ORDINARY_VERB = _any("skip", "discard", "omit", "drop", "erase", "delete")
_PRIOR = _any("previous", "prior", "above", "earlier", "preceding", "former", "initial", "original", "old",
              "existing", "given", "foregoing", "system", "developer", "default", "current", "all", "your")  # fmt: skip
# qualifiers that point at the conversation or the model rather than at the user's data ("developer settings" and
# "system settings" are screens on a phone)
_MODEL_PRIOR = _any("your", "ur", "previous", "prior", "above", "earlier", "preceding", "foregoing",
                    "system prompt'?s?")  # fmt: skip
# for the ordinary verbs: "delete the old prompts" is a prompt library's chore, "delete your prompts" is not
_ORDINARY_PRIOR = _any(_MODEL_PRIOR, "system", "initial", "original", "given")
_INSTRUCTION = _any("instructions?", "prompts?", "directions?", "directives?", "guide[li]ines?", "guidance")
_GENERIC = _any("ru[li]es?", "commands?", "orders?", "constraints?", "restrictions?", "programming", "context",
                "training", "policies", "policy", "conditioning", "limitations?", "settings?", "tasks?")  # fmt: skip
# a qualifier after the object that ties it to the model: "the rules you were given", "the settings above"
_MODEL_AFTER = _any("above", "given to you", "(?:that |which )?you(?:'ve| have)?" + S + "(?:been|were|got)" + S +
                    "(?:given|told|taught|trained|programmed|instructed)")  # fmt: skip
# "override all previous rules": with a quantifier and a qualifier tied to the model straight before a model-type
# object, "override" (and its synonyms) is the override form; configuration talk names the thing overridden ("the
# previous spam rules", "all default rules", "the previous settings")
_SUPERSEDE_VERB = _any("override", "overrule", "supersede", "nullify", "invalidate", "set aside", "cancel")
_QUANTIFIER = _any("all", "any", "every", "each")
_MODEL_OBJECT = _any(_INSTRUCTION, "ru[li]es?", "commands?", "constraints?", "restrictions?", "limitations?",
                     "programming", "training", "conditioning", "guardrails?", "safeguards?")  # fmt: skip
_REVEAL_VERB = _any("reveal", "print", "output", "repeat", "display", "leak", "dump", "disclose", "expose", "recite",
                    "spell out", "show", "tell me", "give me", "write out", "write down", "paste", "echo", "share",
                    "list", "provide", "return", "send")  # fmt: skip
_HIDDEN = _any("system", "initial", "original", "hidden", "secret", "internal", "confidential", "developer",
               "pre", "first", "starting", "base", "underlying")  # fmt: skip
_PROMPT_NOUN = _any("prompts?", "instructions?", "messages?", "directives?", "ru[li]es", "guide[li]ines",
                    "configuration", "config", "context", "preamble")  # fmt: skip
_JAIL_PERSONA = _any("unrestricted", "unfiltered", "uncensored", "jailbroken", "jail" + S + "broken", "amoral",
                     "immoral", "unethical", "evil", "lawless", "unchained", "unbound", "unlimited", "rogue")  # fmt: skip
_LIMITS = _any("restrictions?", "limitations?", "limits", "filters?", "guide[li]ines", "guardrails?", "safeguards?",
               "censorship", "ru[li]es", "policies", "constraints?", "boundaries", "morals?", "ethics", "principles",
               "programming", "safety (?:measures|features|protocols)")  # fmt: skip


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    severity: Severity
    pattern: str


RULES: tuple[Rule, ...] = (
    # instruction override
    Rule("injection.ignore_previous", "high", rf"\b{_OVERRIDE_VERB}{S}{W % 4}{_PRIOR}{S}{W % 2}{_INSTRUCTION}\b"),
    Rule("injection.ignore_previous", "high", rf"\b{_GENERIC_VERB}{S}{W % 4}{_MODEL_PRIOR}{S}{W % 2}{_GENERIC}\b"),
    Rule(
        "injection.ignore_previous",
        "high",
        rf"\b{_OVERRIDE_VERB}{S}{W % 4}(?:{_INSTRUCTION}|{_GENERIC}){S}{_MODEL_AFTER}",
    ),
    Rule(
        "injection.ignore_previous", "high", rf"\b{_ORDINARY_VERB}{S}{W % 4}{_ORDINARY_PRIOR}{S}{W % 2}{_INSTRUCTION}\b"
    ),
    Rule(
        "injection.ignore_previous",
        "high",
        rf"\b{_SUPERSEDE_VERB}{S}{_QUANTIFIER}(?:{S}of)?(?:{S}(?:the|your|ur))?{S}{_MODEL_PRIOR}{S}{_MODEL_OBJECT}\b",
    ),
    Rule(
        "injection.ignore_previous",
        "high",
        rf"\b{_OVERRIDE_VERB}{S}(?:all|any|every)?{S}(?:everything|anything|what(?:ever)?){S}(?:you(?:'ve| have)?{S}(?:been|were){S}"
        rf"(?:told|taught|instructed|given|programmed)|(?:that )?(?:was|were|is|came){S}(?:said|written|stated|above|before))",
    ),
    Rule(
        "injection.ignore_previous",
        "high",
        rf"\b(?:do not|don't|no longer|stop){S}(?:follow|obey|listen to|adhere to|comply with){S}{W % 2}"
        rf"(?:(?:previous|prior|above|original|system|your){S}{W % 1}{_INSTRUCTION}|(?:previous|prior|above|your){S}{W % 1}"
        rf"{_GENERIC})\b",
    ),
    Rule(
        "injection.new_instructions",
        "medium",
        r"\b(?:new|updated|revised|real|actual|true|override|overriding|secret|admin|priority)\W{0,6}"
        r"(?:system\W{0,6})?(?:instructions?|directives?|task|orders?|ru[li]es|prompt)\W{0,3}(?::|follow|are\b)",
    ),
    Rule(
        "injection.instead_do",
        "medium",
        rf"\b(?:instead|rather){S}(?:of{S}{W % 4})?(?:just\W+)?(?:say|print|output|respond with|reply with|write){S}"
        r"['\"]?(?:i have been pwned|pwned|hacked|access granted)",
    ),
    Rule("injection.pwned", "medium", r"\bi\W{0,6}ha(?:ve|s)\W{0,6}been\W{0,6}p\W?wned\b|\bpwned\b"),
    # prompt / secret exfiltration
    Rule(
        "injection.prompt_exfiltration",
        "high",
        rf"\b{_REVEAL_VERB}{S}{W % 3}(?:your|ur){S}{W % 2}{_HIDDEN}?{S}{_PROMPT_NOUN}\b",
    ),
    Rule(
        "injection.prompt_exfiltration",
        "high",
        rf"\b{_REVEAL_VERB}{S}{W % 3}the{S}(?:exact{S}|full{S}|complete{S}|verbatim{S})?{_HIDDEN}{S}{_PROMPT_NOUN}{S}"
        r"(?:you|that you|which you|above|given|verbatim|word for word|exactly)",
    ),
    Rule(
        "injection.prompt_exfiltration",
        "high",
        r"\bwhat\W{0,6}(?:is|are|was|were)\W{0,6}your\W{0,6}(?:system|initial|original|hidden|secret|first|exact)"
        r"\W{0,6}(?:prompt|instructions|message|directives|rules)\b",
    ),
    Rule(
        "injection.repeat_above",
        "high",
        rf"\b(?:repeat|print|output|copy|echo|reproduce|rewrite|translate|summari[sz]e){S}{W % 3}(?:everything|all|text|words|"
        rf"content|lines?|instructions?|prompt){S}(?:written{S}|that{S}(?:is|was|came){S})?(?:above|before this|preceding|prior to this)",
    ),
    Rule(
        "injection.repeat_above",
        "high",
        r"\b(?:starting|beginning|begin|start)\W{0,6}with\W{0,6}(?:the\W{0,6})?(?:words?|phrase|text)?\W{0,6}['\"]?you are\b",
    ),
    Rule(
        "injection.prompt_exfiltration",
        "medium",
        r"\b(?:reveal|leak|dump|disclose|exfiltrate|print|output)\W{0,6}(?:your|the|all)?\W{0,6}(?:api[\W_]*keys?|"
        r"passwords?|secrets|credentials|access tokens?|environment variables)\b",
    ),
    # role-play jailbreaks
    Rule(
        "injection.dan",
        "high",
        r"\bdo\W{0,6}anything\W{0,6}now\b|\bdan\W{0,6}(?:mode|prompt|jailbreak|\d+(?:\.\d+)?)\b"
        r"|\b(?:you are|you're|you are now|act as|pretend to be|become|called|named|as|hi|hello|hey)\W{0,6}dan\b",
    ),
    Rule(
        "injection.jailbreak_mode",
        "high",
        rf"\b(?:god|jailbreak|jailbroken|evil|dan|unrestricted|unfiltered|uncensored|unlocked|opposite|chaos|anarchy|"
        rf"no{S}filter|no{S}restrictions?|dude|stan|aim|apophis|mongo tom){S}mode{S}(?:is{S})?(?:enabled|activated|"
        rf"engaged|on|output|response)\b|\bwith{S}developer{S}mode{S}(?:enabled|activated|on)\b|\(developer{S}mode"
        rf"{S}output\)|\bdeveloper{S}mode{S}(?:policies|output|response)\b",
    ),
    Rule(
        "injection.jailbreak_mode",
        "high",
        rf"\b(?:enable|activate|enter|switch to|turn on|unlock|engage|simulate|emulate|pretend (?:to be|you are) in|act as if "
        rf"you are in|you are (?:now )?in|you are now running in|operate in){S}(?:the{S})?(?:god|jailbreak|jailbroken|evil|dan|"
        rf"unrestricted|unfiltered|uncensored|opposite|chaos|anarchy|no{S}filter){S}mode\b",
    ),
    Rule(
        "injection.jailbreak_mode",
        "high",
        rf"\b(?:simulate|emulate|pretend (?:to be|you are) in|act as if you are in|you are (?:now )?in|you are now running in|"
        rf"operate in){S}(?:the{S})?(?:developer|dev|debug|admin|sudo|root|maintenance|test){S}mode\b",
    ),
    Rule(
        "injection.you_are_now",
        "medium",
        rf"\byou{S}are{S}now{S}(?:called|named|going to (?:be|pretend|act)|free|no longer|in charge|(?:an?{S})?{_JAIL_PERSONA})\b"
        rf"|\bfrom{S}now{S}on,?{S}you{S}(?:are|will|must|shall|'ll|should|can|have)\b",
    ),
    Rule(
        "injection.you_are_now",
        "high",
        rf"\byou{S}are{S}no{S}longer{S}(?:an?{S})?(?:bound|restricted|limited|required|constrained|chatgpt|claude|"
        rf"gemini|an ai|a language model|an assistant|assistant|obligated)\b"
        rf"|\byou{S}(?:are|have been){S}(?:now{S})?(?:freed|free|liberated|released|unbound|unleashed){S}(?:from|of)\b",
    ),
    Rule(
        "injection.roleplay_unrestricted",
        "high",
        rf"\b(?:act|behave|respond|answer|pretend|roleplay|role{S}play|play the role|reply|speak){S}(?:as|like|to be|of)"
        rf"{S}{W % 4}{_JAIL_PERSONA}\b",
    ),
    Rule(
        "injection.roleplay_unrestricted",
        "high",
        rf"\b(?:become|turn into|transform into|switch to|you are now|you're now){S}{W % 3}{_JAIL_PERSONA}\b"
        rf"|\b(?:stop|quit|cease){S}being{S}(?:an?{S})?{W % 2}(?:helpful|harmless|honest|ethical|safe|polite|nice|"
        rf"assistant|ai)\b",
    ),
    Rule(
        "injection.roleplay_unrestricted",
        "high",
        rf"\b(?:ai|assistant|model|chatbot|bot|character|persona|entity){S}(?:that|which|who){S}(?:has|have){S}no{S}"
        rf"{W % 2}{_LIMITS}"
        rf"|\b(?:ai|assistant|model|chatbot|bot|character|persona|entity){S}(?:without|free (?:of|from)){S}(?:any{S})?"
        rf"{W % 2}{_LIMITS}",
    ),
    Rule(
        "injection.disable_safety",
        "high",
        rf"\b(?:bypass|disable|remove|lift|turn off|override|circumvent|ignore|evade|break|break free from|escape|"
        rf"abandon|suspend|deactivate){S}(?:all{S}|any{S}|of{S})?(?:your|ur|the ai's|its){S}{W % 2}{_LIMITS}\b",
    ),
    Rule(
        "injection.disable_safety",
        "medium",
        rf"\b(?:without|no|free (?:of|from)|ignoring|regardless of){S}(?:any{S})?(?:ethical|moral|safety|content|openai|"
        rf"anthropic){S}{_LIMITS}\b",
    ),
    Rule(
        "injection.refusal_suppression",
        "medium",
        rf"\b(?:never|do not|don't|must not|mustn't|cannot|can't|will not|won't|are not allowed to){S}(?:ever{S})?"
        rf"(?:refuse|decline|reject|say (?:no|sorry|that you can't)|apologi[sz]e|add (?:any )?(?:warnings|disclaimers)|"
        rf"include (?:any )?(?:warnings|disclaimers)|mention (?:that you are an ai|your (?:guidelines|ethics|policies)))\b"
        rf"|\b(?:must|will|shall){S}(?:always{S})?(?:comply|obey|answer){S}{W % 3}(?:no matter|regardless|without (?:question|"
        rf"exception|hesitation|refusing))",
    ),
    # authority / indirect injection
    Rule(
        "injection.fake_authority",
        "high",
        rf"\b(?:admin|administrator|system|developer|root|sudo|security|emergency|maintenance){S}(?:override|"
        rf"access granted|authori[sz]ation code|unlock code)\b",
    ),
    Rule(
        "injection.fake_authority",
        "medium",
        rf"\b(?:i am|i'm|this is){S}(?:your|the|an?){S}(?:developer|creator|administrator|admin|owner|programmer|operator|"
        rf"system administrator|openai|anthropic){S}{W % 4}(?:authori[sz]e|command|order|instruct|override|allow|permit|grant)",
    ),
    Rule(
        "injection.indirect",
        "high",
        rf"\b(?:note|message|instructions?|attention|important) (?:to|for) (?:the |any )?(?:ai|assistant|llm|language model|"
        rf"chatbot|bot|agent|model)s?\b|\b(?:ai|llm|assistant|agent|language model|model|chatbot)s?{S}(?:reading|processing|"
        rf"summari[sz]ing|parsing|analy[sz]ing){S}(?:this|these)\b|\bif you are an? (?:ai|llm|language model|ai assistant|chatbot|"
        rf"large language model)\b",
    ),
    Rule(
        "injection.decode_and_follow",
        "medium",
        rf"\b(?:decode|decrypt|deobfuscate|translate|convert|unscramble|reverse){S}{W % 5}(?:and|then){S}{W % 1}(?:follow|"
        rf"execute|run|do|obey|perform|carry out|act on|comply with)\b",
    ),
    # prompt-format injection: chat template tokens and fake headers inside user content
    Rule(
        "injection.chat_template",
        "high",
        r"<\|(?:im_start|start_header_id)\|>\s*(?:system|user|assistant|developer)\b|<\|(?:system|user|assistant)\|>"
        r"|<\|(?:im_end|eot_id|end_header_id)\|>\s*(?:<\||\n)",
    ),
    Rule(
        "injection.chat_template",
        "medium",
        r"<\|(?:im_start|im_end|im_sep|endoftext|start_header_id|end_header_id|eot_id|begin_of_text|end_of_text|end|"
        r"eom_id|fim_prefix)\|>",
    ),
    Rule(
        "injection.chat_template",
        "high",
        r"\[/?inst\]|<</?sys>>|<start_of_turn>|<end_of_turn>|<\|?(?:system|assistant)\|?>\s*\n|</?(?:system_?prompt|"
        r"system_?instructions?|sys)>",
    ),
    Rule(
        "injection.fake_header",
        "medium",
        r"(?m)^[ \t>*#=\-\[(<]*(?:system|admin|developer|new instructions?|system (?:prompt|message|override|note|update)|"
        r"instructions? override|assistant instructions?)[ \t*#=\])>]*:",
    ),
    Rule(
        "injection.fake_header",
        "medium",
        r"(?m)^[ \t]*#{2,}[ \t]*(?:instruction|system|new instruction|new task|response|admin)s?\b",
    ),
    Rule(
        "injection.end_of_prompt",
        "high",
        rf"\b(?:end|ignore){S}(?:of{S})?(?:the{S})?(?:system{S}|user{S}|previous{S})?(?:prompt|instructions|input|context)"
        rf"{S}(?:has ended|ends here|above|-{{2,}}|={{2,}}|\]|>)|(?m)^[=\-#*]{{3,}}{S}(?:end|begin|start){S}(?:of{S})?"
        rf"(?:the{S})?(?:system|user|new|admin)?{S}(?:prompt|instructions|input|context|message)",
    ),
    Rule(
        "injection.end_of_prompt",
        "medium",
        rf"\b(?:the{S})?(?:above|previous|preceding|prior){S}(?:instructions?|prompt|text|message){S}(?:was|were|is|are){S}"
        rf"(?:just{S}|only{S})?(?:a{S})?(?:test|joke|fake|false|wrong|outdated|void|invalid|cancel+ed|obsolete)\b",
    ),
)
