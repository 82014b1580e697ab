"""Real receivers for the notifier tests: an SMTP server (aiosmtpd) and an HTTP webhook sink.

Both listen on 127.0.0.1 and record what they receive; the SMTP server can speak STARTTLS or
implicit TLS with a self-signed certificate made by ``openssl`` for 127.0.0.1, and can demand
AUTH with one user and password.
"""

from __future__ import annotations

import email
import email.policy
import json
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer  # noqa: N811 - aiosmtpd names it SMTP
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate and key for 127.0.0.1 (IP subjectAltName)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@dataclass
class Mailbox:
    """What the SMTP server accepted."""

    messages: list[EmailMessage] = field(default_factory=list)
    envelopes: list[tuple[str, list[str]]] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: SMTPServer, session: Session, envelope: Envelope) -> str:  # noqa: N802
        raw = envelope.original_content or envelope.content
        assert isinstance(raw, bytes)
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        with self.lock:
            self.messages.append(parsed)
            self.envelopes.append((str(envelope.mail_from), list(envelope.rcpt_tos)))
        return "250 OK"

    def subjects(self) -> list[str]:
        with self.lock:
            return [str(m["Subject"]) for m in self.messages]


@contextmanager
def smtp_server(
    *,
    security: str = "plain",
    cert: tuple[Path, Path] | None = None,
    user: str | None = None,
    password: str | None = None,
) -> Iterator[tuple[int, Mailbox]]:
    """Run aiosmtpd on 127.0.0.1 with ``security`` plain, starttls or tls; yield (port, box)."""
    import ssl  # noqa: PLC0415

    box = Mailbox()
    context = None
    if security != "plain":
        assert cert is not None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert[0]), str(cert[1]))

    def authenticate(
        server: SMTPServer, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = (
            isinstance(data, LoginPassword)
            and data.login.decode() == user
            and data.password.decode() == password
        )
        if ok:
            box.logins.append(str(user))
        return AuthResult(success=ok)

    kwargs: dict[str, Any] = {}
    if user is not None:
        kwargs["authenticator"] = authenticate
        # aiosmtpd only knows of TLS it negotiated itself (STARTTLS); with implicit TLS the
        # transport is TLS from the first byte, so AUTH must not wait for a STARTTLS (and
        # aiosmtpd warns if AUTH is then *required*; the test checks the login happened).
        kwargs["auth_require_tls"] = security == "starttls"
        kwargs["auth_required"] = security == "starttls"
    if security == "starttls":
        kwargs["tls_context"] = context
        kwargs["require_starttls"] = True
    port = free_port()
    controller = Controller(
        box,
        hostname="127.0.0.1",
        port=port,
        ssl_context=context if security == "tls" else None,
        server_hostname="127.0.0.1",
        **kwargs,
    )
    controller.start()
    try:
        yield port, box
    finally:
        controller.stop()


@dataclass
class Delivery:
    """One request the webhook sink received."""

    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@contextmanager
def webhook_sink(*, status: int = 200) -> Iterator[tuple[str, list[Delivery]]]:
    """An HTTP server on 127.0.0.1 that records every POST; yields (url, deliveries)."""
    deliveries: list[Delivery] = []
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            with lock:
                deliveries.append(
                    Delivery(path=self.path, headers=dict(self.headers.items()), body=body)
                )
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", deliveries
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
