"""The plugin runtime (shared/plugins.py), its config, webhook signing and backoff, and the shipped plugins."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from collections.abc import Mapping

import pytest

from gatehouse.plugins import header_tags, slack_alerts
from services.accounting.webhooks import Webhook, backoff_s, envelope, render
from shared.config import ConfigError, PluginConfig, WebhookConfig, parse_config
from shared.plugins import (
    NOTHING,
    Block,
    BoundHook,
    HookResult,
    HookRunner,
    PluginBlocked,
    PluginError,
    RequestView,
    build_runner,
    load_factory,
)
from shared.webhook_signing import (
    ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    signature,
    signature_v1,
    signed_headers,
    verify,
)

VIEW = RequestView(point="before_guard", request_id="r1", model="m", headers={"x-team": "ml"})


def _runner(point: str, fn: object, *, fail_closed: bool = False, timeout_s: float = 30.0) -> HookRunner:
    """A runner of one hook; its timeout is short only where a test hangs the hook on purpose (a hook that merely
    waits a loop turn must not be cut by a loaded machine's scheduling delay)."""
    return HookRunner({point: [BoundHook("p1", fn, timeout_s, fail_closed)]})  # type: ignore[arg-type]


async def _raises(_view: RequestView) -> HookResult | None:
    raise RuntimeError("boom with a secret inside")


async def _hangs(_view: RequestView) -> HookResult | None:
    await asyncio.sleep(30)
    return None


async def _tags(_view: RequestView) -> HookResult | None:
    return HookResult(tags={"a": "1"}, headers={"x-extra": "yes"})


async def test_no_hooks_means_nothing_to_run() -> None:
    runner = HookRunner({})
    assert runner.empty and not runner.has("before_guard")
    assert await runner.run("before_guard", VIEW) is NOTHING


@pytest.mark.parametrize("hook", [_raises, _hangs])
async def test_fail_open_goes_on_and_counts_the_failure(hook: object) -> None:
    runner = _runner("before_guard", hook, timeout_s=0.05)
    seen: list[str] = []
    runner.observe = lambda plugin, point, outcome, _s: seen.append(f"{plugin}:{point}:{outcome}")
    assert await runner.run("before_guard", VIEW) is NOTHING
    assert seen == ["p1:before_guard:" + ("error" if hook is _raises else "timeout")]


@pytest.mark.parametrize("hook", [_raises, _hangs])
async def test_fail_closed_is_a_503_plugin_error_naming_the_plugin_only(hook: object) -> None:
    runner = _runner("before_guard", hook, fail_closed=True, timeout_s=0.05)
    with pytest.raises(PluginError) as caught:
        await runner.run("before_guard", VIEW)
    info = caught.value.info()
    assert (info.status, info.code, info.type) == (503, "plugin_error", "api_error")
    assert "`p1`" in info.message and "boom" not in info.message and "secret" not in info.message


async def test_a_hook_that_waits_is_resumed_and_its_result_or_error_counts() -> None:
    async def waits(_view: RequestView) -> HookResult:
        await asyncio.sleep(0)
        await asyncio.sleep(0.001)
        return HookResult(tags={"waited": "yes"})

    assert (await _runner("before_guard", waits).run("before_guard", VIEW)).tags == {"waited": "yes"}

    async def waits_then_fails(_view: RequestView) -> HookResult:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(future.set_exception, ValueError("late"))
        await future
        return HookResult()

    with pytest.raises(PluginError):
        await _runner("before_guard", waits_then_fails, fail_closed=True).run("before_guard", VIEW)


async def test_a_hook_cut_at_its_timeout_is_cancelled_inside() -> None:
    cancelled = asyncio.Event()

    async def hangs(_view: RequestView) -> HookResult | None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return None

    assert await _runner("before_guard", hangs, timeout_s=0.05).run("before_guard", VIEW) is NOTHING
    assert cancelled.is_set()


async def test_results_merge_and_later_plugins_win() -> None:
    async def second(_view: RequestView) -> HookResult:
        return HookResult(tags={"a": "2", "b": "3"})

    runner = HookRunner({"before_guard": [BoundHook("p1", _tags, 1, False), BoundHook("p2", second, 1, False)]})
    applied = await runner.run("before_guard", VIEW)
    assert applied.tags == {"a": "2", "b": "3"} and applied.headers == {"x-extra": "yes"}


async def test_a_block_stops_the_request_with_the_plugins_error() -> None:
    async def block(_view: RequestView) -> HookResult:
        return HookResult(block=Block(message="no", status=429, type="rate_limit_error", code="team_paused"))

    with pytest.raises(PluginBlocked) as caught:
        await _runner("before_dispatch", block).run("before_dispatch", VIEW)
    info = caught.value.info()
    assert (info.status, info.type, info.code, info.message) == (429, "rate_limit_error", "team_paused", "no")


@pytest.mark.parametrize(
    ("point", "result"),
    [
        ("after_guard", HookResult(tags={"a": "b"})),  # after_guard may only block
        ("before_dispatch", HookResult(headers={"x-a": "b"})),
        ("after_response", HookResult(block=Block(message="late"))),
        ("on_event", HookResult(tags={"a": "b"})),
        ("before_guard", HookResult(headers={"authorization": "Bearer stolen"})),
        ("before_guard", HookResult(headers={"x-a": "line\r\nbreak"})),
        ("before_guard", HookResult(headers={"bad name": "x"})),
        ("before_guard", HookResult(block=Block(message="x", status=500))),
        ("before_guard", HookResult(block=Block(message=42, status=403))),  # type: ignore[arg-type]
        ("before_guard", HookResult(block=Block(message="x", status="403"))),  # type: ignore[arg-type]
        ("before_guard", HookResult(tags={"a": 1})),  # type: ignore[dict-item]
        ("before_guard", HookResult(tags={f"t{i}": "v" for i in range(40)})),
        ("before_guard", "not a HookResult"),
    ],
)
async def test_a_result_beyond_what_the_point_allows_is_a_failure(point: str, result: object) -> None:
    async def hook(_view: RequestView) -> object:
        return result

    with pytest.raises(PluginError):
        await _runner(point, hook, fail_closed=True).run(point, VIEW)  # type: ignore[arg-type]
    assert await _runner(point, hook).run(point, VIEW) is NOTHING  # type: ignore[arg-type]


class _Plugin:
    def __init__(self, options: Mapping[str, object]) -> None:
        self.options = options

    async def before_guard(self, view: RequestView) -> HookResult:
        return HookResult(tags={"opt": str(self.options.get("x"))})

    def after_guard(self, view: RequestView) -> None:  # not async: refused at load
        return None


def _spec(**fields: object) -> PluginConfig:
    base: dict[str, object] = {"name": "p", "path": "tests.unit.test_plugins:_Plugin", "hooks": ["before_guard"]}
    return PluginConfig.model_validate(base | fields)


async def test_build_runner_loads_by_import_path_and_only_this_stages_hooks() -> None:
    spec = _spec(options={"x": 7}, headers=["X-Team", "Authorization", "cookie"])
    runner = build_runner([spec], frozenset({"before_guard", "after_response"}))
    assert runner.has("before_guard") and runner.headers == frozenset({"x-team"})  # never a credential
    assert (await runner.run("before_guard", VIEW)).tags == {"opt": "7"}
    assert build_runner([spec], frozenset({"before_dispatch"})).empty  # another stage's plugin is not loaded


def test_a_sync_hook_or_a_missing_factory_fails_at_startup() -> None:
    with pytest.raises(ValueError, match="async def after_guard"):
        build_runner([_spec(hooks=["after_guard"])], frozenset({"after_guard"}))
    with pytest.raises(ModuleNotFoundError):
        load_factory("no_such_module_here:create", "")
    with pytest.raises(ValueError, match="entry point"):
        load_factory("", "no-such-plugin")


def test_header_view_shows_only_declared_headers_bounded() -> None:
    runner = HookRunner({}, frozenset({"x-team"}))
    assert runner.header_view({"x-team": "a" * 5000, "authorization": "Bearer k"}) == {"x-team": "a" * 1024}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"path": "", "entry_point": ""}, "exactly one of `path`"),
        ({"entry_point": "x"}, "exactly one of `path`"),
        ({"path": "no-colon"}, "String should match pattern"),
        ({"hooks": ["before_everything"]}, "Input should be"),
        ({"hooks": ["before_guard", "before_guard"]}, "listed twice"),
        ({"fail": "maybe"}, "Input should be 'open' or 'closed'"),
        ({"timeout_ms": 0}, "greater than 0"),
    ],
)
def test_plugin_config_mistakes_fail_with_the_field(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _spec(**fields)


def test_the_config_file_names_the_line_of_a_bad_plugin_or_webhook() -> None:
    text = """
plugins:
  - name: p
    path: a.b:c
    hooks: [before_guard]
    fail: sometimes
webhooks:
  - {name: w, events: [budget_alert]}
"""
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "g.yaml")
    assert "g.yaml:6: plugins.0.fail" in str(caught.value)
    assert "g.yaml:8: webhooks.0" in str(caught.value) and "`url` or `url_env`" in str(caught.value)


