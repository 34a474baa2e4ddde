"""Deploy checks for the signed record's exports."""
from __future__ import annotations

from django.conf import settings
from django.core import checks


@checks.register(checks.Tags.security, deploy=True)
def public_base_url(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    """FHIR exports name each version's PDF by URL: in production that must be the lab's public address,
    not whatever host a request happened to use (127.0.0.1 behind a proxy)."""
    base = settings.PUBLIC_BASE_URL
    if not base:
        return [checks.Warning(
            "PATHALIGN_PUBLIC_BASE_URL is not set: FHIR exports will name PDF URLs after the request's host.",
            hint="Set it to the address other systems reach this app at, e.g. https://pathology.example.org.",
            id="pathalign.W101")]
    if not base.startswith("https://"):
        return [checks.Warning("PATHALIGN_PUBLIC_BASE_URL is not an https:// address.", id="pathalign.W102")]
    return []
