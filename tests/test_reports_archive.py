"""What is reported now (`Report.objects.reported()`, the one definition) and the signed-out archive as the
analysis app reads it (training pairs, signed reports by case), registered from above."""
from __future__ import annotations

import pytest

from tests.test_reports_support import fake_slide, signed_report
from webapp.analysis import search, training
from webapp.reports import services
from webapp.reports.archive import signed_reports_by_case, training_pairs
from webapp.reports.models import Report, ReportKind, ReportStatus
from webapp.reports.signals import report_signed

pytestmark = pytest.mark.django_db


def _amend(case, user, text: str) -> Report:
    amendment = services.start_followup(case, ReportKind.AMENDMENT, user, reason="Corrected diagnosis.")
    for section in amendment.sections.all():
        services.save_section(section, text, section.version, user)
    return services.sign(amendment, user).report


def _addendum(case, user, text: str) -> Report:
    addendum = services.start_followup(case, ReportKind.ADDENDUM, user)
    section = addendum.sections.get()
    services.save_section(section, text, section.version, user)
    return services.sign(addendum, user).report


def test_reported_is_the_latest_signed_primary_or_amendment_of_each_case(cast, case_factory):
    amended_case, plain_case, open_case = (case_factory(assigned_to=cast.path1) for _ in range(3))
    original = signed_report(amended_case, cast.path1, "Hyperplastic polyp.")
    amendment = _amend(amended_case, cast.path1, "Sessile serrated lesion.")
    addendum = _addendum(amended_case, cast.path1, "Special stains support the diagnosis.")
    plain = signed_report(plain_case, cast.path1)
    services.start_report(open_case, cast.path1)  # a draft is never reported
    assert set(Report.objects.reported()) == {amendment, plain}
    assert services.is_superseded(original) and not services.is_superseded(amendment)
    assert not services.is_superseded(addendum)  # an addendum adds; it never replaces
    texts = [text for _, _, text in services.current_text_by_part(amended_case)]
    assert texts == ["Sessile serrated lesion."]


def test_training_pairs_pair_each_reported_part_text_with_that_parts_slides(cast, case_factory):
    case = case_factory(assigned_to=cast.path1, parts=("A", "B"))
    part_a, part_b = case.parts.order_by("label")
    slides_a = [fake_slide(part_a, "a1"), fake_slide(part_a, "a2")]
    slide_b = fake_slide(part_b, "b1")
    signed_report(case, cast.path1, "First reading.")
    _amend(case, cast.path1, "Amended reading.")
    other = case_factory(assigned_to=cast.path1)
    fake_slide(other.parts.get(), "unsigned")  # not signed out: no pair
    pairs = training_pairs()
    assert sorted((p.slide_id, p.text, p.part_id) for p in pairs) == sorted(
        [(str(s.pk), "Amended reading.", part_a.pk) for s in slides_a] + [(str(slide_b.pk), "Amended reading.",
                                                                            part_b.pk)]
    )
    assert {p.case_id for p in pairs} == {case.pk}
    assert training.pair_source is training_pairs  # the reports app registered it for the analysis app


def test_signed_reports_by_case_newest_first_and_registered_for_search(cast, case_factory):
    case = case_factory(assigned_to=cast.path1)
    signed_report(case, cast.path1, "Tubular adenoma.")
    _addendum(case, cast.path1, "Addendum text.")
    found = signed_reports_by_case([case.pk])[case.pk]
    assert [row["kind"] for row in found] == ["Addendum", "Report"]
    assert "Tubular adenoma." in found[1]["text"] and found[0]["signed_at"] >= found[1]["signed_at"]
    assert search._signed_reports is signed_reports_by_case


def test_sign_out_sends_report_signed_once_the_signature_commits(cast, case_factory,
                                                                 django_capture_on_commit_callbacks):
    received = []

    def listener(sender, report, user, **kwargs):
        received.append((report.pk, Report.objects.get(pk=report.pk).status, user.pk))

    report_signed.connect(listener)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            report = signed_report(case_factory(assigned_to=cast.path1), cast.path1)
            assert received == []  # not before the commit: a listener never sees an unsigned report
    finally:
        report_signed.disconnect(listener)
    assert received == [(report.pk, ReportStatus.SIGNED, cast.path1.pk)]
