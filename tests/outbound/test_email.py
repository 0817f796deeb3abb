"""The email sender against a real SMTP server on loopback (aiosmtpd)."""

from __future__ import annotations

import socket
from email.message import EmailMessage
from pathlib import Path

import pytest

from realtime.config import EmailSettings
from realtime.metrics import Metrics
from realtime.outbound import Outcome
from realtime.outbound.smtp import EmailSender
from realtime.outbound.templates import TemplateError
from tests.outbound.smtp_server import SmtpServer
from tests.outbound.support import job, sent

SENDER = "Notifications <notify@app.example>"


def sender_for(smtp: SmtpServer, metrics: Metrics, **settings: object) -> EmailSender:
    options: dict[str, object] = {
        "smtp_host": "127.0.0.1",
        "smtp_port": smtp.port,
        "starttls": False,
        "sender": SENDER,
        **settings,
    }
    return EmailSender(EmailSettings(**options), metrics)  # type: ignore[arg-type]


def bodies(mail_message: object) -> tuple[str, str]:
    assert isinstance(mail_message, EmailMessage)
    text = mail_message.get_body(("plain",))
    html = mail_message.get_body(("html",))
    assert text is not None and html is not None
    return str(text.get_content()), str(html.get_content())


async def test_one_notification_is_one_mail_with_text_and_html(
    smtp_server: SmtpServer, metrics: Metrics
) -> None:
    sender = sender_for(smtp_server, metrics)
    assert await sender.send(job("email", email="alice@example.com")) == (Outcome.DELIVERED, "")
    [mail] = smtp_server.mails
    assert (mail.sender, mail.recipients) == ("notify@app.example", ["alice@example.com"])
    message = mail.message
    assert message["Subject"] == "bob liked your post"
    assert message["From"] == SENDER and message["To"] == "alice@example.com"
    assert message["Message-ID"] == "<rt-7@app.example>"
    assert message["X-Realtime-Idempotency-Key"] == "rt-7"
    assert message["Auto-Submitted"] == "auto-generated"
    text, html = bodies(message)
    assert "Hello alice," in text and "bob liked your post." in text
    assert "<strong>bob liked your post</strong>" in html
    assert sent(metrics, "email", "delivered") == 1


async def test_a_digest_is_one_mail_naming_the_actors_most_recent_first(
    smtp_server: SmtpServer, metrics: Metrics
) -> None:
    sender = sender_for(smtp_server, metrics)
    digest = job("email", actors=("carol", "bob", "dave", "bob", "eve"), email="a@example.com")
    assert await sender.send(digest) == (Outcome.DELIVERED, "")
    [mail] = smtp_server.mails
    assert mail.message["Subject"] == "eve and 3 others liked your post"
    assert mail.message["Message-ID"] == f"<{digest.key}@app.example>"
    assert digest.key.startswith("rt-7-")
    text, html = bodies(mail.message)
    rows = [line for line in text.splitlines() if line.startswith("- ")]
    assert [row.split(" liked")[0] for row in rows] == [
        "- eve",
        "- bob",
        "- dave",
        "- bob",
        "- carol",
    ]
    assert html.count("<li>") == 5


async def test_values_are_html_escaped_in_the_html_body_only(
    smtp_server: SmtpServer, metrics: Metrics, tmp_path: Path
) -> None:
    (tmp_path / "post_liked.subject").write_text("$actor liked $data_title\n")
    (tmp_path / "post_liked.html").write_text(
        "<p>$actor liked <em>$data_title</em>$data_missing</p>"
    )
    (tmp_path / "default.txt").write_text("$actor liked $data_title ($count)\n")
    sender = sender_for(smtp_server, metrics, templates_dir=str(tmp_path))
    data = '{"title":"<script>alert(1)</script> & co","nested":{"x":1}}'
    assert (await sender.send(job("email", data=data, email="a@example.com")))[
        0
    ] is Outcome.DELIVERED
    [mail] = smtp_server.mails
    assert mail.message["Subject"] == "bob liked <script>alert(1)</script> & co"
    text, html = bodies(mail.message)
    assert text.strip() == "bob liked <script>alert(1)</script> & co (1)"
    assert (
        html.strip() == "<p>bob liked <em>&lt;script&gt;alert(1)&lt;/script&gt; &amp; co</em></p>"
    )


def test_a_template_with_an_unknown_name_stops_start_up(tmp_path: Path, metrics: Metrics) -> None:
    (tmp_path / "default.txt").write_text("Hi $usr")
    with pytest.raises(TemplateError, match=r"default.txt: unknown names \['usr'\]"):
        EmailSender(
            EmailSettings(smtp_host="x", sender="a@b.c", templates_dir=str(tmp_path)), metrics
        )


