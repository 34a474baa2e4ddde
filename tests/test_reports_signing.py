"""Sign-out, immutability (app, admin, endpoint and database), access, optimistic locking, follow-ups."""
from __future__ import annotations

import pytest
from django.db import DatabaseError, connection, models, transaction
from django.urls import reverse

from tests.conftest import PASSWORD
from tests.test_reports_support import drafted_report, signed_report
from webapp.audit.models import AuditEvent
from webapp.cases.models import CaseStatus
from webapp.reports import services
from webapp.reports.models import Report, ReportLocked, ReportSection, ReportStatus, ReportVersion

pytestmark = pytest.mark.django_db


def sign_post(client, report, password=PASSWORD):
    data = {"password": password}
    data.update({f"section_version_{s.pk}": s.version for s in report.sections.all()})
    return client.post(reverse("report_sign", args=[report.pk]), data)


# --- the electronic signature ------------------------------------------------------------------------
def test_sign_out_needs_the_password_again(cast, case_factory, client_for):
    case = case_factory(assigned_to=cast.path1)
    report = drafted_report(case, cast.path1)
    client = client_for(cast.path1)
    refused = sign_post(client, report, password="not-my-password")
    # Back to the workspace with the reason (tests/test_plain_pages.py: what the page then shows).
    assert refused.status_code == 303 and refused["Location"] == reverse("report_workspace", args=[case.pk]) + "#sign"
    assert b"Wrong password" in client.get(refused["Location"]).content
    assert Report.objects.get(pk=report.pk).status == ReportStatus.DRAFT
    sign_post(client, report, password="wrong-again")
    assert AuditEvent.objects.filter(action="report.sign_refused", object_id=str(report.pk)).count() == 2

    response = sign_post(client, report)
    assert response.status_code == 302
    report.refresh_from_db()
    case.refresh_from_db()
    assert report.status == ReportStatus.SIGNED and report.signed_by == cast.path1 and report.signed_at
    assert report.content_hash == report.compute_hash()
    assert case.status == CaseStatus.SIGNED_OUT
    event = AuditEvent.objects.get(action="report.sign", object_id=str(report.pk))
    assert event.before["status"] == "draft" and "Tubular adenoma" in event.after["text"]


def test_signing_text_one_has_not_seen_is_refused(cast, case_factory, client_for):
    case = case_factory(assigned_to=cast.path1)
    report = drafted_report(case, cast.path1)
    seen = {s.pk: s.version for s in report.sections.all()}
    section = report.sections.first()
    services.save_section(section, "Changed in another tab.", section.version, cast.path1)
    data = {"password": PASSWORD, **{f"section_version_{k}": v for k, v in seen.items()}}
    response = client_for(cast.path1).post(reverse("report_sign", args=[report.pk]), data)
    assert response.status_code == 302
    assert Report.objects.get(pk=report.pk).status == ReportStatus.DRAFT


def test_only_the_assigned_pathologist_signs(cast, case_factory, client_for):
    case = case_factory(assigned_to=cast.path1)
    report = drafted_report(case, cast.path1)
    assert sign_post(client_for(cast.path2), report).status_code == 404  # not even visible
    assert sign_post(client_for(cast.outsider), report).status_code == 404
    assert sign_post(client_for(cast.evaluator), report).status_code == 404
    assert sign_post(client_for(cast.admin), report).status_code == 403  # reads, never signs
    assert sign_post(client_for(None), report).status_code == 302  # to the login page
    assert Report.objects.get(pk=report.pk).status == ReportStatus.DRAFT


def test_read_and_work_access(cast, case_factory, client_for):
    case = case_factory(assigned_to=cast.path1)
    report = drafted_report(case, cast.path1)
    url = reverse("report_workspace", args=[case.pk])
    assert client_for(cast.path1).get(url).status_code == 200
    admin_page = client_for(cast.admin).get(url)
    assert admin_page.status_code == 200 and b"Sign out report" not in admin_page.content
    for user in (cast.path2, cast.evaluator, cast.outsider):
        assert client_for(user).get(url).status_code == 404
    section = report.sections.first()
    save = reverse("report_section_save", args=[report.pk, section.pk])
    assert client_for(cast.admin).post(save, {"text": "x", "version": section.version}).status_code == 403
    assert client_for(cast.path2).post(save, {"text": "x", "version": section.version}).status_code == 404
    draft = reverse("report_draft", args=[case.pk])
    assert client_for(cast.path2).post(draft, {"method": "qformer"}).status_code == 404
    assert client_for(cast.admin).get(reverse("report_print", args=[case.pk])).status_code == 200
    assert client_for(cast.path2).get(reverse("report_pdf", args=[case.pk])).status_code == 404
    assert AuditEvent.objects.filter(action="report.view", case_id=case.pk).exists()


