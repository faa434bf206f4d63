"""Token estimates from request text (pure): a conservative guess where no tokenizer's count exists yet.

Used where a count is needed before (or without) the provider's: the usage of a stream the client
abandoned, and the worst-case cost a budget reserves. Four characters a token is the usual rule of
thumb for English with BPE tokenizers; images and audio count a fixed amount per part.
"""

from __future__ import annotations

from shared.schemas.openai import ChatCompletionRequest, ContentPart, EmbeddingsRequest

CHARS_PER_TOKEN = 4
BYTES_PER_TOKEN = 3
# per message: role and separators the chat template adds
MESSAGE_OVERHEAD = 4
# a non-text part (image, audio, file) counted at a fixed size: OpenAI bills a high-detail 1024² image ~765
MEDIA_PART_TOKENS = 800


def _text_tokens(text: str, conservative: bool = False) -> int:
    if conservative:
        # a worst case for budgets: three UTF-8 bytes a token covers CJK (a token per character) as well
        # as English (it overstates it by a third; the reservation is settled to the real count)
        return (len(text.encode("utf-8", "surrogatepass")) + BYTES_PER_TOKEN - 1) // BYTES_PER_TOKEN
    return (len(text) + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN


def _part_tokens(part: ContentPart, conservative: bool) -> int:
    if part.text is not None:
        return _text_tokens(part.text, conservative)
    if part.refusal is not None:
        return _text_tokens(part.refusal, conservative)
    return MEDIA_PART_TOKENS


def estimate_prompt_tokens(req: ChatCompletionRequest, *, conservative: bool = False) -> int:
    """The prompt's tokens: a best guess, or (`conservative`) a figure real counts rarely exceed."""
    c = conservative
    total = 0
    for message in req.messages:
        total += MESSAGE_OVERHEAD
        content = message.content
        if isinstance(content, str):
            total += _text_tokens(content, c)
        elif content is not None:
            total += sum(_part_tokens(p, c) for p in content)
        for call in message.tool_calls or []:
            if call.function is not None:
                total += _text_tokens(call.function.name, c) + _text_tokens(call.function.arguments or "", c)
    for tool in req.tools or []:
        if tool.function is not None:
            fn = tool.function
            total += _text_tokens(fn.name, c) + _text_tokens(fn.description or "", c)
            total += _text_tokens(str(fn.parameters or ""), c)
    return max(total, 1)


def embeddings_tokens(req: EmbeddingsRequest) -> int:
    """Input tokens of an embeddings request: token ids count one each, text four characters a token."""
    items = [req.input] if isinstance(req.input, str) else req.input
    total = 0
    for item in items:
        if isinstance(item, str):
            total += _text_tokens(item)
        elif isinstance(item, int):
            total += 1
        else:
            total += len(item)
    return max(total, 1)
