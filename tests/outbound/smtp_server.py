"""A real SMTP server (aiosmtpd) on loopback, in the test's own loop, keeping what it gets.

Tests make it refuse recipients (``rcpt_answer``), refuse the message
(``data_answer``), hold the answer to DATA until it closes (``stall``) or accept
AUTH for one username and password (``credentials``).
"""

from __future__ import annotations

import asyncio
import email
import email.policy
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session


@dataclass
class Mail:
    sender: str
    recipients: list[str]
    message: EmailMessage
    raw: bytes
    login: str | None


@dataclass
class SmtpServer:
    mails: list[Mail] = field(default_factory=list)
    rcpt_answer: str | None = None
    data_answer: str | None = None
    stall: bool = False
    credentials: tuple[str, str] | None = None
    logins: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._server: asyncio.Server | None = None
        self._release = asyncio.Event()
        self._sessions: dict[int, str] = {}
        self.port = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()

        def protocol() -> SMTP:
            return SMTP(
                self,
                hostname="127.0.0.1",
                loop=loop,
                authenticator=self._authenticate,
                # AUTH offered on a plain connection (loopback); not demanded, since
                # aiosmtpd warns about that combination (an error under pytest).
                auth_require_tls=False,
            )

        self._server = await loop.create_server(protocol, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        self._release.set()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        assert isinstance(data, LoginPassword)
        login = data.login.decode()
        ok = self.credentials == (login, data.password.decode())
        if ok:
            self.logins.append(login)
        return AuthResult(success=ok, handled=False, auth_data=login if ok else None)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.rcpt_answer is not None:
            return self.rcpt_answer
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.stall:
            await self._release.wait()
            return "451 closing"
        if self.data_answer is not None:
            return self.data_answer
        raw = envelope.original_content or b""
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        auth = session.auth_data
        self.mails.append(
            Mail(
                str(envelope.mail_from),
                list(envelope.rcpt_tos),
                message,
                raw,
                auth if isinstance(auth, str) else None,
            )
        )
        return "250 Message accepted"
