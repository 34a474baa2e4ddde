"""The client's address, for the lockout (django-axes' AXES_CLIENT_IP_CALLABLE) and the audit log alike.

REMOTE_ADDR, unless the deployment runs behind trusted proxies (`PATHALIGN_BEHIND_PROXY=1`, production
settings set TRUSTED_PROXY_HOPS to `PATHALIGN_PROXY_COUNT`): then the address the outermost trusted proxy
appended to X-Forwarded-For. Entries further left were written by the client and are never trusted.
Finding (issue 16): behind a proxy every audit event recorded the proxy's address, and the lockout's own
proxy settings were inert (they configure django-ipware, which is not installed), so it locked the proxy.
"""
from __future__ import annotations

import ipaddress

from django.conf import settings


def client_address(request) -> str | None:
    remote = request.META.get("REMOTE_ADDR") or None
    hops = getattr(settings, "TRUSTED_PROXY_HOPS", 0)
    if not hops:
        return remote
    forwarded = [part.strip() for part in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if part.strip()]
    if len(forwarded) < hops:
        return remote  # not through the whole proxy chain: nothing trustworthy beyond the socket
    candidate = forwarded[-hops]
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        return remote
