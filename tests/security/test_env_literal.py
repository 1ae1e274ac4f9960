"""A value from ``${VAR}`` is never template syntax, in every tool field that is a template.

The configuration is loaded from YAML text by the real loader; the built tools' own renderers (the
exec tool's argv builder, the kafka and webhook tools' compiled templates, a rule's arguments) are
then run against an event. The webhook tool is also checked end to end against a real server in
``tests/handlers/test_webhook.py``.
"""

from __future__ import annotations

from typing import Any

import pytest

from daemon.config import AppConfig, load_config_text
from daemon.errors import ConfigError
from daemon.registry import builtin_registry
from handlers.exec import ArgvBuilder
from streams.event import Event
from streams.expressions import compile_template

TEMPLATE_LIKE = ["{data.p}", "a{{b}}c", "}{", "{", "x}", "{key}{{key}}"]
EVENT = Event("feed", 1.0, 1.0, "BTC", {"p": "65000.5"}, {})


def load(tools: str, env: dict[str, str], args: str = "{}") -> AppConfig:
    text = f"""
daemon: {{http: null}}
sources:
  feed: {{type: websocket, url: "ws://127.0.0.1:9/x"}}
tools:
{tools}
rules:
  r:
    from: feed
    then: [{{tool: t, args: {args}}}]
"""
    return load_config_text(text, builtin_registry(), env=env)


@pytest.mark.parametrize("value", TEMPLATE_LIKE)
def test_exec_argv_and_env_from_the_environment_are_literal(value: str) -> None:
    """exec: an argv item and an env value from ${VAR} (alone or after a template) render as their exact text."""
    tools = """\
  t:
    type: exec
    argv: [/bin/echo, "${V}", "{key}=${V}"]
    env: {SECRET: "${V}", MIXED: "{data.p}/${V}"}
"""
    plan = load(tools, {"V": value}).tools["t"]
    builder = ArgvBuilder("t", plan.config)
    # `--` goes before the item that begins with the file's placeholder, not before the one from ${V}
    assert builder.build(EVENT, {}) == [b"/bin/echo", value.encode(), b"--", f"BTC={value}".encode()]
    rendered = {name: render(ArgvBuilder.row(EVENT, {})) for name, render in builder._env}
    assert rendered == {"SECRET": value, "MIXED": f"65000.5/{value}"}


@pytest.mark.parametrize("value", TEMPLATE_LIKE)
def test_kafka_key_and_headers_from_the_environment_are_literal(value: str) -> None:
    """kafka tool: a record key and a header value from ${VAR} render as their exact text."""
    tools = """\
  t:
    type: kafka
    bootstrap_servers: 127.0.0.1:9
    topic: out
    key: "{key}-${V}"
    headers: {X-Token: "${V}"}
"""
    cfg = load(tools, {"V": value}).tools["t"].config
    assert compile_template(cfg.key)(EVENT) == f"BTC-{value}"
    assert compile_template(cfg.headers["X-Token"])(EVENT) == value


@pytest.mark.parametrize("value", TEMPLATE_LIKE)
def test_webhook_url_and_headers_from_the_environment_are_literal(value: str) -> None:
    """webhook: text from ${VAR} in the URL and a header renders as its exact text; the file's templates still render."""
    tools = """\
  t:
    type: webhook
    url: "https://hooks.example.com/{key}/${V}"
    headers: {Authorization: "Bearer ${V}", X-Key: "{key}"}
"""
    cfg = load(tools, {"V": value}).tools["t"].config
    assert compile_template(cfg.url)(EVENT) == f"https://hooks.example.com/BTC/{value}"
    assert compile_template(cfg.headers["Authorization"])(EVENT) == f"Bearer {value}"
    assert compile_template(cfg.headers["X-Key"])(EVENT) == "BTC"


@pytest.mark.parametrize("value", TEMPLATE_LIKE)
def test_rule_arguments_from_the_environment_are_literal(value: str) -> None:
    """Rule arguments: a value from ${VAR}, top level, nested or in a list, renders as its exact text."""
    config = load("  t: {type: log}\n", {"V": value}, args='{a: "${V}", b: {c: "<${V}>"}, d: ["${V}", "{key}"]}')
    (call,) = config.rules["r"].then
    assert compile_template(call.args)(EVENT) == {"a": value, "b": {"c": f"<{value}>"}, "d": [value, "BTC"]}


def test_the_files_own_templates_and_escapes_are_unchanged() -> None:
    """Only substituted text is escaped: the file's own placeholders and `{{`/`}}` keep their meaning."""
    config = load("  t: {type: log}\n", {"V": "{v}"}, args='{a: "{key} {{x}} ${V}"}')
    (call,) = config.rules["r"].then
    rendered: dict[str, Any] = compile_template(call.args)(EVENT)
    assert rendered == {"a": "BTC {x} {v}"}


def test_a_broken_template_in_the_file_is_still_an_error() -> None:
    """A placeholder the file itself gets wrong is reported even when the same value also holds ${VAR} text."""
    with pytest.raises(ConfigError) as info:
        load("  t: {type: log}\n", {"V": "v"}, args='{a: "{nope( ${V}"}')
    assert "rules.r.then[0].args.a" in str(info.value)
