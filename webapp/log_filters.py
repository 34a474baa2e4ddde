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
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and "?" in record.msg:
            record.msg = _QUERY.sub("?…", record.msg)
        if record.args:
            if isinstance(record.args, dict):
                record.args = {k: _QUERY.sub("?…", v) if isinstance(v, str) else v for k, v in record.args.items()}
            else:
                record.args = tuple(_QUERY.sub("?…", a) if isinstance(a, str) else a for a in record.args)
        return True
