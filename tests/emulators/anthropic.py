"""An Anthropic Messages API emulator (`POST /v1/messages`), written from Anthropic's public API reference.

It validates what the real API validates that a translator can get wrong: the key (`x-api-key`, or
the bearer token the 2026 SDKs send) and the `anthropic-version` header (2023-06-01, or 2026-10-21,
which also refuses `temperature` / `top_p` / `top_k` and document blocks in assistant turns);
required `model`, `max_tokens` and `messages`; unknown fields at the top
level, in tools and in tool_choice ("Extra inputs are not permitted"); roles user/assistant only (no
"system" role); non-empty content except a final assistant prefill, non-empty text blocks, no trailing
whitespace at the end of a prefill; block types and image/document sources (base64 media types, url);
tool ids and names; tool_result blocks only right after the assistant turn that holds their tool_use
ids, every tool_use answered in the next turn, results ahead of other blocks in their turn; sampling
ranges; tool_choice against the tools offered; extended-thinking rules (budget, no forced tool use, no
temperature/top_k, and the last tool-using assistant turn must start with its thinking block).
Consecutive turns of one role are merged before the turn rules apply, as the real API does.

Everything the API documents is accepted, and everything else refused, so a gateway that drops or
invents a field is caught: every top-level parameter (the beta-only ones — `mcp_servers`,
`context_management`, … — only with an `anthropic-beta` header naming their beta), every content block
type with its own keys (`cache_control` wherever the API allows it, `citations`, `search_result`,
documents with text / content / url / file sources, server-tool and MCP blocks, `container_upload`),
server tools next to custom tools. The last request's path, headers, raw bytes and JSON are recorded
(`app.state.requests`).

Answers are deterministic: an echo of the last user text; `tool_use` blocks when tools are offered and
the prompt mentions the weather (two parallel calls when it also says "both", unless parallel use is
disabled), a forced tool's input built from its schema, a summary after tool results; a web search
(`server_tool_use`, `web_search_tool_result`, a cited text block, `usage.server_tool_use`) when the web
search tool is offered and the prompt says "search"; citations of the first document that enables them;
stop sequences, max_tokens truncation, thinking blocks when thinking is on, and cache reads/writes
(with the 5m / 1h split) reported when any block or the request carries `cache_control`. Streams use the
real SSE event sequence with a ping, text split over several deltas (citations as `citations_delta`),
tool input split over several `input_json_delta` events. Model names simulate failures: `err-<status>`
answers that status with Anthropic's error JSON (429 with Retry-After, 529 overloaded), `err-context` a
prompt-too-long 400, `err-stream` an overloaded `error` event mid-stream, `refuse` a refusal,
`slow-<ms>` a delay.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

API_KEY = "sk-ant-emulator"
VERSIONS = {"2023-06-01", "2023-01-01", "2026-10-21"}
IMAGE_TYPES = {"image/jpeg", "image/png", "image/gif", "image/webp"}
_ETYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_TOP_KEYS = {"model", "messages", "max_tokens", "system", "metadata", "stop_sequences", "stream", "temperature"}
_TOP_KEYS |= {"top_p", "top_k", "tools", "tool_choice", "thinking", "service_tier", "output_config", "container"}
_TOP_KEYS |= {"cache_control", "inference_geo", "speed", "diagnostics", "user_profile_id", "workspace_id"}
# beta-only parameters → the beta (header value prefix) that enables them
_BETA_KEYS = {
    "mcp_servers": "mcp-client-",
    "context_management": "context-management-",
    "compaction": "compact-",
    "fallbacks": "",
    "fallback_credit_token": "",
    "billing_policy": "",
    "thread": "",
}
_RESULT_KEYS = {"type", "tool_use_id", "content", "cache_control"}
# every content block type with the keys it may carry
_BLOCK_KEYS: dict[str, set[str]] = {
    "text": {"type", "text", "cache_control", "citations"},
    "image": {"type", "source", "cache_control", "transformations"},
    "document": {"type", "source", "cache_control", "citations", "context", "title"},
    "search_result": {"type", "source", "title", "content", "cache_control", "citations"},
    "thinking": {"type", "thinking", "signature"},
    "redacted_thinking": {"type", "data"},
    "tool_use": {"type", "id", "name", "input", "cache_control", "caller", "toolset_name"},
    "tool_result": {"type", "tool_use_id", "content", "is_error", "cache_control", "toolset_name"},
    "server_tool_use": {"type", "id", "name", "input", "cache_control", "caller"},
    "web_search_tool_result": _RESULT_KEYS | {"caller"},
    "web_fetch_tool_result": _RESULT_KEYS | {"caller"},
    "code_execution_tool_result": _RESULT_KEYS,
    "bash_code_execution_tool_result": _RESULT_KEYS,
    "text_editor_code_execution_tool_result": _RESULT_KEYS,
    "tool_search_tool_result": _RESULT_KEYS,
    "container_upload": {"type", "file_id", "cache_control"},
    "mcp_tool_use": {"type", "id", "name", "server_name", "input", "cache_control"},
    "mcp_tool_result": {"type", "tool_use_id", "content", "is_error", "cache_control"},
}
_BLOCK_TYPES = tuple(_BLOCK_KEYS)
_ASSISTANT_ONLY = {"tool_use", "server_tool_use", "mcp_tool_use", "thinking", "redacted_thinking"}
_ASSISTANT_ONLY |= {t for t in _BLOCK_KEYS if t.endswith("_tool_result") and t != "mcp_tool_result"}
_TOOL_KEYS = {"name", "description", "input_schema", "cache_control", "type", "strict", "input_examples"}
_TOOL_KEYS |= {"defer_loading", "allowed_callers", "eager_input_streaming"}
# server tools: versioned types, with the keys any of them may carry
_SERVER_TOOL = re.compile(
    r"^((web_search|web_fetch|code_execution|bash|text_editor|memory|computer)_\d{8}"
    r"|tool_search_tool_(bm25|regex)(_\d{8})?|(browser|computer)_toolset_\d{8}|mcp_toolset)$"
)
_SERVER_TOOL_KEYS = {"type", "name", "cache_control", "allowed_callers", "defer_loading", "strict", "max_uses"}
_SERVER_TOOL_KEYS |= {"allowed_domains", "blocked_domains", "user_location", "citations", "max_content_tokens"}
_SERVER_TOOL_KEYS |= {"url_sources", "use_cache", "response_inclusion", "input_examples", "max_characters"}
_SERVER_TOOL_KEYS |= {"display_width_px", "display_height_px", "display_number", "configs", "mcp_server_name"}
_SERVER_TOOL_KEYS |= {"default_config"}
_ID = re.compile(r"^[a-zA-Z0-9_-]+$")
_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


class _Bad(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _request_id(seed: str) -> str:
    return "req_emu" + hashlib.sha256(seed.encode()).hexdigest()[:20]


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"type": "error", "error": {"type": _ETYPES.get(status, "api_error"), "message": message}}
    body["request_id"] = _request_id(message)
    return JSONResponse(body, status_code=status, headers=headers)


# --- validation ------------------------------------------------------------------------------------


def _check_source(src: Any, where: str, kinds: set[str]) -> None:
    if not isinstance(src, dict) or src.get("type") not in kinds:
        raise _Bad(f"{where}.source.type: Input should be one of {sorted(kinds)}")
    if src["type"] == "file" and not isinstance(src.get("file_id"), str):
        raise _Bad(f"{where}.source.file_id: Field required")
    if src["type"] == "content" and not isinstance(src.get("content"), list | str):
        raise _Bad(f"{where}.source.content: Field required")
    if src["type"] == "text" and not isinstance(src.get("data"), str):
        raise _Bad(f"{where}.source.data: Field required")
    if src["type"] == "base64":
        if not isinstance(src.get("data"), str) or not src["data"]:
            raise _Bad(f"{where}.source.data: Field required")
        if "media_type" not in src:
            raise _Bad(f"{where}.source.media_type: Field required")
    elif src["type"] == "url" and not str(src.get("url", "")).startswith(("http://", "https://")):
        raise _Bad(f"{where}.source.url: Input should be a valid URL")


def _check_cache_control(value: Any, where: str) -> None:
    if not isinstance(value, dict) or value.get("type") != "ephemeral":
        raise _Bad(f"{where}.cache_control.type: Input should be 'ephemeral'")
    if value.get("ttl") not in (None, "5m", "1h") or set(value) - {"type", "ttl"}:
        raise _Bad(f"{where}.cache_control.ttl: Input should be '5m' or '1h'")


def _check_block(block: Any, where: str, role: str) -> None:
    if not isinstance(block, dict) or block.get("type") not in _BLOCK_TYPES:
        tag = block.get("type") if isinstance(block, dict) else block
        raise _Bad(
            f"{where}: Input tag '{tag}' found using 'type' does not match any of the expected tags: "
            + ", ".join(f"'{t}'" for t in _BLOCK_TYPES)
        )
    kind = block["type"]
    extra = set(block) - _BLOCK_KEYS[kind]
    if extra:
        raise _Bad(f"{where}.{kind}.{sorted(extra)[0]}: Extra inputs are not permitted")
    if "cache_control" in block:
        _check_cache_control(block["cache_control"], where)
    if kind in _ASSISTANT_ONLY and role != "assistant":
        raise _Bad(f"{where}: {kind} blocks can only appear in assistant messages")
    if kind in ("mcp_tool_result", "container_upload", "search_result") and role == "assistant":
        raise _Bad(f"{where}: {kind} blocks can only appear in user messages")
    if kind == "text":
        if not isinstance(block.get("text"), str):
            raise _Bad(f"{where}.text: Field required")
        if not block["text"]:
            raise _Bad("messages: text content blocks must be non-empty")
        if "citations" in block and not isinstance(block["citations"], list | type(None)):
            raise _Bad(f"{where}.citations: Input should be a valid list")
    elif kind == "image":
        _check_source(block.get("source"), where, {"base64", "url", "file"})
        if block["source"]["type"] == "base64" and block["source"]["media_type"] not in IMAGE_TYPES:
            raise _Bad(f"{where}.source.base64.media_type: Input should be " + ", ".join(sorted(IMAGE_TYPES)))
    elif kind == "document":
        _check_source(block.get("source"), where, {"base64", "url", "text", "content", "file"})
        if block["source"]["type"] == "base64" and block["source"]["media_type"] != "application/pdf":
            raise _Bad(f"{where}.source.base64.media_type: Input should be 'application/pdf'")
        if "citations" in block and not isinstance(block["citations"], dict | type(None)):
            raise _Bad(f"{where}.citations: Input should be a valid dictionary")
    elif kind == "search_result":
        if not isinstance(block.get("source"), str) or not isinstance(block.get("title"), str):
            raise _Bad(f"{where}.source: Field required")
        inner = block.get("content")
        if not isinstance(inner, list) or not all(isinstance(b, dict) and b.get("type") == "text" for b in inner):
            raise _Bad(f"{where}.content: Input should be a list of text blocks")
        for k, sub in enumerate(inner):
            _check_block(sub, f"{where}.content.{k}", role)
    elif kind in ("server_tool_use", "mcp_tool_use"):
        if not isinstance(block.get("id"), str) or not _ID.match(block["id"]) or not isinstance(block.get("name"), str):
            raise _Bad(f"{where}.id: String should match pattern '^[a-zA-Z0-9_-]+$'")
        if not isinstance(block.get("input"), dict):
            raise _Bad(f"{where}.input: Input should be a valid dictionary")
    elif kind.endswith("_tool_result") and kind != "tool_result":
        if not isinstance(block.get("tool_use_id"), str) or "content" not in block:
            raise _Bad(f"{where}.tool_use_id: Field required")
    elif kind == "container_upload" and not isinstance(block.get("file_id"), str):
        raise _Bad(f"{where}.file_id: Field required")
    elif kind == "tool_use":
        if role != "assistant":
            raise _Bad(f"{where}: tool_use blocks can only appear in assistant messages")
        if not isinstance(block.get("id"), str) or not _ID.match(block["id"]):
            raise _Bad(f"{where}.id: String should match pattern '^[a-zA-Z0-9_-]+$'")
        if not isinstance(block.get("name"), str) or not _NAME.match(block["name"]):
            raise _Bad(f"{where}.name: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'")
        if not isinstance(block.get("input"), dict):
            raise _Bad(f"{where}.input: Input should be a valid dictionary")
    elif kind == "tool_result":
        if role != "user":
            raise _Bad(f"{where}: tool_result blocks can only appear in user messages")
        if not isinstance(block.get("tool_use_id"), str) or not _ID.match(block["tool_use_id"]):
            raise _Bad(f"{where}.tool_use_id: String should match pattern '^[a-zA-Z0-9_-]+$'")
        inner = block.get("content")
        if isinstance(inner, list):
            for k, sub in enumerate(inner):
                if not isinstance(sub, dict) or sub.get("type") not in {"text", "image", "document", "search_result"}:
                    raise _Bad(
                        f"{where}.content.{k}: tool_result content must be text, image, document or search_result"
                    )
                _check_block(sub, f"{where}.content.{k}", "user")
        elif inner is not None and not isinstance(inner, str):
            raise _Bad(f"{where}.content: Input should be a valid string or list")
    elif kind == "thinking" and (not isinstance(block.get("signature"), str) or not block["signature"]):
        raise _Bad(f"{where}.signature: Field required")


def _merged_turns(messages: Any) -> list[tuple[int, str, list[dict[str, Any]]]]:
    """(index of first message, role, blocks) per turn, after merging consecutive same-role messages."""
    if not isinstance(messages, list):
        raise _Bad("messages: Input should be a valid list")
    if not messages:
        raise _Bad("messages: at least one message is required")
    turns: list[tuple[int, str, list[dict[str, Any]]]] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise _Bad(f"messages.{i}: Input should be a valid dictionary")
        extra = set(m) - {"role", "content"}
        if extra:
            raise _Bad(f"messages.{i}.{sorted(extra)[0]}: Extra inputs are not permitted")
        role = m.get("role")
        if role == "system":
            raise _Bad(
                'messages: Unexpected role "system". The Messages API accepts a top-level `system` parameter, '
                'not "system" as an input message role.'
            )
        if role not in {"user", "assistant"}:
            raise _Bad(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        content = m.get("content")
        if isinstance(content, str):
            blocks: list[dict[str, Any]] = [{"type": "text", "text": content}] if content else []
        elif isinstance(content, list):
            blocks = content
        else:
            raise _Bad(f"messages.{i}.content: Input should be a valid string or list")
        final = i == len(messages) - 1 and role == "assistant"
        if not blocks and not final:
            raise _Bad(
                f"messages.{i}: all messages must have non-empty content except for the optional final assistant "
                "message"
            )
        for j, block in enumerate(blocks):
            _check_block(block, f"messages.{i}.content.{j}", role)
        if turns and turns[-1][1] == role:
            turns[-1][2].extend(blocks)
        else:
            turns.append((i, role, list(blocks)))
    return turns


def _check_turns(turns: list[tuple[int, str, list[dict[str, Any]]]], thinking: bool) -> None:
    for t, (i, role, blocks) in enumerate(turns):
        if role == "assistant":
            ids = [b["id"] for b in blocks if b.get("type") == "tool_use"]
            if not ids:
                continue
            nxt = turns[t + 1] if t + 1 < len(turns) else None
            answered = {b.get("tool_use_id") for b in nxt[2] if b.get("type") == "tool_result"} if nxt else set()
            missing = [x for x in ids if x not in answered]
            if missing:
                raise _Bad(
                    f"messages.{i}: `tool_use` ids were found without `tool_result` blocks immediately after: "
                    f"{', '.join(missing)}. Each `tool_use` block must have a corresponding `tool_result` block "
                    "in the next message."
                )
            if thinking and t == max(k for k, turn in enumerate(turns) if turn[1] == "assistant"):
                if blocks[0].get("type") not in {"thinking", "redacted_thinking"}:
                    raise _Bad(
                        f"messages.{i}.content.0.type: Expected `thinking` or `redacted_thinking`, but found "
                        f"`{blocks[0].get('type')}`. When `thinking` is enabled, a final `assistant` message must "
                        "start with a thinking block (preceeding the lastmost set of `tool_use` and `tool_result` "
                        "blocks)."
                    )
        else:
            prev = turns[t - 1] if t > 0 else None
            offered = {b.get("id") for b in prev[2] if b.get("type") == "tool_use"} if prev else set()
            seen_other = False
            for j, b in enumerate(blocks):
                if b.get("type") != "tool_result":
                    seen_other = True
                    continue
                if b.get("tool_use_id") not in offered:
                    raise _Bad(
                        f"messages.{i}.content.{j}: unexpected `tool_use_id` found in `tool_result` blocks: "
                        f"{b.get('tool_use_id')}. Each `tool_result` block must have a corresponding `tool_use` "
                        "block in the previous message."
                    )
                if seen_other:
                    raise _Bad(
                        f"messages.{i}: `tool_result` blocks must come first in the content of a user message, "
                        "before any other blocks."
                    )
    last = turns[-1]
    if last[1] == "assistant" and last[2]:
        tail = last[2][-1]
        if tail.get("type") == "text" and tail["text"] != tail["text"].rstrip():
            raise _Bad("messages: final assistant content cannot end with trailing whitespace")


def _check_tools(body: dict[str, Any], thinking: bool) -> list[dict[str, Any]]:
    tools = body.get("tools")
    if tools is None:
        tools = []
    if not isinstance(tools, list):
        raise _Bad("tools: Input should be a valid list")
    names: set[str] = set()
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise _Bad(f"tools.{i}: Input should be a valid dictionary")
        if tool.get("type") not in (None, "custom"):
            _check_server_tool(tool, i, names)
            continue
        extra = set(tool) - _TOOL_KEYS
        if extra:
            raise _Bad(f"tools.{i}.custom.{sorted(extra)[0]}: Extra inputs are not permitted")
        if not isinstance(tool.get("name"), str) or not _NAME.match(tool["name"]):
            raise _Bad(f"tools.{i}.custom.name: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'")
        schema = tool.get("input_schema")
        if not isinstance(schema, dict):
            raise _Bad(f"tools.{i}.custom.input_schema: Field required")
        if schema.get("type") != "object":
            raise _Bad(f"tools.{i}.custom.input_schema.type: Input should be 'object'")
        if tool["name"] in names:
            raise _Bad("tools: Tool names must be unique.")
        names.add(tool["name"])
    choice = body.get("tool_choice")
    if choice is not None:
        if not isinstance(choice, dict) or choice.get("type") not in {"auto", "any", "tool", "none"}:
            raise _Bad("tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'")
        allowed = {"type", "disable_parallel_tool_use"} | ({"name"} if choice["type"] == "tool" else set())
        extra = set(choice) - allowed
        if choice["type"] == "none":
            extra.discard("disable_parallel_tool_use")
        if extra:
            raise _Bad(f"tool_choice.{choice['type']}.{sorted(extra)[0]}: Extra inputs are not permitted")
        if choice["type"] == "tool" and choice.get("name") not in names:
            raise _Bad(f"tool_choice.tool.name: Tool '{choice.get('name')}' not found in the provided tools")
        if thinking and choice["type"] in {"any", "tool"}:
            raise _Bad("Thinking may not be enabled when tool_choice forces tool use.")
    return tools


def _check_server_tool(tool: dict[str, Any], i: int, names: set[str]) -> None:
    kind = tool["type"]
    if not isinstance(kind, str) or not _SERVER_TOOL.match(kind):
        raise _Bad(f"tools.{i}: Input tag '{kind}' found using 'type' does not match any of the expected tags")
    extra = set(tool) - _SERVER_TOOL_KEYS
    if extra:
        raise _Bad(f"tools.{i}.{kind}.{sorted(extra)[0]}: Extra inputs are not permitted")
    if "cache_control" in tool:
        _check_cache_control(tool["cache_control"], f"tools.{i}")
    name = tool.get("name") or tool.get("mcp_server_name") or kind
    if name in names:
        raise _Bad("tools: Tool names must be unique.")
    names.add(name)


def _check_2026(body: Any) -> None:
    """API version 2026-10-21 removed the sampling parameters and document blocks in assistant turns."""
    if not isinstance(body, dict):
        return
    for key in ("temperature", "top_p", "top_k"):
        if key in body:
            raise _Bad(f"{key}: this parameter is not supported in API version 2026-10-21")
    for i, m in enumerate(body.get("messages") or []):
        if isinstance(m, dict) and m.get("role") == "assistant" and isinstance(m.get("content"), list):
            for j, block in enumerate(m["content"]):
                if isinstance(block, dict) and block.get("type") == "document":
                    raise _Bad(f"messages.{i}.content.{j}: document blocks are not allowed in assistant messages")


def validate(
    body: Any, betas: str = ""
) -> tuple[list[tuple[int, str, list[dict[str, Any]]]], list[dict[str, Any]], bool]:
    """Raise _Bad the way the real API answers a malformed request; (turns, tools, thinking) otherwise.
    `betas` is the `anthropic-beta` header: beta-only parameters need theirs."""
    if not isinstance(body, dict):
        raise _Bad("Input should be a valid dictionary")
    enabled = [b.strip() for b in betas.split(",") if b.strip()]
    extra = sorted(
        k for k in set(body) - _TOP_KEYS if k not in _BETA_KEYS or not any(b.startswith(_BETA_KEYS[k]) for b in enabled)
    )
    if extra:
        raise _Bad(f"{extra[0]}: Extra inputs are not permitted")
    if "cache_control" in body:
        _check_cache_control(body["cache_control"], "")
    for key in ("model", "max_tokens", "messages"):
        if key not in body:
            raise _Bad(f"{key}: Field required")
    if not isinstance(body["model"], str) or not body["model"]:
        raise _Bad("model: Input should be a valid string")
    max_tokens = body["max_tokens"]
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
        raise _Bad("max_tokens: Input should be a valid integer")
    if max_tokens < 1:
        raise _Bad("max_tokens: Input should be greater than or equal to 1")
    for key, hi in (("temperature", 1.0), ("top_p", 1.0)):
        value = body.get(key)
        if value is not None and (not isinstance(value, int | float) or not 0.0 <= value <= hi):
            raise _Bad(f"{key}: Input should be less than or equal to {hi:g} and greater than or equal to 0")
    top_k = body.get("top_k")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 0):
        raise _Bad("top_k: Input should be greater than or equal to 0")
    stops = body.get("stop_sequences")
    if stops is not None and (not isinstance(stops, list) or not all(isinstance(s, str) for s in stops)):
        raise _Bad("stop_sequences: Input should be a valid list of strings")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise _Bad("stream: Input should be a valid boolean")
    system = body.get("system")
    if isinstance(system, list):
        for j, block in enumerate(system):
            if not isinstance(block, dict) or block.get("type") != "text":
                raise _Bad(f"system.{j}.type: Input should be 'text'")
            _check_block(block, f"system.{j}", "system")
    elif system is not None and not isinstance(system, str):
        raise _Bad("system: Input should be a valid string or list")
    metadata = body.get("metadata")
    if metadata is not None and (not isinstance(metadata, dict) or set(metadata) - {"user_id"}):
        raise _Bad("metadata: only 'user_id' is permitted")
    thinking_cfg = body.get("thinking")
    thinking = False
    if thinking_cfg is not None:
        kind = thinking_cfg.get("type") if isinstance(thinking_cfg, dict) else None
        if kind not in {"enabled", "disabled", "adaptive"}:
            raise _Bad("thinking.type: Input should be 'enabled', 'disabled' or 'adaptive'")
        if kind == "enabled":
            budget = thinking_cfg.get("budget_tokens")
            if not isinstance(budget, int) or budget < 1024:
                raise _Bad("thinking.enabled.budget_tokens: Input should be greater than or equal to 1024")
            if budget >= max_tokens:
                raise _Bad("`max_tokens` must be greater than `thinking.budget_tokens`.")
        thinking = kind != "disabled"
        if kind == "adaptive" and set(thinking_cfg) - {"type", "display"}:
            raise _Bad("thinking.adaptive: Extra inputs are not permitted")
        if thinking and body.get("temperature") not in (None, 1, 1.0):
            raise _Bad("`temperature` may only be set to 1 when thinking is enabled.")
        if thinking and body.get("top_k") is not None:
            raise _Bad("`top_k` is not supported when thinking is enabled.")
    turns = _merged_turns(body["messages"])
    _check_turns(turns, thinking)
    return turns, _check_tools(body, thinking), thinking


# --- deterministic answers -------------------------------------------------------------------------


def _words(text: str) -> int:
    return len(text.split())


def _sample(schema: Any, name: str = "") -> Any:
    """A value that satisfies a simple JSON schema (enough for the schemas tests use)."""
    if not isinstance(schema, dict):
        return "emulated"
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if schema.get("enum"):
        return schema["enum"][0]
    if kind == "object" or "properties" in schema:
        props = schema.get("properties") or {}
        return {k: _sample(v, k) for k, v in props.items()}
    if kind == "array":
        return [_sample(schema.get("items"), name)]
    if kind == "integer":
        return 42
    if kind == "number":
        return 21.5
    if kind == "boolean":
        return True
    return "Paris" if name == "city" else "emulated"


def _web_search(prompt: str, digest: str) -> list[dict[str, Any]]:
    """A server-side web search, its result, and an answer citing it."""
    use_id = f"srvtoolu_emu{digest[:12]}"
    url, title = "https://example.com/emulated", "Emulated result for " + " ".join(prompt.split()[:5])
    found = {"type": "web_search_result", "url": url, "title": title, "encrypted_content": "ZW11", "page_age": None}
    cite = {
        "type": "web_search_result_location",
        "url": url,
        "title": title,
        "encrypted_index": "ZW0=",
        "cited_text": title,
    }
    return [
        {"type": "server_tool_use", "id": use_id, "name": "web_search", "input": {"query": prompt[:60]}},
        {"type": "web_search_tool_result", "tool_use_id": use_id, "content": [found]},
        {"type": "text", "text": "According to the search, it is emulated.", "citations": [cite]},
    ]


def _citations(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A citation of the first text document that enables citations, if any."""
    docs = [b for b in blocks if b.get("type") == "document"]
    for index, doc in enumerate(docs):
        if (doc.get("citations") or {}).get("enabled") and doc["source"]["type"] == "text":
            text = doc["source"]["data"][:30]
            return [
                {
                    "type": "char_location",
                    "cited_text": text,
                    "document_index": index,
                    "document_title": doc.get("title"),
                    "start_char_index": 0,
                    "end_char_index": len(text),
                }
            ]
    return []


