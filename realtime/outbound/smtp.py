"""Email over SMTP (aiosmtplib): one message per job, plain text and HTML, from the
templates (``templates.py``); a digest job is one message for all its rows.

The Message-ID is made from the job's idempotency key (``<rt-12@sender-domain>``),
and ``X-Realtime-Idempotency-Key`` carries the key itself: a message sent twice (a
retry after a lost answer) has the same id both times, and mail systems that
deduplicate by Message-ID show it once.

Outcomes: accepted is delivered; an SMTP 4xx answer, a timeout, a refused or lost
connection is transient; a 5xx answer (a refused address, authentication failed),
a server without the STARTTLS that ``email.starttls`` requires, or no address at
all is permanent. Each SMTP step waits at most ``email.timeout``.
"""

from __future__ import annotations

import asyncio
import email.errors
import email.policy
import email.utils
import re
import time
from email.message import EmailMessage
from typing import Final

import aiosmtplib

from ..config import EmailSettings
from ..metrics import Metrics
from .jobs import Job, Outcome
from .templates import Templates

# Connect, EHLO, STARTTLS, EHLO, AUTH, MAIL, RCPT, DATA: each bounded by the
# timeout; the whole exchange by this many of them.
STEPS: Final = 8
ADDRESS: Final = re.compile(r"[^@\s<>,;\"]+@[^@\s<>,;\"]+")


class EmailSender:
    transport = "email"

    def __init__(self, settings: EmailSettings, metrics: Metrics) -> None:
        """Reads the templates: build it at start-up."""
        self._settings = settings
        self._metrics = metrics
        self._templates = Templates(settings.templates_dir)
        _, self._from = email.utils.parseaddr(settings.sender)
        self._domain = self._from.rpartition("@")[2] or "realtime.invalid"

    async def send(self, job: Job) -> tuple[Outcome, str]:
        started = time.perf_counter()
        outcome, detail = await self._send(job)
        self._metrics.outbound_done(self.transport, outcome, time.perf_counter() - started)
        return outcome, detail

    def message(self, job: Job) -> EmailMessage:
        """The whole message (ValueError: the address cannot be put in a header)."""
        if not job.email:
            raise ValueError("no email address in the user's preferences")
        if not ADDRESS.fullmatch(job.email):
            raise ValueError(f"not an email address: {job.email!r:.80}")
        rendered = self._templates.render(job)
        message = EmailMessage(policy=email.policy.SMTP)
        message["From"] = self._settings.sender
        message["To"] = job.email
        message["Subject"] = rendered.subject
        message["Date"] = email.utils.formatdate(usegmt=True)
        message["Message-ID"] = f"<{job.key}@{self._domain}>"
        message["X-Realtime-Idempotency-Key"] = job.key
        # RFC 3834: sent by a program; auto-responders do not answer it.
        message["Auto-Submitted"] = "auto-generated"
        message.set_content(rendered.text)
        message.add_alternative(rendered.html, subtype="html")
        return message

    async def _send(self, job: Job) -> tuple[Outcome, str]:
        try:
            message = self.message(job)
        except (ValueError, email.errors.MessageError) as error:
            return Outcome.FAILED, f"bad message: {error}"
        assert job.email is not None
        settings = self._settings
        try:
            async with asyncio.timeout(settings.timeout * STEPS):
                await aiosmtplib.send(
                    message,
                    sender=self._from,
                    recipients=[job.email],
                    hostname=settings.smtp_host,
                    port=settings.smtp_port,
                    username=settings.username or None,
                    password=settings.password or None,
                    start_tls=settings.starttls,
                    timeout=settings.timeout,
                )
        except aiosmtplib.SMTPRecipientsRefused as error:
            detail = "; ".join(f"{r.code} {r.message}" for r in error.recipients)
            transient = any(400 <= r.code < 500 for r in error.recipients)
            return (Outcome.RETRY if transient else Outcome.FAILED), f"recipient refused: {detail}"
        except aiosmtplib.SMTPResponseException as error:
            outcome = Outcome.RETRY if 400 <= error.code < 500 else Outcome.FAILED
            return outcome, f"{type(error).__name__}: {error.code} {error.message}"
        except TimeoutError:
            return Outcome.RETRY, f"SMTP server did not answer within {settings.timeout:g}s"
        except OSError as error:
            # Refused and lost connections (aiosmtplib's are ConnectionErrors too).
            return Outcome.RETRY, f"{type(error).__name__}: {error}"
        except aiosmtplib.SMTPException as error:
            # The rest is what the server lacks (STARTTLS, AUTH): settings to fix.
            return Outcome.FAILED, f"{type(error).__name__}: {error}"
        return Outcome.DELIVERED, ""
