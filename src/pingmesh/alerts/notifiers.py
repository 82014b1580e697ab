"""Notifiers: e-mail over SMTP and signed JSON webhooks (the dashboard's sound needs none).

A notifier turns one :class:`AlertMessage` (an alert and the event: ``firing`` or
``resolved``) into one delivery and raises :class:`NotifyError` when the far end did not take
it; the dispatcher in :mod:`pingmesh.alerts.engine` retries and records the outcome.

- :class:`SmtpNotifier`: ``plain`` (no TLS), ``starttls`` (RFC 3207) or ``tls`` (implicit TLS,
  RFC 8314), optional AUTH; certificates are verified unless the config says otherwise (a CA
  file can be given for a private CA).  SmartPing sent PLAIN auth only and so failed on servers
  without TLS or with private certificates (smartping issues #93, #97); every mode works here.
  :mod:`smtplib` runs in a worker thread under a timeout.
- :class:`WebhookNotifier`: ``POST`` of the JSON in :meth:`AlertMessage.payload`, signed with
  HMAC-SHA256 over ``"<timestamp>.<body>"`` (the timestamp binds the signature to the moment,
  so a captured request cannot be replayed later; the scheme of Stripe's and kconmon-ng's
  webhooks).  Headers: ``X-Pingmesh-Signature: sha256=<hex>``, ``X-Pingmesh-Timestamp``,
  ``X-Pingmesh-Event`` and ``X-Pingmesh-Delivery`` (the same id on a retry, so a receiver can
  drop duplicates).  :func:`verify_signature` is the receiver's side.

Secrets (SMTP password, webhook secret) are :class:`pydantic.SecretStr` in the config and never
leave this module: :meth:`describe` reports only whether they are set.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import json
import smtplib
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx

from pingmesh import __version__
from pingmesh.config import SmtpNotifierConfig, WebhookNotifierConfig
from pingmesh.errors import NotifyError
from pingmesh.store.alerts import Alert, Event

SIGNATURE_HEADER = "X-Pingmesh-Signature"
TIMESTAMP_HEADER = "X-Pingmesh-Timestamp"
EVENT_HEADER = "X-Pingmesh-Event"
DELIVERY_HEADER = "X-Pingmesh-Delivery"
MAX_PAIRS_IN_MESSAGE = 10


def _iso(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(round(seconds, 3), tz=UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertMessage:
    """One event of one alert, ready to be rendered for any notifier."""

    event: Event
    alert: Alert
    delivery_id: str
    dashboard_url: str | None = None

    @property
    def link(self) -> str | None:
        """The alert's page in the dashboard, when the dashboard's URL is configured."""
        if not self.dashboard_url:
            return None
        return f"{self.dashboard_url.rstrip('/')}/#/alerts?id={self.alert.alert_id}"

    def subject(self) -> str:
        """``[pingmesh] FIRING critical: …`` / ``[pingmesh] RESOLVED: …``."""
        a = self.alert
        if self.event == "firing":
            return f"[pingmesh] FIRING {a.severity}: {a.summary}"[:240]
        return f"[pingmesh] RESOLVED: {a.summary}"[:240]

    def payload(self) -> dict[str, Any]:
        """The JSON document of a webhook (schema version 1)."""
        a = self.alert
        return {
            "schema_version": 1,
            "event": self.event,
            "delivery_id": self.delivery_id,
            "alert": {
                "id": a.alert_id,
                "rule_id": a.rule_id,
                "rule_name": a.rule_name,
                "kind": a.kind,
                "severity": a.severity,
                "scope": a.scope,
                "subject": a.subject,
                "summary": a.summary,
                "state": a.state,
                "started_at": _iso(a.started_at_s),
                "resolved_at": _iso(a.resolved_at_s),
                "value": a.value,
                "threshold": a.threshold,
                "incident_id": a.incident_id,
                "acked_by": a.acked_by,
                "evidence": dict(a.evidence),
                "trace": dict(a.trace) if a.trace is not None else None,
            },
            "link": self.link,
            "sender": f"pingmesh {__version__}",
        }

    def text(self) -> str:
        """The plain-text body of an e-mail."""
        a = self.alert
        lines = [
            f"{'FIRING' if self.event == 'firing' else 'RESOLVED'}: {a.summary}",
            "",
            f"rule:      {a.rule_name} ({a.rule_id})",
            f"subject:   {a.scope} {a.subject}",
            f"severity:  {a.severity}",
            f"started:   {_iso(a.started_at_s)}",
        ]
        if a.resolved_at_s is not None:
            lines.append(f"resolved:  {_iso(a.resolved_at_s)}")
        if self.link:
            lines.append(f"dashboard: {self.link}")
        pairs = _pairs(a.evidence)
        if pairs:
            lines += ["", "affected pairs:"]
            for p in pairs:
                lines.append(f"  {p.get('src')} -> {p.get('dst')}  {p.get('why', '')}".rstrip())
        hops = _hops(a.trace)
        if hops:
            lines += ["", f"traceroute {_trace_title(a.trace)}:"]
            lines.append("  TTL  address           RTT")
            for hop in hops:
                lines.append(f"  {hop['ttl']:>3}  {hop['address']:<16}  {hop['rtt']}".rstrip())
        elif a.trace_task_id:
            lines += ["", f"traceroute: requested (task {a.trace_task_id}), no result yet"]
        return "\n".join(lines) + "\n"

    def html(self) -> str:
        """The HTML body of an e-mail (every value escaped)."""
        a = self.alert
        e = html.escape
        colour = "#c0392b" if self.event == "firing" else "#2e8b57"
        rows = [
            ("rule", f"{a.rule_name} ({a.rule_id})"),
            ("subject", f"{a.scope} {a.subject}"),
            ("severity", a.severity),
            ("started", _iso(a.started_at_s) or ""),
        ]
        if a.resolved_at_s is not None:
            rows.append(("resolved", _iso(a.resolved_at_s) or ""))
        parts = [
            (
                f'<h2 style="color:{colour}">{"FIRING" if self.event == "firing" else "RESOLVED"}: '
                f"{e(a.summary)}</h2>"
            ),
            "<table>",
            *(f"<tr><th align=left>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in rows),
            "</table>",
        ]
        if self.link:
            parts.append(f'<p><a href="{e(self.link)}">Open in the dashboard</a></p>')
        pairs = _pairs(a.evidence)
        if pairs:
            parts.append("<h3>Affected pairs</h3><table border=1 cellpadding=3>")
            parts.append("<tr><th>src</th><th>dst</th><th>why</th></tr>")
            for p in pairs:
                parts.append(
                    f"<tr><td>{e(str(p.get('src')))}</td><td>{e(str(p.get('dst')))}</td>"
                    f"<td>{e(str(p.get('why', '')))}</td></tr>"
                )
            parts.append("</table>")
        hops = _hops(a.trace)
        if hops:
            parts.append(f"<h3>Traceroute {e(_trace_title(a.trace))}</h3>")
            parts.append("<table border=1 cellpadding=3><tr><th>TTL</th><th>Host</th>")
            parts.append("<th>RTT</th></tr>")
            for hop in hops:
                parts.append(
                    f"<tr><td>{hop['ttl']}</td><td>{e(hop['address'])}</td>"
                    f"<td>{e(hop['rtt'])}</td></tr>"
                )
            parts.append("</table>")
        return "<html><body>" + "".join(parts) + "</body></html>"


def _pairs(evidence: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    pairs = evidence.get("pairs")
    if not isinstance(pairs, list):
        return []
    return [p for p in pairs if isinstance(p, Mapping)][:MAX_PAIRS_IN_MESSAGE]


def _trace_title(trace: Mapping[str, Any] | None) -> str:
    if not trace:
        return ""
    src = f"{trace.get('src_addr', '?')}:{trace.get('src_port', '?')}"
    dst = f"{trace.get('dst_addr', '?')}:{trace.get('dst_port', '?')}"
    return f"{trace.get('agent', '?')} {src} -> {trace.get('dst', '?')} {dst}"


def _hops(trace: Mapping[str, Any] | None) -> list[dict[str, str]]:
    if not trace or not isinstance(trace.get("hops"), list):
        return []
    out = []
    for hop in trace["hops"]:
        if not isinstance(hop, Mapping):
            continue
        rtt = hop.get("rtt_us")
        out.append(
            {
                "ttl": str(hop.get("ttl", "?")),
                "address": str(hop.get("address") or "???"),
                "rtt": "" if rtt is None else f"{float(rtt) / 1000:.2f} ms",
            }
        )
    return out


class Notifier(Protocol):
    """One destination of alert messages."""

    @property
    def name(self) -> str:
        """Unique among the configured notifiers; notifications are recorded under it."""
        ...

    @property
    def kind(self) -> str:
        """``smtp`` or ``webhook``."""
        ...

    async def send(self, message: AlertMessage) -> None:
        """Deliver one message; raise :class:`NotifyError` when it was not accepted."""
        ...

    def describe(self) -> dict[str, Any]:
        """Settings that may be shown to anyone: never a password or a secret."""
        ...


class SmtpNotifier:
    """E-mail over SMTP: plain, STARTTLS or implicit TLS; optional AUTH."""

    kind = "smtp"

    def __init__(self, config: SmtpNotifierConfig) -> None:
        self.config = config

    @property
    def name(self) -> str:
        return self.config.name

    def describe(self) -> dict[str, Any]:
        c = self.config
        return {
            "name": c.name,
            "kind": self.kind,
            "host": c.host,
            "port": c.port,
            "security": c.security,
            "sender": c.sender,
            "recipients": list(c.recipients),
            "username": c.username,
            "password_set": c.password is not None,
        }

    def _tls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(
            cafile=str(self.config.ca_file) if self.config.ca_file else None
        )
        if not self.config.verify_tls:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def build(self, message: AlertMessage) -> EmailMessage:
        """The e-mail for ``message`` (multipart: text and HTML)."""
        c = self.config
        mail = EmailMessage()
        mail["Subject"] = message.subject()
        mail["From"] = c.sender
        mail["To"] = ", ".join(c.recipients)
        mail["Date"] = datetime.now(tz=UTC).strftime("%a, %d %b %Y %H:%M:%S +0000")
        mail["Message-ID"] = make_msgid(idstring=message.delivery_id.replace(":", "."))
        mail["X-Pingmesh-Alert"] = message.alert.alert_id
        mail["X-Pingmesh-Event"] = message.event
        mail.set_content(message.text())
        mail.add_alternative(message.html(), subtype="html")
        return mail

    def _send_blocking(self, mail: EmailMessage) -> None:
        c = self.config
        smtp: smtplib.SMTP
        try:
            if c.security == "tls":
                smtp = smtplib.SMTP_SSL(
                    c.host, c.port, timeout=c.timeout_s, context=self._tls_context()
                )
            else:
                smtp = smtplib.SMTP(c.host, c.port, timeout=c.timeout_s)
            with smtp:
                smtp.ehlo()
                if c.security == "starttls":
                    smtp.starttls(context=self._tls_context())
                    smtp.ehlo()
                if c.username is not None:
                    password = c.password.get_secret_value() if c.password else ""
                    smtp.login(c.username, password)
                refused = smtp.send_message(mail)
        except (smtplib.SMTPException, OSError, ssl.SSLError) as exc:
            # Never include the password: smtplib's messages do not, and we add none.
            raise NotifyError(
                f"smtp {c.name}: {c.host}:{c.port} ({c.security}): {type(exc).__name__}: {exc}"
            ) from exc
        if refused:
            raise NotifyError(f"smtp {c.name}: recipients refused: {', '.join(sorted(refused))}")

    async def send(self, message: AlertMessage) -> None:
        mail = self.build(message)
        # smtplib applies timeout_s per operation; the outer bound covers the whole dialogue.
        async with asyncio.timeout(self.config.timeout_s * 4):
            await asyncio.to_thread(self._send_blocking, mail)


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The ``X-Pingmesh-Signature`` value for ``body`` sent at ``timestamp``."""
    digest = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify_signature(secret: bytes, timestamp: str, body: bytes, signature: str) -> bool:
    """True when ``signature`` is ours for ``body`` at ``timestamp`` (constant time)."""
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