def _answer(body: dict[str, Any], turns: list[Any], tools: list[dict[str, Any]], thinking: bool) -> dict[str, Any]:
    """The assistant message (content, stop_reason, stop_sequence) for a validated request."""
    last_user = next((t for t in reversed(turns) if t[1] == "user"), None)
    blocks = last_user[2] if last_user else []
    prompt = " ".join(b["text"] for b in blocks if b.get("type") == "text")
    results = [b for b in blocks if b.get("type") == "tool_result"]
    choice = body.get("tool_choice") or {"type": "auto"}
    seed = json.dumps({k: v for k, v in body.items() if k != "stream"}, sort_keys=True)  # same ids streamed or not
    digest = hashlib.sha256(seed.encode()).hexdigest()
    searches = any(str(t.get("type", "")).startswith("web_search_") for t in tools)
    tools = [t for t in tools if t.get("type") in (None, "custom")]
    content: list[dict[str, Any]] = []
    if thinking:
        thought = f"The user wrote {_words(prompt)} words; I will answer plainly."
        content.append(
            {"type": "thinking", "thinking": thought, "signature": base64.b64encode(digest.encode()).decode()}
        )
    calls: list[dict[str, Any]] = []
    if tools and choice["type"] in {"tool", "any"}:
        tool = next((t for t in tools if t["name"] == choice.get("name")), tools[0])
        if choice["type"] == "any" and "weather" in prompt.lower():
            tool = next((t for t in tools if "weather" in t["name"]), tool)
        calls.append({"name": tool["name"], "input": _sample(tool["input_schema"])})
    elif tools and choice["type"] == "auto" and not results and "weather" in prompt.lower():
        tool = next((t for t in tools if "weather" in t["name"]), tools[0])
        cities = ["Paris", "Tokyo"] if "both" in prompt.lower() else ["Paris"]
        if choice.get("disable_parallel_tool_use"):
            cities = cities[:1]
        calls += [{"name": tool["name"], "input": {"city": c}} for c in cities]
    if not calls and searches and not results and "search" in prompt.lower():
        return {"content": content + _web_search(prompt, digest), "stop_reason": "end_turn", "stop_sequence": None}
    if calls:
        if not thinking and choice["type"] == "auto":
            content.append({"type": "text", "text": "Let me look that up."})
        for k, call in enumerate(calls):
            content.append({"type": "tool_use", "id": f"toolu_emu{digest[:12]}{k}", **call})
        return {"content": content, "stop_reason": "tool_use", "stop_sequence": None}
    if results:
        summary = []
        for r in results:
            inner = r.get("content")
            text = inner if isinstance(inner, str) else " ".join(b.get("text", "") for b in inner or [])
            summary.append(text)
        text = "Based on the tool results: " + "; ".join(summary)
    elif body["model"] == "refuse":
        content.append({"type": "text", "text": "I can't help with that."})
        return {"content": content, "stop_reason": "refusal", "stop_sequence": None}
    else:
        text = "Emulated Claude reply to: " + " ".join(prompt.split()[:20])
    stop_reason, stop_sequence = "end_turn", None
    for seq in body.get("stop_sequences") or []:
        at = text.find(seq)
        if at >= 0:
            text, stop_reason, stop_sequence = text[:at], "stop_sequence", seq
            break
    words = text.split(" ")
    if len(words) > body["max_tokens"]:
        text, stop_reason, stop_sequence = " ".join(words[: body["max_tokens"]]), "max_tokens", None
    if text:
        cited = _citations(blocks)
        content.append({"type": "text", "text": text, "citations": cited} if cited else {"type": "text", "text": text})
    return {"content": content, "stop_reason": stop_reason, "stop_sequence": stop_sequence}


