"""Who may read and work on reports: one helper per resource, on top of `webapp.cases.access`.

Reading follows the case (the assigned pathologist and lab admins; everyone else gets 404). Drafting,
editing, deciding and signing need `can_work_on` (the assigned pathologist only): others who can read get
403, and those who cannot read still get 404, so a case's existence is never revealed.
"""
from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.http import Http404

from webapp.cases.access import can_work_on, get_case_for_user, visible_cases
from webapp.cases.models import Case

from .models import Classification, Report, ReportSection


def get_case_for_report(user, case_id: int, *, work: bool = False) -> Case:
    case = get_case_for_user(user, case_id)
    if work and not can_work_on(user, case):
        raise PermissionDenied
    return case


def get_report_for_user(user, report_id: int, *, work: bool = False) -> Report:
    try:
        report = Report.objects.select_related("case").get(pk=report_id, case__in=visible_cases(user))
    except (Report.DoesNotExist, ValueError, TypeError):
        raise Http404("No such report.") from None
    if work and not can_work_on(user, report.case):
        raise PermissionDenied
    return report


def get_section_for_user(user, report_id: int, section_id: int, *, work: bool = False) -> ReportSection:
    report = get_report_for_user(user, report_id, work=work)
    try:
        return report.sections.select_related("report__case").get(pk=section_id)
    except (ReportSection.DoesNotExist, ValueError, TypeError):
        raise Http404("No such section.") from None


def get_classification_for_user(user, report_id: int, classification_id: int, *, work: bool = False) -> Classification:
    report = get_report_for_user(user, report_id, work=work)
    try:
        return Classification.objects.select_related("label_set", "section").get(
            pk=classification_id, section__report=report
        )
    except (Classification.DoesNotExist, ValueError, TypeError):
        raise Http404("No such classification.") from None
