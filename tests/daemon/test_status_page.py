"""The live status page (``GET /`` on the ops port) in a real headless Chromium, and what ``/status``
gained for it (a rule's last fire, a tool's last error, p50/p99 durations).

The browser is Debian's ``chromium`` (``scripts/chromium.sh``, run by ``make test``) driven by
Playwright with ``executable_path`` (Playwright downloads no browser). A real daemon reads a real
websocket feed; its rule calls an ``exec`` tool that fails and prints its argument (a ``${VAR}``
secret) on stderr. The page must show the fire within a few seconds, the source going down when the
feed stops, an event's markup as text, and never a secret (that one, nor the ops token). The
screenshot is saved to ``var/artifacts/status-page.png`` (``var/`` is not in git).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml

from daemon.config import load_config_text
from daemon.registry import builtin_registry
from daemon.supervisor import Daemon
from handlers.runner import DURATION_BUCKETS, ToolStats
from tests.conftest import StartDaemon, StartServer
from tests.servers import Plan, wait_for

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACT = ROOT / "var" / "artifacts" / "status-page.png"
#: flags that work on these machines (no GPU, no sandbox in containers, no network of its own)
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def test_quantiles_are_estimated_from_the_histogram_buckets() -> None:
    stats = ToolStats()
    assert stats.quantile(0.5) is None  # no call ended yet
    stats.observe(0.003, calls=98)  # in (0.0025, 0.005]
    stats.observe(7.0, calls=2)  # in (5, 10]
    p50 = stats.quantile(0.5)
    assert p50 is not None and 0.0025 < p50 <= 0.005
    p99 = stats.quantile(0.99)
    assert p99 is not None and 5.0 < p99 <= 10.0
    stats.observe(100.0)  # past the last bound: +Inf answers the highest finite bound
    assert stats.quantile(1.0) == DURATION_BUCKETS[-1]


def _config(tmp_path: Path, feed_url: str) -> str:
    doc: dict[str, Any] = {
        "daemon": {
            "http": {"listen": "127.0.0.1:0", "token": "${OPS_TOKEN}"},
            "state_path": str(tmp_path / "state.db"),
            "shutdown_timeout_seconds": 5,
        },
        "sources": {
            "feed": {
                "type": "websocket",
                "url": feed_url,
                "key_field": "s",
                "reconnect": {"initial_seconds": 0.2},
            }
        },
        "tools": {
            # fails every call, with its argument (the secret) on stderr: the error must be redacted
            "notify_desk": {
                "type": "exec",
                "argv": ["/bin/sh", "-c", 'echo "<i>refused</i> key=$*" >&2; exit 3', "{args.key}"],
                "retry": {"max_attempts": 1},
            }
        },
        "rules": {
            "big_trade": {
                "from": "feed",
                "where": "data.p > 100",
                "then": [{"tool": "notify_desk", "args": {"key": "${DESK_KEY}", "price": "{data.p}"}}],
            }
        },
    }
    return yaml.safe_dump(doc)


async def _status(http: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    async with http.get(base + "/status") as r:
        assert r.status == 200
        body: dict[str, Any] = await r.json()
        return body


@pytest.mark.timeout(180)
async def test_the_status_page_in_chromium_shows_fires_and_a_source_going_down_and_never_a_secret(
    tmp_path: Path, run_daemon: StartDaemon, feed_server: StartServer
) -> None:
    from playwright.async_api import async_playwright

    assert await asyncio.to_thread(CHROMIUM.exists), (
        "Debian's chromium is missing: run scripts/chromium.sh (make test does)"
    )
    desk_key = f"deskkey{secrets.token_hex(12)}"
    ops_token = f"opstoken{secrets.token_hex(12)}"
    env = {"DESK_KEY": desk_key, "OPS_TOKEN": ops_token}
    server = await feed_server(Plan())  # holds every connection open; events are broadcast below
    cfg = load_config_text(_config(tmp_path, server.url), builtin_registry(), env=env)
    daemon: Daemon = await run_daemon(cfg)
    assert daemon.http is not None
    base = f"http://127.0.0.1:{daemon.http.port}"
    await wait_for(lambda: daemon.sources["feed"].stats.state == "connected", 10)

    async with aiohttp.ClientSession() as http:
        # the page goes through the same guard as every endpoint: a foreign Host is refused,
        # and it is GET only
        async with http.get(base + "/", headers={"Host": "evil.example"}) as r:
            assert r.status == 421
        async with http.post(base + "/") as r:
            assert r.status in (401, 405)
        async with http.get(base + "/") as r:
            assert r.status == 200 and r.content_type == "text/html"
            assert "default-src 'none'" in r.headers["Content-Security-Policy"]
            html = await r.text()
        assert "http://" not in html and "https://" not in html  # no external assets: works offline

        async with async_playwright() as pw:
            browser = await pw.chromium.launch_persistent_context(
                str(tmp_path / "chromium-profile"),  # a fresh profile
                executable_path=str(CHROMIUM),
                headless=True,
                args=CHROMIUM_FLAGS,
                viewport={"width": 1400, "height": 900},
            )
            try:
                page = browser.pages[0] if browser.pages else await browser.new_page()
                outside: list[str] = []  # requests the page makes anywhere but the ops server
                page.on("request", lambda req: None if req.url.startswith(base) else outside.append(req.url))
                await page.goto(base + "/")
                await page.wait_for_selector('#sources tr[data-source="feed"][data-state="connected"]')
                await page.wait_for_selector('#rules tr[data-rule="big_trade"][data-fired="0"]')

                event = {
                    "s": "BTC",
                    "p": 65000.5,
                    "note": "<img src=x onerror=window.__pwned=1><b id=injected>bold</b>",
                    "echo": desk_key,  # an exchange echoing the key: a ${VAR} text, shown as ***
                    "api_token": "looks-secret-by-name",
                }
                fired_at = time.monotonic()
                assert await server.broadcast(orjson.dumps(event).decode()) == 1
                await page.wait_for_selector('#rules tr[data-rule="big_trade"][data-fired="1"]', timeout=5000)
                shown_after = time.monotonic() - fired_at
                sample = await page.text_content('#rules tr[data-rule="big_trade"] td.sample') or ""
                assert "<b id=injected>bold</b>" in sample  # the markup is text
                assert "***" in sample and desk_key not in sample and "looks-secret-by-name" not in sample
                assert await page.query_selector("#injected") is None
                assert await page.evaluate("window.__pwned") is None

                # the call fails; its last error (stderr, with the secret argument) is shown redacted
                # (selectors, not wait_for_function: the page's CSP forbids evaluating strings)
                await page.wait_for_selector(
                    '#tools tr[data-tool="notify_desk"][data-failures="1"]', timeout=10000
                )
                error = await page.text_content('#tools tr[data-tool="notify_desk"] td.err') or ""
                assert "<i>refused</i> key=***" in error, error

                status = await _status(http, base)
                # redacted where it is made, too (the MCP server's status reads daemon.status() itself)
                assert desk_key not in orjson.dumps(daemon.status()).decode()
                assert status["rules"]["big_trade"]["last_fire"]["sample"] == sample
                assert status["tools"]["notify_desk"]["last_error"]["error"].endswith(
                    "<i>refused</i> key=***'"
                )
                assert status["tools"]["notify_desk"]["duration_p50_seconds"] is not None

                # the feed goes away: the page shows the source down
                await server.stop()
                await page.wait_for_selector(
                    '#sources tr[data-source="feed"]:not([data-state="connected"])', timeout=10000
                )
                await asyncio.sleep(1.2)  # one more poll: the screenshot shows the source down
                await asyncio.to_thread(ARTIFACT.parent.mkdir, parents=True, exist_ok=True)
                await page.screenshot(path=str(ARTIFACT), full_page=True)

                text = await page.inner_text("body")
                content = await page.content()
                for secret in (desk_key, ops_token):
                    assert secret not in text and secret not in content
                    assert secret not in orjson.dumps(await _status(http, base)).decode()
                assert outside == []
            finally:
                await browser.close()
    print(f"fire shown after {shown_after:.2f} s; screenshot: {ARTIFACT}")
