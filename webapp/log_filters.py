"""Logging filters, in a module of their own: LOGGING loads them while Django configures logging, before any
app's models can be imported."""
from __future__ import annotations

import logging
import re

_QUERY = re.compile(r"(\?[^\s\"']*)")


class RedactQueryStringFilter(logging.Filter):
    """Drop query strings from log lines (request lines of runserver/gunicorn, Django's request warnings).

    App URLs carry only integer ids and UUIDs in their paths, but a search form's GET parameters could hold an
    accession number or a pseudonym; the path is enough to debug with.

    The line is formatted once, here, and only a line with a "?" is searched: gunicorn's access log passes a
    dict of some 60 values (every request header and WSGI variable), and searching each of them cost more CPU
    than serving a tile (docs/operations.md, "Load figures").
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError, KeyError):  # a malformed call: the handler reports it, as without us
            record.msg, record.args = "(unformattable log message dropped)", None
            return True
        if "?" in message:
            message = _QUERY.sub("?…", message)
        record.msg, record.args = message, None
        return True