# ---- webhook signing and retries ------------------------------------------------------------------------------
def test_signatures_verify_and_reject_tampering_other_secrets_and_stale_timestamps() -> None:
    body = b'{"type":"budget_alert"}'
    headers = signed_headers("s3cret", "d1", body, now=1_000_000)
    assert headers[ID_HEADER] == "d1"
    assert headers[SIGNATURE_HEADER].split()[0] == signature("s3cret", "d1", 1_000_000, body)
    assert verify("s3cret", headers, body, now=1_000_100)
    assert not verify("s3cret", headers, body + b" ", now=1_000_100)
    assert not verify("other", headers, body, now=1_000_100)
    assert not verify("s3cret", headers, body, now=1_000_000 + 301)  # a replay after the tolerance
    assert not verify("s3cret", {**headers, TIMESTAMP_HEADER: "1000001"}, body, now=1_000_000)
    assert not verify("s3cret", {}, body)
    # during a rotation two signatures may be sent: either secret verifies
    rotated = {**headers, SIGNATURE_HEADER: f"{signature('old', 'd1', 1_000_000, body)} {headers[SIGNATURE_HEADER]}"}
    assert verify("s3cret", rotated, body, now=1_000_000) and verify("old", rotated, body, now=1_000_000)


def test_a_delivery_replayed_under_another_id_fails_verification() -> None:
    # a receiver de-duplicates on webhook-id: a captured delivery sent again within the tolerance under a new id
    # (so the receiver takes it for a new one) must not verify, with or without its v1 signature
    body = b'{"type":"budget_alert"}'
    headers = signed_headers("s3cret", "budget_alert.a1.w", body, now=1_000_000)
    assert verify("s3cret", headers, body, now=1_000_010)
    replayed = {**headers, ID_HEADER: "budget_alert.a2.w"}
    assert not verify("s3cret", replayed, body, now=1_000_010)
    assert not verify("s3cret", {k: v for k, v in headers.items() if k != ID_HEADER}, body, now=1_000_010)
    # the v1 value (timestamp and body only) is still sent for old receivers, but never accepted: stripping the
    # v2 value leaves a signature that holds under any id
    v1_only = [part for part in headers[SIGNATURE_HEADER].split() if part.startswith("v1=")]
    assert v1_only == [signature_v1("s3cret", 1_000_000, body)]
    assert not verify("s3cret", {**headers, SIGNATURE_HEADER: v1_only[0]}, body, now=1_000_010)
    assert not verify("s3cret", {**replayed, SIGNATURE_HEADER: v1_only[0]}, body, now=1_000_010)


