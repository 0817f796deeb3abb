"""A request aiohttp cannot parse is logged as one line, without a traceback.

aiohttp answers such a request 400 and logs it at ERROR with the parser's traceback
(a NUL byte in a header, a malformed header line, a bad request line on a kept-alive
connection). That is the client's error, not the server's, and any client can fill
the log with it: one INFO line says who sent what.
"""

from __future__ import annotations

import logging

from aiohttp.http_exceptions import HttpProcessingError

LOGGER = "aiohttp.server"


class ParseErrorsOnOneLine(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            remote = record.args[0] if isinstance(record.args, tuple) and record.args else None
            reason = (error.message or type(error).__name__).splitlines()[0].rstrip(": ")
            record.msg = "refused a malformed HTTP request from %s: %s"
            record.args = (remote, reason)
            record.exc_info = None
            record.exc_text = None
            record.levelno = logging.INFO
            record.levelname = logging.getLevelName(logging.INFO)
        return True


def install() -> None:
    """Add the filter to aiohttp's server logger, once per process."""
    logger = logging.getLogger(LOGGER)
    if not any(isinstance(f, ParseErrorsOnOneLine) for f in logger.filters):
        logger.addFilter(ParseErrorsOnOneLine())
