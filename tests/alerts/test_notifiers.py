"""Notifiers against real receivers: aiosmtpd (plain, STARTTLS, implicit TLS, AUTH) and an
HTTP sink (signed JSON). Secrets never show in errors or descriptions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import SecretStr

from pingmesh.alerts.notifiers import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    AlertMessage,
    NotifyError,
    SmtpNotifier,
    WebhookNotifier,
    verify_signature,
)
from pingmesh.config import SmtpNotifierConfig, WebhookNotifierConfig
from pingmesh.store.alerts import Alert
from tests.alerts.receivers import free_port, make_certificate, smtp_server, webhook_sink

PASSWORD = "s3cret-smtp-pw"
SECRET = "hook-secret-123"


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_certificate(tmp_path_factory.mktemp("tls"))


def _alert(**changes: object) -> Alert:
    values: dict[str, object] = {
        "alert_id": "a1b2c3d4e5f60718",
        "rule_id": "pingmesh",
        "rule_name": "Pingmesh SLA",
        "kind": "metric",
        "severity": "critical",
        "scope": "link",
        "subject": "t1->t2",
        "summary": "tor link t1->t2: P99 9.00 ms > 5.00 ms (1 of the last 1 10m windows)",
        "state": "firing",
        "started_at_s": 1_800_000_000.0,
        "updated_at_s": 1_800_000_000.0,
        "resolved_at_s": None,
        "window_start": 1_799_999_400,
        "value": 9000.0,
        "threshold": 5000.0,
        "incident_id": None,
        "acked_at_s": None,
        "acked_by": None,
        "ack_note": None,
        "evidence": {"pairs": [{"src": "h11", "dst": "h21", "why": "P99 9.00 ms > 5.00 ms"}]},
        "trace_task_id": "trace-1",
        "trace": {
            "agent": "h11",
            "src_addr": "198.18.1.1",
            "src_port": 40001,
            "dst": "h21",
            "dst_addr": "198.18.3.1",
            "dst_port": 9781,
            "hops": [{"ttl": 1, "address": "198.18.1.254", "rtt_us": 80.0}],
        },
    }
    values.update(changes)
    return Alert(**values)  # type: ignore[arg-type]


def _message(event: str = "firing") -> AlertMessage:
    return AlertMessage(
        event=event,  # type: ignore[arg-type]
        alert=_alert(),
        delivery_id=f"a1b2c3d4e5f60718:{event}:mail",
        dashboard_url="http://127.0.0.1:8080/",
    )


def _smtp(port: int, **changes: object) -> SmtpNotifier:
    values: dict[str, object] = {
        "host": "127.0.0.1",
        "port": port,
        "security": "plain",
        "sender": "pingmesh@example.test",
        "recipients": ("oncall@example.test", "net@example.test"),
        "timeout_s": 5.0,
    }
    values.update(changes)
    return SmtpNotifier(SmtpNotifierConfig.model_validate(values))


async def test_smtp_plain_delivers_text_and_html() -> None:
    with smtp_server() as (port, box):
        await _smtp(port).send(_message())
    (mail,) = box.messages
    assert box.envelopes == [("pingmesh@example.test", ["oncall@example.test", "net@example.test"])]
    assert mail["Subject"].startswith("[pingmesh] FIRING critical: tor link t1->t2")
    text = mail.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    html = mail.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert "h11 -> h21" in text
    assert "198.18.1.254" in text
    assert "http://127.0.0.1:8080/#/alerts?id=a1b2c3d4e5f60718" in text
    assert "<td>198.18.1.254</td>" in html


@pytest.mark.parametrize("security", ["starttls", "tls"])
async def test_smtp_over_tls_with_auth(security: str, cert: tuple[Path, Path]) -> None:
    with smtp_server(security=security, cert=cert, user="alerts", password=PASSWORD) as (
        port,
        box,
    ):
        notifier = _smtp(
            port,
            security=security,
            username="alerts",
            password=PASSWORD,
            ca_file=str(cert[0]),
        )
        await notifier.send(_message("resolved"))
    assert box.logins == ["alerts"]
    assert box.subjects() == [
        "[pingmesh] RESOLVED: tor link t1->t2: P99 9.00 ms > 5.00 ms (1 of the last 1 10m windows)"
    ]
    assert PASSWORD not in json.dumps(notifier.describe())
    assert notifier.describe()["password_set"] is True


async def test_smtp_refuses_an_unverified_certificate(cert: tuple[Path, Path]) -> None:
    with smtp_server(security="starttls", cert=cert) as (port, box):
        with pytest.raises(NotifyError, match=r"CERTIFICATE_VERIFY_FAILED|certificate"):
            await _smtp(port, security="starttls").send(_message())
        # Turning verification off is possible, on purpose only.
        await _smtp(port, security="starttls", verify_tls=False).send(_message())
    assert len(box.messages) == 1


async def test_smtp_errors_name_the_server_but_never_the_password(cert: tuple[Path, Path]) -> None:
    with smtp_server(security="tls", cert=cert, user="alerts", password=PASSWORD) as (port, _):
        notifier = _smtp(
            port, security="tls", username="alerts", password="wrong-pw", ca_file=str(cert[0])
        )
        with pytest.raises(NotifyError) as caught:
            await notifier.send(_message())
    assert f"127.0.0.1:{port}" in str(caught.value)
    assert "wrong-pw" not in str(caught.value)
    with pytest.raises(NotifyError, match="ConnectionRefusedError"):
        await _smtp(free_port()).send(_message())


async def test_webhook_posts_signed_json() -> None:
    with webhook_sink() as (url, deliveries):
        notifier = WebhookNotifier(WebhookNotifierConfig(url=url, secret=SecretStr(SECRET)))
        await notifier.send(_message())
    (delivery,) = deliveries
    headers = {k.lower(): v for k, v in delivery.headers.items()}
    signature = headers[SIGNATURE_HEADER.lower()]
    timestamp = headers[TIMESTAMP_HEADER.lower()]
    assert verify_signature(SECRET.encode(), timestamp, delivery.body, signature)
    assert not verify_signature(b"another", timestamp, delivery.body, signature)
    assert not verify_signature(SECRET.encode(), timestamp, delivery.body + b" ", signature)
    assert headers[DELIVERY_HEADER.lower()] == "a1b2c3d4e5f60718:firing:mail"
    doc = delivery.json()
    assert doc["event"] == "firing"
    assert doc["alert"]["subject"] == "t1->t2"
    assert doc["alert"]["started_at"] == "2027-01-15T08:00:00Z"
    assert doc["alert"]["trace"]["hops"][0]["address"] == "198.18.1.254"
    assert SECRET not in delivery.body.decode()
    assert notifier.describe() == {
        "name": "webhook",
        "kind": "webhook",
        "url": url,
        "secret_set": True,
    }


async def test_webhook_failures_are_notify_errors() -> None:
    with (
        webhook_sink(status=503) as (url, deliveries),
        pytest.raises(NotifyError, match="answered 503"),
    ):
        await WebhookNotifier(WebhookNotifierConfig(url=url)).send(_message())
    assert len(deliveries) == 1
    refused = f"http://user:pw@127.0.0.1:{free_port()}/x"
    notifier = WebhookNotifier(WebhookNotifierConfig(url=refused, timeout_s=2.0))
    with pytest.raises(NotifyError, match="ConnectError") as caught:
        await notifier.send(_message())
    assert "pw" not in str(caught.value).replace("pingmesh", "")
    assert "user:pw" not in notifier.describe()["url"]
