"""Logging filters that keep participant identifiers out of every log line."""
import logging
import re

_QUERY = re.compile(r"\?[^\s\"']*")


class RedactQueryString(logging.Filter):
    """Drop query strings (where PROLIFIC_PID and SESSION_ID arrive) from log records."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_QUERY.sub("?[redacted]", a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.msg, str) and not record.args:
            record.msg = _QUERY.sub("?[redacted]", record.msg)
        return True