def test_a_signature_cannot_be_moved_to_another_split_of_the_same_bytes() -> None:
    # delivery ids hold dots, so `<id>.<timestamp>.<body>` alone reads the same for another id, timestamp and body:
    # a capture of ("d.1000000", 1000007, "{}") would verify as ("d", 1000000, "1000007.{}") under a new id
    captured = signed_headers("s3cret", "d.1000000", b"{}", now=1_000_007)
    moved = {**captured, ID_HEADER: "d", TIMESTAMP_HEADER: "1000000"}
    assert verify("s3cret", captured, b"{}", now=1_000_007)
    assert not verify("s3cret", moved, b"1000007.{}", now=1_000_000)
    assert signature("s3cret", "d.1000000", 1_000_007, b"{}") != signature("s3cret", "d", 1_000_000, b"1000007.{}")
    # the id's length in UTF-8 bytes comes first
    expected = hmac.new(b"s3cret", "6:d.\u00e9.1.7.{}".encode(), hashlib.sha256).hexdigest()
    assert signature("s3cret", "d.\u00e9.1", 7, b"{}") == "v2=" + expected


def test_a_webhook_sends_v1_until_its_signatures_drop_it_and_warns_while_it_does(
    caplog: pytest.LogCaptureFixture,
) -> None:
    body, secret = b'{"type":"budget_alert"}', {"HOOK_SECRET": "s3cret"}
    base = {"name": "w", "url": "https://hooks.example/in", "secret_env": "HOOK_SECRET", "events": ["budget_alert"]}
    with caplog.at_level(logging.WARNING, logger="gatehouse.accounting.webhooks"):
        both = Webhook(WebhookConfig.model_validate(base), secret)
    assert "w" in caplog.text and "v1=" in caplog.text and "signatures: [v2]" in caplog.text
    sent = both.signed_headers("d1", body, now=1_000_000)
    assert [part[:3] for part in sent[SIGNATURE_HEADER].split()] == ["v2=", "v1="]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gatehouse.accounting.webhooks"):
        v2_only = Webhook(WebhookConfig.model_validate({**base, "signatures": ["v2"]}), secret)
        unsigned = Webhook(WebhookConfig.model_validate({k: v for k, v in base.items() if k != "secret_env"}), {})
    assert caplog.text == ""  # nothing deprecated is sent
    sent = v2_only.signed_headers("d1", body, now=1_000_000)
    assert sent[SIGNATURE_HEADER] == signature("s3cret", "d1", 1_000_000, body)
    assert verify("s3cret", sent, body, now=1_000_000)
    assert unsigned.signed_headers("d1", body) == {}
    for bad in (["v1"], ["v2", "v2"], [], ["v3"]):
        with pytest.raises(ValueError, match="signatures"):
            WebhookConfig.model_validate({**base, "signatures": bad})
    hook = "{name: w, url: https://h.example, events: [budget_alert], signatures: [%s]}"
    assert parse_config(f"webhooks:\n  - {hook % 'v2'}\n", "g.yaml").webhooks[0].signatures == ("v2",)
    with pytest.raises(ConfigError, match=r"g\.yaml:2: webhooks\.0: .*`signatures` lists `v2`"):
        parse_config(f"webhooks:\n  - {hook % 'v1'}\n", "g.yaml")