# --- nothing changes a signed report -------------------------------------------------------------------
def test_orm_paths_refuse_a_signed_report(cast, case_factory):
    report = signed_report(case_factory(assigned_to=cast.path1), cast.path1)
    report.reason = "tamper"
    with pytest.raises(ReportLocked):
        report.save()
    with pytest.raises(ReportLocked):
        Report.objects.filter(pk=report.pk).update(reason="tamper")
    with pytest.raises(ReportLocked):
        report.delete()
    with pytest.raises(ReportLocked):
        Report.objects.filter(pk=report.pk).delete()
    section = report.sections.first()
    section.text = "tamper"
    with pytest.raises(ReportLocked):
        section.save()
    with pytest.raises(ReportLocked):
        services.save_section(section, "tamper", section.version, cast.path1)
    # Past the app's guards (plain QuerySet.update): the database trigger refuses.
    with pytest.raises(DatabaseError, match="signed out"), transaction.atomic():
        models.QuerySet.update(Report.objects.filter(pk=report.pk), reason="tamper")
    with pytest.raises(DatabaseError, match="signed out"), transaction.atomic():
        models.QuerySet.update(ReportSection.objects.filter(report=report), text="tamper")
    assert ReportSection.objects.get(pk=section.pk).text.startswith("Tubular adenoma")


@pytest.mark.parametrize("sql", [
    "UPDATE reports_report SET reason = 'tamper' WHERE id = %(report)s",
    "UPDATE reports_report SET status = 'draft' WHERE id = %(report)s",
    "DELETE FROM reports_report WHERE id = %(report)s",
    "UPDATE reports_reportsection SET text = 'tamper' WHERE report_id = %(report)s",
    "DELETE FROM reports_reportsection WHERE report_id = %(report)s",
    "UPDATE reports_reportversion SET text = 'tamper' WHERE section_id = %(section)s",
    "DELETE FROM reports_reportversion WHERE section_id = %(section)s",
    "INSERT INTO reports_reportversion (section_id, number, text, source, saved_at) "
    "VALUES (%(section)s, 99, 'tamper', 'edit', now())",
])
def test_raw_sql_is_refused_by_the_trigger(cast, case_factory, sql):
    report = signed_report(case_factory(assigned_to=cast.path1), cast.path1)
    section = report.sections.first()
    with pytest.raises(DatabaseError, match="signed out|append-only"), transaction.atomic(), connection.cursor() as cur:
        cur.execute(sql, {"report": report.pk, "section": section.pk})
    assert Report.objects.get(pk=report.pk).status == ReportStatus.SIGNED


def test_versions_are_append_only_even_in_a_draft(cast, case_factory):
    report = drafted_report(case_factory(assigned_to=cast.path1), cast.path1)
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        ReportVersion.objects.filter(section__report=report).update(text="rewritten history")


def test_crafted_post_to_the_edit_endpoint_is_refused(cast, case_factory, client_for):
    report = signed_report(case_factory(assigned_to=cast.path1), cast.path1)
    section = report.sections.first()
    url = reverse("report_section_save", args=[report.pk, section.pk])
    response = client_for(cast.path1).post(url, {"text": "tamper", "version": section.version})
    assert response.status_code == 409
    assert ReportSection.objects.get(pk=section.pk).text.startswith("Tubular adenoma")
    again = sign_post(client_for(cast.path1), report)
    assert again.status_code == 302 and Report.objects.get(pk=report.pk).signed_at == report.signed_at


def test_django_admin_shows_a_signed_report_read_only(cast, case_factory, client_for, django_user_model):
    root = django_user_model.objects.create_superuser("root", password=PASSWORD, role="lab_admin")
    report = signed_report(case_factory(assigned_to=cast.path1), cast.path1)
    client = client_for(root)
    change = reverse("admin:reports_report_change", args=[report.pk])
    page = client.get(change)
    assert page.status_code == 200 and b'name="_save"' not in page.content
    assert client.post(change, {"reason": "tamper", "kind": "report"}).status_code == 403
    assert client.post(reverse("admin:reports_report_delete", args=[report.pk]), {"post": "yes"}).status_code == 403
    assert Report.objects.get(pk=report.pk).reason == ""


