"""Error codes, close codes and the protocol's exceptions.

The error contract of this package: decoding and validating input raises
``FrameError`` (the frame is not a message at all: close with 4000) or returns a
``Rejected`` command (a command error: answer it, keep the connection). Any other
exception escaping ``protocol`` is a bug.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class ErrorCode(StrEnum):
    BAD_REQUEST = "bad_request"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    TOO_LARGE = "too_large"
    RATE_LIMITED = "rate_limited"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


class CloseCode(IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    INTERNAL_ERROR = 1011
    RESTARTING = 1012
    BAD_FRAME = 4000
    UNAUTHORIZED = 4001
    FORBIDDEN = 4003
    # Extension: the backend asked to disconnect this user (REST `disconnect`).
    DISCONNECTED = 4004
    LIMIT = 4008
    TOO_SLOW = 4009
    TOKEN_EXPIRED = 4010
    TOO_MANY_CONNECTIONS = 4029


class ProtocolError(Exception):
    """Base of every error this package raises."""


class FrameError(ProtocolError):
    """The frame is not a valid message: the connection closes with 4000."""


class CommandError(ProtocolError):
    """A command could not be carried out; answered with ``code`` and ``message``."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def bad_request(message: str) -> CommandError:
    return CommandError(ErrorCode.BAD_REQUEST, message)