def test_backoff_doubles_is_capped_and_jittered_within_half_a_step() -> None:
    assert [backoff_s(n, 1.0, 60.0, lambda: 1.0) for n in (1, 2, 3, 7, 8, 50)] == [1, 2, 4, 60, 60, 60]
    assert [backoff_s(n, 1.0, 60.0, lambda: 0.0) for n in (1, 2, 3)] == [0.5, 1, 2]


# ---- the shipped plugins ---------------------------------------------------------------------------------------
async def test_header_tags_maps_declared_headers_to_tags() -> None:
    plugin = header_tags.create({"names": {"X-Cost-Center": "cost_center"}, "max_chars": 4})
    view = RequestView(point="before_guard", request_id="r", headers={"x-cost-center": "cc-4242", "x-team": "ml"})
    result = await plugin.before_guard(view)
    assert result == HookResult(tags={"cost_center": "cc-4", "x-team": "ml"})
    assert await plugin.before_guard(RequestView(point="before_guard", request_id="r")) is None
    with pytest.raises(ValueError, match="names"):
        header_tags.create({"names": ["x"]})


def test_slack_alert_has_text_and_blocks_for_a_budget_alert() -> None:
    data = {
        "scope": "team.ml", "period": "monthly", "period_key": "2026-12", "threshold_pct": 80,
        "amount_usd": 1000.0, "spent_usd": 812.5, "hard": True,
    }  # fmt: skip
    message = slack_alerts.format_event(envelope("d1", "budget_alert", 1.0, data))
    assert set(message) == {"text", "blocks"}
    assert (
        message["text"] == "gatehouse budget alert: team.ml has spent $812.50 of its monthly budget of $1,000.00 (80%)."
    )
    blocks = message["blocks"]
    assert isinstance(blocks, list) and [b["type"] for b in blocks] == ["header", "section", "section", "context"]
    assert {"type": "mrkdwn", "text": "*Threshold*\n80%"} in blocks[2]["fields"]
    # the JSON the webhook sends
    assert render(slack_alerts.format_event, envelope("d1", "budget_alert", 1.0, data)).startswith(b'{"text":')


def test_slack_escapes_what_slack_would_read_as_markup() -> None:
    message = slack_alerts.format_event(envelope("d", "deployment_down", 1.0, {"deployment": "<!channel>&x"}))
    assert "<!channel>" not in str(message) and "&lt;!channel&gt;&amp;x" in str(message["blocks"])
    assert "&lt;!channel&gt;" in str(message["text"])


def test_every_config_example_in_the_docs_validates() -> None:
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "plugins.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    assert len(blocks) >= 3
    for block in blocks:
        config = parse_config(block, "docs/plugins.md")
        assert config.plugins or config.webhooks
        for spec in config.plugins:
            if spec.path.startswith("gatehouse."):
                load_factory(spec.path, "")(dict(spec.options))  # the shipped plugins load with these options
        for hook in config.webhooks:
            if hook.format != "json":
                load_factory(hook.format, "")


