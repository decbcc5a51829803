"""Logging filters that keep participant identifiers out of every log line."""
import logging
import re

_QUERY = re.compile(r"\?[^\s\"']*")
_CLIENT_ADDRESS = re.compile(r"^\S+ - ")


class RedactQueryString(logging.Filter):
    """Drop query strings (where PROLIFIC_PID and SESSION_ID arrive) and client addresses from log messages."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = _QUERY.sub("?[redacted]", message)
        if record.name == "uvicorn.access":
            redacted = _CLIENT_ADDRESS.sub("", redacted)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True
