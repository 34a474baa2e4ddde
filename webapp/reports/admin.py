"""Django admin: label sets are editable; reports are inspectable, and read-only (no change, no delete)
once signed. The model and the database refuse such changes anyway; the admin just does not offer them."""
from __future__ import annotations

from django.contrib import admin

from .models import Label, LabelSet, Report, ReportSection


class LabelInline(admin.TabularInline):
    model = Label
    extra = 1


@admin.register(LabelSet)
class LabelSetAdmin(admin.ModelAdmin):
    list_display = ("name", "is_triage", "active", "order")
    inlines = [LabelInline]


class SectionInline(admin.StackedInline):
    model = ReportSection
    extra = 0
    fields = ("heading", "part", "text", "version")
    readonly_fields = ("version",)

    def has_add_permission(self, request, obj=None) -> bool:
        return obj is None or not obj.is_signed

    def has_change_permission(self, request, obj=None) -> bool:
        return obj is None or not obj.is_signed

    def has_delete_permission(self, request, obj=None) -> bool:
        return obj is None or not obj.is_signed


@admin.register(Report)
class ReportAdmin(admin.ModelAdmin):
    list_display = ("case", "kind", "status", "signed_by", "signed_at")
    list_filter = ("kind", "status")
    search_fields = ("case__accession_number",)
    inlines = [SectionInline]
    readonly_fields = ("status", "signed_by", "signed_at", "content_hash", "draft_job", "created_by", "follows")

    def has_change_permission(self, request, obj=None) -> bool:
        if obj is not None and obj.is_signed:
            return False  # shown read-only (view permission) instead
        return super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None) -> bool:
        if obj is not None and obj.is_signed:
            return False
        return super().has_delete_permission(request, obj)

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # bulk delete would bypass the per-object check
        return actions
