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
            from webapp.audit.log import record

            response = inner(request, *args, **kwargs)
            if getattr(request, "user", None) is not None and request.user.is_authenticated:
                record(request, "admin.view" if request.method in ("GET", "HEAD") else "admin.request",
                       path=request.path[:300], method=request.method, status=response.status_code)
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
    from django.contrib.admin.models import LogEntry

    from webapp.audit.log import record

    if not created:
        return
    action = {LogEntry.ADDITION: "admin.add", LogEntry.CHANGE: "admin.change",
              LogEntry.DELETION: "admin.delete"}.get(instance.action_flag, "admin.change")
    model = instance.content_type.model_class() if instance.content_type_id else None
    record(None, action, user=instance.user, object_type=model.__name__.lower() if model else "",
           object_id=str(instance.object_id or ""), object=instance.object_repr[:200],
           message=instance.get_change_message()[:1000])