class WebhookNotifier:
    """``POST`` the alert as JSON, signed with HMAC-SHA256 when a secret is configured."""

    kind = "webhook"

    def __init__(
        self, config: WebhookNotifierConfig, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.config = config
        self._transport = transport

    @property
    def name(self) -> str:
        return self.config.name

    def describe(self) -> dict[str, Any]:
        parts = urlsplit(self.config.url)
        # Credentials in the URL are secrets too: show scheme, host, port and path only.
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        return {
            "name": self.config.name,
            "kind": self.kind,
            "url": f"{parts.scheme}://{host}{port}{parts.path}",
            "secret_set": self.config.secret is not None,
        }

    async def send(self, message: AlertMessage) -> None:
        body = json.dumps(message.payload(), sort_keys=True, separators=(",", ":")).encode()
        timestamp = str(int(datetime.now(tz=UTC).timestamp()))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"pingmesh/{__version__}",
            TIMESTAMP_HEADER: timestamp,
            EVENT_HEADER: message.event,
            DELIVERY_HEADER: message.delivery_id,
        }
        if self.config.secret is not None:
            secret = self.config.secret.get_secret_value().encode()
            headers[SIGNATURE_HEADER] = sign(secret, timestamp, body)
        try:
            async with httpx.AsyncClient(
                timeout=self.config.timeout_s, trust_env=False, transport=self._transport
            ) as client:
                response = await client.post(self.config.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise NotifyError(
                f"webhook {self.name}: {self.describe()['url']}: {type(exc).__name__}: {exc}"
            ) from exc
        if not 200 <= response.status_code < 300:
            raise NotifyError(
                f"webhook {self.name}: {self.describe()['url']} answered {response.status_code}"
            )
