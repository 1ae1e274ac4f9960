"""A websocket source's configured headers never follow a redirect to another origin.

Real websockets servers on 127.0.0.1 (port 0) answer the handshake with a redirect and record every
request's headers; the source is configured from YAML text whose headers come from ``${VAR}``, and
connects as the daemon would (``WebSocketSource.connect``) with the daemon's logging at debug level,
which is then searched for the secrets too.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import ipaddress
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from daemon.config import load_config_text
from daemon.errors import NotConnected
from daemon.registry import builtin_registry
from streams.websocket import WebSocketSource

KEY = "k3y-0f-the-feed-9c1f2e"
TOKEN = "t0ken-0f-the-feed-77ab0d"
ENV = {"FEED_KEY": KEY, "FEED_TOKEN": TOKEN}


class Origin:
    """A websockets server on 127.0.0.1:0. A handshake whose path is a key of ``redirects`` is
    answered 302 with ``redirects[path]()`` as its Location; any other is accepted. Every
    handshake's path and headers are recorded."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.redirects: dict[str, str] = {}
        self.handshakes: list[tuple[str, Headers]] = []
        self.port = 0
        self._ssl = ssl_context

    def _process(self, connection: ServerConnection, request: Request) -> Response | None:
        self.handshakes.append((request.path, request.headers))
        location = self.redirects.get(request.path)
        if location is None:
            return None
        response = connection.respond(302, "")
        response.headers["Location"] = location
        return response

    async def _handler(self, ws: ServerConnection) -> None:
        await ws.wait_closed()

    def headers_at(self, path: str) -> list[Headers]:
        return [h for p, h in self.handshakes if p == path]

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Origin]:
        async with serve(self._handler, "127.0.0.1", 0, process_request=self._process, ssl=self._ssl) as server:
            self.port = server.sockets[0].getsockname()[1]
            yield self


def source(url: str) -> WebSocketSource:
    """A websocket source from YAML whose headers come from the environment."""
    text = f"""
daemon: {{http: null}}
sources:
  feed:
    type: websocket
    url: "{url}"
    headers: {{X-Api-Key: "${{FEED_KEY}}", Authorization: "Bearer ${{FEED_TOKEN}}"}}
    open_timeout_seconds: 5
"""
    plan = load_config_text(text, builtin_registry(), env=ENV).sources["feed"]
    return WebSocketSource("feed", plan.config)


def carries_secret(headers: Headers) -> bool:
    return any(KEY in value or TOKEN in value for _, value in headers.raw_items())


async def connect_and_close(src: WebSocketSource) -> None:
    await src.connect()
    await src.close()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_cross_origin_redirect_does_not_carry_configured_headers(host: str, debug_log: io.StringIO) -> None:
    """A 302 to another origin (another port, or another host name) is followed without any configured header; the log holds no secret."""
    async with Origin().running() as home, Origin().running() as other:
        home.redirects["/start"] = f"ws://{host}:{other.port}/landed"
        await connect_and_close(source(f"ws://127.0.0.1:{home.port}/start"))

        (first,) = home.headers_at("/start")
        assert first["X-Api-Key"] == KEY and first["Authorization"] == f"Bearer {TOKEN}"
        (landed,) = other.headers_at("/landed")
        assert "X-Api-Key" not in landed and "Authorization" not in landed
        assert not carries_secret(landed)
    assert KEY not in debug_log.getvalue() and TOKEN not in debug_log.getvalue()


async def test_other_host_name_on_the_same_port_is_another_origin(debug_log: io.StringIO) -> None:
    """localhost → 127.0.0.1 on the same port is another origin too (host names are compared, not addresses)."""
    async with Origin().running() as home:
        home.redirects["/start"] = f"ws://localhost:{home.port}/landed"
        await connect_and_close(source(f"ws://127.0.0.1:{home.port}/start"))
        (landed,) = home.headers_at("/landed")
        assert not carries_secret(landed)


async def test_headers_never_come_back_after_leaving_the_origin(debug_log: io.StringIO) -> None:
    """A chain that leaves the configured origin and returns to it does not get the headers back."""
    async with Origin().running() as home, Origin().running() as other:
        home.redirects["/start"] = f"ws://127.0.0.1:{other.port}/bounce"
        other.redirects["/bounce"] = f"ws://127.0.0.1:{home.port}/back"
        await connect_and_close(source(f"ws://127.0.0.1:{home.port}/start"))
        (bounced,) = other.headers_at("/bounce")
        (back,) = home.headers_at("/back")
        assert not carries_secret(bounced) and not carries_secret(back)


