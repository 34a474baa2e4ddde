"""Who may see and change a case. Every view that touches case data resolves it through these helpers.

- Lab admins (and superusers) see and edit every case.
- Pathologists see the cases assigned to them and work on them (draft, sign) but do not edit accessioning.
- Evaluators and everyone else see no case here; the evaluation app grants its own, narrower views.
Outsiders get 404 (the case's existence is not revealed); read-only users asking to write get 403.
"""
from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404

from .models import Case, Part


def visible_cases(user) -> QuerySet[Case]:
    if not user.is_authenticated or not user.is_active:
        return Case.objects.none()
    if user.is_lab_admin:
        return Case.objects.all()
    if user.is_pathologist:
        return Case.objects.filter(assigned_to=user)
    return Case.objects.none()


def can_edit_accessioning(user) -> bool:
    return user.is_authenticated and user.is_lab_admin


def can_work_on(user, case: Case) -> bool:
    """Draft, edit and sign the case's report: only the pathologist it is assigned to."""
    return user.is_authenticated and user.is_pathologist and case.assigned_to_id == user.pk


def get_case_for_user(user, case_id: int, *, edit: bool = False) -> Case:
    try:
        case = visible_cases(user).get(pk=case_id)
    except (Case.DoesNotExist, ValueError, TypeError):
        raise Http404("No such case.") from None
    if edit and not can_edit_accessioning(user):
        raise PermissionDenied
    return case


def get_part_for_user(user, case_id: int, part_id: int, *, edit: bool = False) -> Part:
    case = get_case_for_user(user, case_id, edit=edit)
    try:
        return case.parts.get(pk=part_id)
    except (Part.DoesNotExist, ValueError, TypeError):
        raise Http404("No such part.") from None
