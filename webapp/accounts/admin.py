from django.contrib import admin
from django.contrib.auth.admin import UserAdmin

from .models import User


@admin.register(User)
class PathAlignUserAdmin(UserAdmin):
    fieldsets = UserAdmin.fieldsets + (("Role and signature", {"fields": ("role", "credentials")}),)
    list_display = ("username", "role", "is_active", "is_superuser")
    list_filter = ("role", "is_active", "is_superuser")


# The Django admin is for superusers only, not for every staff member.
admin.site.has_permission = lambda request: request.user.is_active and request.user.is_superuser