async def test_same_origin_redirect_keeps_configured_headers(debug_log: io.StringIO) -> None:
    """A redirect to another path of the same origin (relative Location) keeps every configured header."""
    async with Origin().running() as home:
        home.redirects["/start"] = "/landed?v=2"
        await connect_and_close(source(f"ws://127.0.0.1:{home.port}/start"))
        (landed,) = home.headers_at("/landed?v=2")
        assert landed["X-Api-Key"] == KEY and landed["Authorization"] == f"Bearer {TOKEN}"
    assert KEY not in debug_log.getvalue() and TOKEN not in debug_log.getvalue()


async def test_redirect_loop_is_bounded_and_names_no_url(debug_log: io.StringIO) -> None:
    """A server that redirects forever is given up after a bounded number of hops, as a fatal error without the URL."""
    async with Origin().running() as home:
        home.redirects["/a"] = "/b?secret-path"
        home.redirects["/b?secret-path"] = "/a"
        src = source(f"ws://127.0.0.1:{home.port}/a")
        with pytest.raises(NotConnected) as caught:
            await src.connect()
        assert not caught.value.retryable
        assert "redirects" in str(caught.value) and "secret-path" not in str(caught.value)
        assert 2 <= len(home.handshakes) <= 11


def built(text: str, name: str = "feed") -> WebSocketSource:
    """A websocket source built the way the daemon builds it (the factory, with the config's context)."""
    config = load_config_text(text, builtin_registry(), env=ENV)
    plan = config.sources[name]
    src = plan.spec.factory(name, plan.config, config.build_context())
    assert isinstance(src, WebSocketSource)
    return src


@pytest.mark.parametrize("secret_subscribe", [True, False])
async def test_cross_origin_redirect_is_refused_when_subscribe_messages_carry_secrets(
    secret_subscribe: bool, debug_log: io.StringIO
) -> None:
    """Subscribe messages holding ${VAR} values are never sent to another origin: the redirect is refused
    (fatal, names origins only); subscribe messages without such values follow the redirect as before."""
    async with Origin().running() as home, Origin().running() as other:
        home.redirects["/start"] = f"ws://127.0.0.1:{other.port}/landed"
        auth = '"${FEED_TOKEN}"' if secret_subscribe else "public"
        src = built(
            f"""
daemon: {{http: null}}
sources:
  feed:
    type: websocket
    url: "ws://127.0.0.1:{home.port}/start"
    subscribe: [{{op: auth, key: {auth}}}]
    open_timeout_seconds: 5
"""
        )
        if secret_subscribe:
            with pytest.raises(NotConnected) as caught:
                await src.connect()
            assert not caught.value.retryable and "environment" in str(caught.value)
            assert other.handshakes == []
        else:
            await connect_and_close(src)
            assert len(other.headers_at("/landed")) == 1
    assert TOKEN not in debug_log.getvalue()


# -- TLS downgrade --------------------------------------------------------------------------------


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (its own CA) and its key, written as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


async def test_wss_to_ws_redirect_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, debug_log: io.StringIO
) -> None:
    """A redirect from wss:// to ws:// is refused (fatal, the message names no URL): the plain-text server never sees a request."""
    cert, key = self_signed(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the client's default context trusts the test CA
    server_ssl = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ssl.load_cert_chain(cert, key)
    async with Origin(server_ssl).running() as home, Origin().running() as plain:
        home.redirects["/start"] = f"ws://127.0.0.1:{plain.port}/plain?after-downgrade"
        home.redirects["/same"] = "/ok"
        # the TLS server works: a same-origin redirect over wss connects with the headers
        await connect_and_close(source(f"wss://127.0.0.1:{home.port}/same"))
        assert home.headers_at("/ok")[0]["X-Api-Key"] == KEY

        src = source(f"wss://127.0.0.1:{home.port}/start")
        with pytest.raises(NotConnected) as caught:
            await src.connect()
        assert not caught.value.retryable
        assert "ws://" in str(caught.value) and "after-downgrade" not in str(caught.value)
        assert plain.handshakes == []
    assert KEY not in debug_log.getvalue() and TOKEN not in debug_log.getvalue()