# --- concurrent edits ----------------------------------------------------------------------------------
def test_concurrent_edits_get_a_409_and_lose_nothing(cast, case_factory, client_for):
    case = case_factory(assigned_to=cast.path1)
    report = drafted_report(case, cast.path1, text="Original.")
    section = report.sections.first()
    base = section.version
    url = reverse("report_section_save", args=[report.pk, section.pk])
    tab_a, tab_b = client_for(cast.path1), client_for(cast.path1)
    first = tab_a.post(url, {"text": "Text from tab A.", "version": base}, HTTP_HX_REQUEST="true")
    assert first.status_code == 200 and f'value="{base + 1}"'.encode() in first.content
    stale = tab_b.post(url, {"text": "Text from tab B.", "version": base}, HTTP_HX_REQUEST="true")
    assert stale.status_code == 409
    assert b"Text from tab A." in stale.content and b"Not saved" in stale.content  # the other text shown
    assert ReportSection.objects.get(pk=section.pk).text == "Text from tab A."
    keep_mine = tab_b.post(url, {"text": "Text from tab B.", "version": base + 1})
    assert keep_mine.status_code == 200
    texts = list(section.versions.order_by("number").values_list("text", flat=True))
    assert texts[-2:] == ["Text from tab A.", "Text from tab B."]  # both kept in the history
    assert AuditEvent.objects.filter(action="report.edit_conflict", case_id=case.pk).count() == 1
    assert client_for(cast.path1).post(url, {"text": "x"}).status_code == 400  # a version is required


def test_history_diff_and_restore(cast, case_factory, client_for):
    case = case_factory(assigned_to=cast.path1)
    report = drafted_report(case, cast.path1, text="Tubular adenoma.")
    section = report.sections.first()
    services.save_section(section, "Tubular adenoma with high-grade dysplasia.", section.version, cast.path1)
    client = client_for(cast.path1)
    page = client.get(reverse("report_section_history", args=[report.pk, section.pk]), HTTP_HX_REQUEST="true")
    assert page.status_code == 200 and (b"diff_add" in page.content or b"diff_chg" in page.content)
    section.refresh_from_db()
    restore = reverse("report_section_restore", args=[report.pk, section.pk, 1])
    assert client.post(restore, {"version": section.version}).status_code == 302
    section.refresh_from_db()
    assert section.text == "Tubular adenoma." and section.version == 3
    assert section.versions.get(number=3).source == "restore"
    event = AuditEvent.objects.get(action="report.restore")
    assert event.before["text"].endswith("high-grade dysplasia.") and event.after["text"] == "Tubular adenoma."


# --- after sign-out --------------------------------------------------------------------------------------
def test_amendment_and_addendum(cast, case_factory, client_for):
    case = case_factory(assigned_to=cast.path1)
    original = signed_report(case, cast.path1, text="Tubular adenoma.")
    client = client_for(cast.path1)
    followup = reverse("report_followup", args=[case.pk])
    client.post(followup, {"kind": "amendment", "reason": ""})
    assert not case.reports.filter(kind="amendment").exists()  # the reason is mandatory
    client.post(followup, {"kind": "amendment", "reason": "Deeper levels show invasion."})
    amendment = case.reports.get(kind="amendment")
    assert amendment.follows == original and amendment.sections.first().text == "Tubular adenoma."
    section = amendment.sections.first()
    services.save_section(section, "Invasive adenocarcinoma arising in a tubular adenoma.", section.version,
                          cast.path1)
    assert sign_post(client, amendment).status_code == 302
    case.refresh_from_db()
    assert case.status == CaseStatus.AMENDED
    assert original.sections.first().text == "Tubular adenoma."  # the original stays, readable
    assert services.is_superseded(Report.objects.get(pk=original.pk))
    page = client.get(reverse("report_workspace", args=[case.pk])).content.decode()
    assert "Deeper levels show invasion." in page and "superseded by an amendment" in page

    client.post(followup, {"kind": "addendum"})
    addendum = case.reports.get(kind="addendum")
    section = addendum.sections.first()
    services.save_section(section, "MMR immunohistochemistry: retained.", 0, cast.path1)
    assert sign_post(client, addendum).status_code == 302
    assert Report.objects.get(pk=addendum.pk).status == ReportStatus.SIGNED
    statuses = [client.get(reverse("report_fhir", args=[r.pk])).json()["status"]
                for r in (original, amendment, addendum)]
    assert statuses == ["final", "amended", "appended"]


def test_start_report_refuses_a_second_primary(cast, case_factory):
    case = case_factory(assigned_to=cast.path1)
    signed_report(case, cast.path1)
    with pytest.raises(services.ReportError):
        services.start_report(case, cast.path1)
