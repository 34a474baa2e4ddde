"""Signals the accounts app sends; the audit app (a floor above) records them.

`user_managed(sender=User, request, target, action, before, after)`: a lab admin created or edited a user,
or a user changed their password. `action` is one of user_created, user_updated, role_changed,
user_deactivated, user_reactivated, password_changed; `before`/`after` hold the changed fields (never a
password or its hash).
"""
from django.dispatch import Signal

user_managed = Signal()

AUDITED_FIELDS = ("username", "first_name", "last_name", "credentials", "email", "role", "is_active")


def snapshot(user) -> dict:
    return {field: getattr(user, field) for field in AUDITED_FIELDS}


def send_changes(request, target, before: dict | None) -> None:
    """One event per kind of change: creation; else a role change, a (de)activation and other edits."""
    after = snapshot(target)
    if before is None:
        user_managed.send(sender=type(target), request=request, target=target, action="user_created",
                          before=None, after=after)
        return
    changed = {k for k in AUDITED_FIELDS if before.get(k) != after.get(k)}
    if "role" in changed:
        user_managed.send(sender=type(target), request=request, target=target, action="role_changed",
                          before={"role": before["role"]}, after={"role": after["role"]})
    if "is_active" in changed:
        user_managed.send(sender=type(target), request=request, target=target,
                          action="user_reactivated" if after["is_active"] else "user_deactivated",
                          before={"is_active": before["is_active"]}, after={"is_active": after["is_active"]})
    rest = changed - {"role", "is_active"}
    if rest:
        user_managed.send(sender=type(target), request=request, target=target, action="user_updated",
                          before={k: before[k] for k in sorted(rest)}, after={k: after[k] for k in sorted(rest)})
