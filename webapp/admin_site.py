"""The Django admin, audited: every page a superuser opens there and every change made there is written to
the audit log like any other access (the admin bypasses the app's views, so it gets its own hook).

Installed in place of `django.contrib.admin` (settings.INSTALLED_APPS) by the documented route: an
AdminConfig whose `default_site` is `AuditedAdminSite`. Signed reports, their sections and the audit log are
registered read-only (webapp/reports/admin.py and below); the database refuses such changes anyway.
"""
from __future__ import annotations

from functools import wraps

from django.contrib import admin
from django.contrib.admin.apps import AdminConfig as DjangoAdminConfig
from django.db.models.signals import post_save

# Models and the audit log are imported in the functions: this module is loaded while the app registry is
# still being filled (it names the AdminConfig in INSTALLED_APPS).


class AuditedAdminSite(admin.AdminSite):
    site_header = "PathAlign Studio administration"

    def admin_view(self, view, cacheable=False):
        inner = super().admin_view(view, cacheable)

        @wraps(inner)
        def audited(request, *args, **kwargs):
            from django.core.exceptions import PermissionDenied

            from webapp.audit.log import record

            def log(status: int) -> None:
                if getattr(request, "user", None) is not None and request.user.is_authenticated:
                    record(request, "admin.view" if request.method in ("GET", "HEAD") else "admin.request",
                           path=request.path[:300], method=request.method, status=status)

            try:
                response = inner(request, *args, **kwargs)
            except PermissionDenied:  # e.g. a change to a read-only report: refused, and logged
                log(403)
                raise
            log(response.status_code)
            return response

        return audited


class AdminConfig(DjangoAdminConfig):
    default_site = "webapp.admin_site.AuditedAdminSite"

    def ready(self) -> None:
        from django.contrib.admin.models import LogEntry

        super().ready()
        post_save.connect(_audit_admin_change, sender=LogEntry, dispatch_uid="webapp.admin_site.change")


def _audit_admin_change(sender, instance, created: bool, **kwargs) -> None:
    """Django writes a LogEntry for each add, change and delete made in the admin: mirror it."""
    from django.contrib.admin.models import ADDITION, CHANGE, DELETION

    from webapp.audit.log import record

    if not created:
        return
    action = {ADDITION: "admin.add", CHANGE: "admin.change", DELETION: "admin.delete"}.get(
        instance.action_flag, "admin.change")
    try:
        obj = instance.get_edited_object()  # gone after a deletion: then its type and id as text
    except Exception:  # noqa: BLE001 - ObjectDoesNotExist or a removed model; the log entry still says what
        obj = None
    case = getattr(obj, "case_id", None)
    record(None, action, user=instance.user, obj=obj, case=case, model=str(instance.content_type),
           object_pk=str(instance.object_id or ""), object=instance.object_repr[:200],
           message=instance.get_change_message()[:1000])
