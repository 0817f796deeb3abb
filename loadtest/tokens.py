"""Where tokens come from: minted from the deployment's secret, or a command of yours."""

from __future__ import annotations

import shlex
import subprocess
import time
from dataclasses import dataclass

import jwt


@dataclass(frozen=True)
class TokenSource:
    secret: str | None = None
    command: str | None = None
    ttl: int = 86400

    @property
    def configured(self) -> bool:
        return bool(self.secret or self.command)

    def user(self, user: str) -> str:
        return self._token(user, None)

    def room(self, user: str, room: str) -> str:
        return self._token(user, room)

    def _token(self, user: str, room: str | None) -> str:
        if self.secret:
            now = int(time.time())
            claims: dict[str, object] = {"sub": user, "iat": now, "exp": now + self.ttl}
            if room is not None:
                claims["room"] = room
            return jwt.encode(claims, self.secret, algorithm="HS256")
        if self.command:
            # The command gets the user (and room) as arguments and prints a token.
            args = [*shlex.split(self.command), user, *([room] if room else [])]
            return subprocess.run(
                args, check=True, capture_output=True, text=True, timeout=30
            ).stdout.strip()
        raise SystemExit("give --secret or --token-command")