def test_unloadable_names_every_plugin_and_format_that_cannot_be_imported() -> None:
    from shared.plugins import unloadable

    good = _spec()
    bad = _spec(name="nope", path="no_such_pkg_here.mod:create")
    problems = unloadable([good, bad], ["gatehouse.plugins.slack_alerts:format_event", "gatehouse.plugins:missing"])
    assert len(problems) == 2
    assert problems[0].startswith("plugins[1] (nope): cannot load 'no_such_pkg_here.mod:create'")
    assert "gatehouse.plugins:missing" in problems[1]


async def test_a_webhook_attempt_is_signed_follows_no_redirect_and_reports_failures() -> None:
    import httpx

    from services.accounting.webhooks import Webhook, WebhookDispatcher
    from shared.config import WebhookConfig
    from shared.schemas.events import WebhookJob
    from shared.subjects import Subjects

    seen: list[httpx.Request] = []
    answers = iter([httpx.Response(302, headers={"location": "http://169.254.169.254/"}), httpx.Response(204)])

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return next(answers)

    config = WebhookConfig(name="w", url="https://hooks.example/x", secret_env="S", events=["budget_alert"])
    dispatcher = WebhookDispatcher(
        None,  # type: ignore[arg-type]  # no JetStream needed for one attempt
        Subjects("t"),
        [config],
        environ={"S": "k3y"},
        transport=httpx.MockTransport(handle),
    )
    hook = Webhook(config, {"S": "k3y"})
    job = WebhookJob(delivery_id="d1", webhook="w", event_type="budget_alert", source_id="s", at=1.0, body=b"{}")
    assert await dispatcher._post(hook, job) == (302, "HTTP 302")  # a redirect is a failure, not followed
    assert await dispatcher._post(hook, job) == (204, "")
    assert len(seen) == 2 and all(str(r.url) == "https://hooks.example/x" for r in seen)
    headers = seen[1].headers
    assert headers["webhook-id"] == "d1" and headers["x-gatehouse-event"] == "budget_alert"
    assert verify("k3y", headers, b"{}")

    def down(_request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    dispatcher = WebhookDispatcher(None, Subjects("t"), [config], transport=httpx.MockTransport(down))  # type: ignore[arg-type]
    assert await dispatcher._post(hook, job) == (0, "ConnectError")
    assert await dispatcher._post(Webhook(config.model_copy(update={"url": None, "url_env": "UNSET"}), {}), job) == (
        0,
        "no URL (its environment variable is not set)",
    )


@pytest.mark.parametrize(
    ("timestamp", "sig"),
    [
        ("²", "v2=00"),  # a superscript digit passes str.isdigit but int() refuses it
        ("\u0661" + "\u0660" * 6, "v2=00"),  # Arabic-Indic digits: isdigit, and int() would read them
        ("1000000", "v2=é"),  # a non-ASCII signature made compare_digest raise TypeError
        ("1000000", "v2=\udcff"),  # a lone surrogate (what a byte-preserving header decode can yield)
        ("1000000", "v2=00 v2=é"),
        ("9" * 400, "v2=00"),  # an absurdly long timestamp
        ("-1", "v2=00"),
        ("", "v2=00"),
        ("1000000", ""),
    ],
)
def test_a_malformed_signature_header_is_false_never_an_exception(timestamp: str, sig: str) -> None:
    body = b'{"type":"budget_alert"}'
    headers = {ID_HEADER: "d1", TIMESTAMP_HEADER: timestamp, SIGNATURE_HEADER: sig}
    assert verify("s3cret", headers, body, now=1_000_000) is False


@pytest.mark.parametrize("delivery_id", ["", "d\udcff", "é", "d" * 5000])
def test_a_malformed_webhook_id_is_false_never_an_exception(delivery_id: str) -> None:
    body = b'{"type":"budget_alert"}'
    headers = {**signed_headers("s3cret", "d1", body, now=1_000_000), ID_HEADER: delivery_id}
    assert verify("s3cret", headers, body, now=1_000_000) is False


def test_a_plugin_error_has_its_own_metric_label() -> None:
    # the error metrics label only the taxonomy's codes (shared/metrics.py); anything else is counted as "other"
    from shared.metrics import ERROR_CODES

    assert PluginError("p").info().code == "plugin_error" and "plugin_error" in ERROR_CODES