def _usage(body: dict[str, Any], content: list[dict[str, Any]]) -> dict[str, Any]:
    raw = json.dumps([body.get("system"), body["messages"], body.get("tools"), body.get("cache_control")])
    total = max(4, _words(raw.replace('"', " ")))
    read = creation = 0
    if '"cache_control"' in raw or body.get("cache_control"):
        read, creation = total // 2, total // 4
    hour = '"ttl": "1h"' in raw
    out = 0
    for block in content:
        if block["type"] == "text":
            out += _words(block["text"])
        elif block["type"] == "thinking":
            out += _words(block["thinking"])
        elif block["type"] in ("tool_use", "server_tool_use"):
            out += len(json.dumps(block["input"])) // 4 + 5
    usage: dict[str, Any] = {
        "input_tokens": total - read - creation,
        "cache_creation_input_tokens": creation,
        "cache_read_input_tokens": read,
        "cache_creation": {
            "ephemeral_5m_input_tokens": 0 if hour else creation,
            "ephemeral_1h_input_tokens": creation if hour else 0,
        },
        "output_tokens": max(out, 1),
        "service_tier": "standard",
    }
    searches = sum(1 for block in content if block["type"] == "server_tool_use")
    if searches:
        usage["server_tool_use"] = {"web_search_requests": searches}
    return usage