async def test_a_subject_cannot_carry_a_header_of_its_own(
    smtp_server: SmtpServer, metrics: Metrics, tmp_path: Path
) -> None:
    (tmp_path / "default.subject").write_text("New: $data_title")
    sender = sender_for(smtp_server, metrics, templates_dir=str(tmp_path))
    data = '{"title":"hi\\r\\nBcc: victim@example.com"}'
    assert (await sender.send(job("email", data=data, email="a@example.com")))[
        0
    ] is Outcome.DELIVERED
    [mail] = smtp_server.mails
    assert mail.message["Subject"] == "New: hi Bcc: victim@example.com"
    assert mail.message["Bcc"] is None and mail.recipients == ["a@example.com"]


@pytest.mark.parametrize(
    ("answer", "expected"),
    [("550 5.1.1 no such user", Outcome.FAILED), ("450 4.2.0 mailbox busy", Outcome.RETRY)],
)
async def test_a_refused_recipient(
    smtp_server: SmtpServer, metrics: Metrics, answer: str, expected: Outcome
) -> None:
    smtp_server.rcpt_answer = answer
    outcome, detail = await sender_for(smtp_server, metrics).send(
        job("email", email="x@example.com")
    )
    assert outcome is expected
    assert detail == f"recipient refused: {answer}"
    assert smtp_server.mails == []


@pytest.mark.parametrize(
    ("answer", "expected"),
    [("554 5.6.0 rejected", Outcome.FAILED), ("451 4.3.0 try later", Outcome.RETRY)],
)
async def test_a_refused_message(
    smtp_server: SmtpServer, metrics: Metrics, answer: str, expected: Outcome
) -> None:
    smtp_server.data_answer = answer
    outcome, detail = await sender_for(smtp_server, metrics).send(
        job("email", email="x@example.com")
    )
    assert outcome is expected
    assert detail == f"SMTPDataError: {answer}"


async def test_no_or_a_bad_address_fails_without_a_connection(
    smtp_server: SmtpServer, metrics: Metrics
) -> None:
    sender = sender_for(smtp_server, metrics)
    assert await sender.send(job("email")) == (
        Outcome.FAILED,
        "bad message: no email address in the user's preferences",
    )
    outcome, detail = await sender.send(job("email", email="a@b.c, evil@example.com"))
    assert outcome is Outcome.FAILED and detail.startswith("bad message: not an email address")
    assert smtp_server.mails == [] and sent(metrics, "email", "failed") == 2


async def test_a_server_that_stops_answering_is_retried(
    smtp_server: SmtpServer, metrics: Metrics
) -> None:
    smtp_server.stall = True
    sender = sender_for(smtp_server, metrics, timeout=0.3)
    outcome, detail = await sender.send(job("email", email="a@example.com"))
    assert outcome is Outcome.RETRY
    assert "0.3" in detail
    assert smtp_server.mails == []


async def test_a_server_that_is_not_there_is_retried(metrics: Metrics) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sender = EmailSender(
        EmailSettings(smtp_host="127.0.0.1", smtp_port=port, starttls=False, sender="a@b.c"),
        metrics,
    )
    outcome, detail = await sender.send(job("email", email="a@example.com"))
    assert outcome is Outcome.RETRY and detail.startswith("SMTPConnectError")


async def test_starttls_required_but_not_offered_fails(
    smtp_server: SmtpServer, metrics: Metrics
) -> None:
    outcome, detail = await sender_for(smtp_server, metrics, starttls=True).send(
        job("email", email="a@example.com")
    )
    assert outcome is Outcome.FAILED and "STARTTLS" in detail.upper()
    assert smtp_server.mails == []


async def test_credentials_are_used_and_wrong_ones_fail(metrics: Metrics) -> None:
    server = SmtpServer(credentials=("mailer", "s3cret"))
    await server.start()
    try:
        good = sender_for(server, metrics, username="mailer", password="s3cret")
        assert await good.send(job("email", email="a@example.com")) == (Outcome.DELIVERED, "")
        assert server.logins == ["mailer"] and server.mails[0].login == "mailer"
        bad = sender_for(server, metrics, username="mailer", password="wrong")
        outcome, detail = await bad.send(job("email", email="a@example.com"))
        assert outcome is Outcome.FAILED and detail.startswith("SMTPAuthenticationError: 535")
    finally:
        await server.close()
