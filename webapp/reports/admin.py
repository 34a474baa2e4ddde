"""Django admin: label sets are editable; reports, their sections, AI drafts and versions are read-only
there, signed or not. Text is written only through the report workspace (which versions every save, checks
the optimistic lock and audits); the database refuses a text change without a new version anyway
(migration 0005). Every admin page view and change is audited (webapp/admin_site.py)."""
from __future__ import annotations

from django.contrib import admin

from .models import Label, LabelSet, Report, ReportSection


class LabelInline(admin.TabularInline):
    model = Label
    extra = 1
    fields = ("name", "prompts", "alert", "order", "code_system", "code")


@admin.register(LabelSet)
class LabelSetAdmin(admin.ModelAdmin):
    list_display = ("name", "is_triage", "active", "confidence_threshold", "order")
    inlines = [LabelInline]


class ReadOnlyAdmin(admin.ModelAdmin):
    """Shown, never changed: no add, change or delete, and no bulk actions."""

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def get_actions(self, request):
        return {}


class SectionInline(admin.StackedInline):
    model = ReportSection
    extra = 0
    fields = ("heading", "part", "text", "version", "updated_by", "updated_at")
    readonly_fields = fields

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Report)
class ReportAdmin(ReadOnlyAdmin):
    list_display = ("case", "kind", "status", "signed_by", "signed_at")
    list_filter = ("kind", "status")
    search_fields = ("case__accession_number",)
    inlines = [SectionInline]
    readonly_fields = ("case", "kind", "status", "follows", "reason", "created_by", "signed_by", "signed_at",
                       "content_hash", "snapshot_hash", "snapshot", "no_slides_reason", "draft_job")
    exclude = ()


@admin.register(ReportSection)
class ReportSectionAdmin(ReadOnlyAdmin):
    list_display = ("report", "heading", "version", "updated_by", "updated_at")
    search_fields = ("report__case__accession_number",)
