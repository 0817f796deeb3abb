"""Errors over HTTP: ``{"error": {"code": ..., "message": ...}}`` with a fitting status."""

from __future__ import annotations

from aiohttp import web

from protocol import ErrorCode

STATUS = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.INTERNAL: 500,
}

CODE_FOR_STATUS = {status: code for code, status in STATUS.items()} | {
    405: ErrorCode.BAD_REQUEST,
    415: ErrorCode.BAD_REQUEST,
    422: ErrorCode.BAD_REQUEST,
}


def json_error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def error_response(code: ErrorCode, message: str) -> web.Response:
    return json_error(STATUS[code], str(code), message)
