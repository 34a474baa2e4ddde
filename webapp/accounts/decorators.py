"""View decorators for roles. Access to a particular case goes through `webapp.cases.access` instead."""
from functools import wraps

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied


def role_required(*checks: str):
    """Allow the view to users for whom any of the named User properties is true (e.g. "is_lab_admin")."""

    def decorator(view):
        @wraps(view)
        @login_required
        def wrapped(request, *args, **kwargs):
            if not any(getattr(request.user, check) for check in checks):
                raise PermissionDenied
            return view(request, *args, **kwargs)

        return wrapped

    return decorator


lab_admin_required = role_required("is_lab_admin")
