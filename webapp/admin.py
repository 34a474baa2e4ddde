"""Admin registrations that belong to no single app: the audit log, read-only (see webapp/admin_site.py)."""
from django.contrib import admin

from webapp.audit.models import AuditEvent


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """The audit log is append-only: readable here, never changed or deleted."""

    list_display = ("at", "username", "action", "case_id", "object_type", "object_id", "ip_address")
    list_filter = ("action",)
    search_fields = ("username", "action", "object_id")

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