# --- SSE -------------------------------------------------------------------------------------------


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def _block_start(index: int, block: dict[str, Any]) -> bytes:
    return _sse("content_block_start", {"type": "content_block_start", "index": index, "content_block": block})


def _pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


async def _events(message: dict[str, Any], fail: bool) -> AsyncIterator[bytes]:
    usage = message["usage"]
    start = {**message, "content": [], "stop_reason": None, "stop_sequence": None}
    start["usage"] = {**usage, "output_tokens": 1}
    yield _sse("message_start", {"type": "message_start", "message": start})
    yield _sse("ping", {"type": "ping"})
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            yield _block_start(index, {"type": "text", "text": ""})
            for citation in block.get("citations") or []:
                delta = {"type": "citations_delta", "citation": citation}
                yield _sse("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
            words = block["text"].split(" ")
            for k in range(0, len(words), 2):
                piece = " ".join(words[k : k + 2]) + (" " if k + 2 < len(words) else "")
                delta = {"type": "text_delta", "text": piece}
                yield _sse("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
                if fail and k >= 2:
                    err = {"type": "overloaded_error", "message": "Overloaded"}
                    yield _sse("error", {"type": "error", "error": err, "request_id": _request_id("stream")})
                    return
        elif block["type"] == "thinking":
            yield _block_start(index, {"type": "thinking", "thinking": "", "signature": ""})
            for piece in _pieces(block["thinking"], 16):
                delta = {"type": "thinking_delta", "thinking": piece}
                yield _sse("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
            delta = {"type": "signature_delta", "signature": block["signature"]}
            yield _sse("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
        elif block["type"].endswith("_tool_result"):
            yield _block_start(index, block)  # a server tool's result arrives whole
        else:
            start = {"type": block["type"], "id": block["id"], "name": block["name"], "input": {}}
            yield _block_start(index, start)
            for piece in ["", *_pieces(json.dumps(block["input"]), 7)]:
                delta = {"type": "input_json_delta", "partial_json": piece}
                yield _sse("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
        yield _sse("content_block_stop", {"type": "content_block_stop", "index": index})
    delta = {"stop_reason": message["stop_reason"], "stop_sequence": message["stop_sequence"]}
    final = {
        "input_tokens": usage["input_tokens"],
        "cache_creation_input_tokens": usage["cache_creation_input_tokens"],
        "cache_read_input_tokens": usage["cache_read_input_tokens"],
        "output_tokens": usage["output_tokens"],
    }
    if "server_tool_use" in usage:
        final["server_tool_use"] = usage["server_tool_use"]
    yield _sse("message_delta", {"type": "message_delta", "delta": delta, "usage": final})
    yield _sse("message_stop", {"type": "message_stop"})


# --- the app ---------------------------------------------------------------------------------------


def create_app() -> Starlette:
    async def messages(request: Request) -> Response:
        raw = await request.body()
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        request.app.state.requests.append({"path": request.url.path, "headers": headers, "body": body, "raw": raw})
        bearer = headers.get("authorization", "")
        key = headers.get("x-api-key") or (bearer[7:] if bearer.startswith("Bearer ") else None)
        if not key:
            return error_response(401, "x-api-key header is required")
        if key != API_KEY:
            return error_response(401, "invalid x-api-key")
        version = headers.get("anthropic-version")
        if not version:
            return error_response(400, "anthropic-version: header is required")
        if version not in VERSIONS:
            return error_response(400, f"anthropic-version: invalid version '{version}'")
        if body is None:
            return error_response(400, "There was an error parsing the body of the request: invalid JSON")
        try:
            if version >= "2026-10-21":
                _check_2026(body)
            turns, tools, thinking = validate(body, headers.get("anthropic-beta", ""))
        except _Bad as bad:
            return error_response(bad.status, bad.message)
        model = body["model"]
        if model.startswith("err-") and model[4:].isdigit():
            status = int(model[4:])
            extra = {"retry-after": "7", "anthropic-ratelimit-requests-remaining": "0"} if status == 429 else None
            messages_ = {529: "Overloaded", 429: "Number of request tokens has exceeded your per-minute rate limit"}
            return error_response(status, messages_.get(status, f"emulated error {status}"), extra)
        if model == "err-context":
            return error_response(400, "prompt is too long: 215023 tokens > 200000 maximum")
        if model.startswith("slow-"):
            await asyncio.sleep(int(model[5:]) / 1000)
        answer = _answer(body, turns, tools, thinking)
        digest = hashlib.sha256(raw).hexdigest()
        message = {
            "id": f"msg_emu{digest[:20]}",
            "type": "message",
            "role": "assistant",
            "model": model,
            **answer,
            "usage": _usage(body, answer["content"]),
        }
        response_headers = {"request-id": _request_id(digest)}
        if not body.get("stream"):
            return JSONResponse(message, headers=response_headers)
        return StreamingResponse(
            _events(message, fail=model == "err-stream"), media_type="text/event-stream", headers=response_headers
        )

    app = Starlette(routes=[Route("/v1/messages", messages, methods=["POST"])])
    app.state.requests = []
    return app
