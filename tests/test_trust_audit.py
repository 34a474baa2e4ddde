"""The audit log: append-only in the database, written by the case and slide views, browsable, filterable
and exportable by lab admins, with a per-case access report and refused attempts recorded."""
from __future__ import annotations

import csv
import io
import json
from datetime import timedelta

import pytest
from django.db import DatabaseError, connection, transaction
from django.urls import reverse
from django.utils import timezone

from webapp.audit.log import record
from webapp.audit.models import AuditEvent


# --- append-only ------------------------------------------------------------------------------------
@pytest.fixture
def event(cast):
    return record(None, "view_case", user=cast.path1, case=1, note="x")


@pytest.mark.parametrize("attempt", [
    "orm_save", "orm_update", "orm_delete", "orm_queryset_delete", "sql_update", "sql_delete",
])
def test_audit_log_refuses_update_and_delete(event, attempt):
    def run():
        if attempt == "orm_save":
            event.action = "tampered"
            event.save()
        elif attempt == "orm_update":
            AuditEvent.objects.filter(pk=event.pk).update(action="tampered")
        elif attempt == "orm_delete":
            event.delete()
        elif attempt == "orm_queryset_delete":
            AuditEvent.objects.all().delete()
        else:
            with connection.cursor() as cursor:
                sql = ("UPDATE audit_auditevent SET action = 'tampered' WHERE id = %s" if attempt == "sql_update"
                       else "DELETE FROM audit_auditevent WHERE id = %s")
                cursor.execute(sql, [event.pk])

    # The application role has no UPDATE/DELETE on the table at all; the trigger (refusing even the owner,
    # tests/test_trust_db_roles.py) stands behind that.
    with pytest.raises(DatabaseError, match="append-only|permission denied for table audit_auditevent"), \
            transaction.atomic():
        run()
    event_row = AuditEvent.objects.get(pk=event.pk)
    assert event_row.action == "view_case" and AuditEvent.objects.count() == 1


# --- the views write events -------------------------------------------------------------------------
def test_case_views_record_access_and_before_after(cast, case_factory, client_for):
    case = case_factory(assigned_to=cast.path1, accession_number="S26-00500")
    part = case.parts.get()
    admin = client_for(cast.admin)
    client_for(cast.path1).get(reverse("case_detail", args=[case.pk]))
    admin.post(reverse("case_edit", args=[case.pk]), {
        "accession_number": "S26-00500", "patient_pseudonym": "PSN-NEW", "clinical_history": "",
        "priority": "stat", "received_date": str(case.received_date)})
    admin.post(reverse("case_assign", args=[case.pk]), {"pathologist": cast.path2.pk})
    admin.post(reverse("part_edit", args=[case.pk, part.pk]), {"label": "A", "site": "Rectum", "procedure": "Biopsy"})
    admin.post(reverse("part_create", args=[case.pk]), {"label": "B", "site": "Colon", "procedure": ""})
    events = {e.action: e for e in AuditEvent.objects.filter(case_id=case.pk)}
    assert events["view_case"].username == "dr_one" and events["view_case"].ip_address == "127.0.0.1"
    edit = events["edit_case"]
    assert edit.before["priority"] == "routine" and edit.after["priority"] == "stat"
    assert edit.before["patient_pseudonym"] != "PSN-NEW" and edit.after["patient_pseudonym"] == "PSN-NEW"
    assert events["assign_case"].before["assigned_to"] == "dr_one"
    assert events["assign_case"].after == {"assigned_to": "dr_two", "status": "assigned"}
    assert events["edit_part"].before["site"] == "Colon, sigmoid" and events["edit_part"].after["site"] == "Rectum"
    assert events["create_part"].after["label"] == "B"


def test_slide_upload_and_thumbnail_are_recorded(cast, case_factory, client_for, good_slide):
    from django.core.files.uploadedfile import SimpleUploadedFile

    case = case_factory(assigned_to=cast.path1)
    part = case.parts.get()
    response = client_for(cast.admin).post(reverse("slide_upload", args=[case.pk, part.pk]), {
        "file": SimpleUploadedFile("scan.svs", good_slide.read_bytes()), "stain": "H&E", "block_label": "1"})
    assert response.status_code == 201
    slide_id = response.json()["slide"]
    assert client_for(cast.path1).get(reverse("slide_thumbnail", args=[slide_id])).status_code == 200
    actions = set(AuditEvent.objects.filter(case_id=case.pk).values_list("action", "object_id"))
    assert ("upload_slide", slide_id) in actions and ("view_thumbnail", slide_id) in actions


# --- refused attempts -------------------------------------------------------------------------------
def test_refused_attempts_are_recorded(cast, case_factory, client_for):
    case = case_factory(assigned_to=cast.path1)
    assert client_for(cast.outsider).get(reverse("case_detail", args=[case.pk])).status_code == 404
    assert client_for(cast.path1).get(reverse("case_edit", args=[case.pk])).status_code == 403
    assert client_for(cast.evaluator).get(reverse("audit_log")).status_code == 403
    assert client_for(cast.outsider).get(reverse("case_detail", args=[999999])).status_code == 404  # no such case
    denied = AuditEvent.objects.filter(action="denied").order_by("id")
    assert [(e.username, e.case_id, e.details["status"]) for e in denied] == [
        ("outsider", case.pk, 404), ("dr_one", case.pk, 403), ("eva", None, 403)]
    assert denied[0].details["view"] == "case_detail"


def test_csrf_failure_is_recorded_as_denied(cast, case_factory):
    from django.test import Client

    case = case_factory()
    client = Client(enforce_csrf_checks=True)
    client.force_login(cast.admin)
    assert client.post(reverse("case_assign", args=[case.pk]), {"pathologist": ""}).status_code == 403
    event = AuditEvent.objects.get(action="denied")
    assert event.details["reason"] == "forbidden response" and event.case_id == case.pk


# --- browsing, filtering and export -----------------------------------------------------------------
@pytest.fixture
def history(cast, case_factory):
    one = case_factory(assigned_to=cast.path1, accession_number="S26-00601")
    two = case_factory(assigned_to=cast.path2, accession_number="S26-00602")
    record(None, "view_case", user=cast.path1, case=one)
    record(None, "view_case", user=cast.path2, case=two)
    record(None, "edit_case", user=cast.admin, case=one, before={"priority": "routine"}, after={"priority": "=1+1"})
    return one, two


def test_audit_log_browse_and_filter(cast, client_for, history):
    one, two = history
    client = client_for(cast.admin)
    page = client.get(reverse("audit_log")).content.decode()
    assert "S26-00601" in page and "S26-00602" in page and "edit_case" in page
    # The accession is POSTed and becomes a case id: the URL never carries it.
    response = client.post(reverse("audit_log"), {"accession": "s26-00601", "action": "view_case"})
    assert response.status_code == 302
    assert "S26" not in response["Location"] and f"case={one.pk}" in response["Location"]
    page = client.get(response["Location"]).content.decode()
    assert page.count("<tr>") - 1 == 1 and "dr_one" in page and "dr_two" not in page
    page = client.get(reverse("audit_log"), {"user": cast.path2.pk}).content.decode()
    assert "S26-00602" in page and "S26-00601" not in page
    tomorrow = (timezone.localdate() + timedelta(days=1)).isoformat()
    assert "No events match" in client.get(reverse("audit_log"), {"date_from": tomorrow}).content.decode()
    today = timezone.localdate().isoformat()
    page = client.get(reverse("audit_log"), {"date_from": today, "date_to": today}).content.decode()
    assert "S26-00601" in page
    # Unknown accession: the form again with an error; garbage GET values are ignored, not a 500.
    assert "No case has that accession" in client.post(reverse("audit_log"), {"accession": "S26-99999"}).content.decode()
    assert client.get(reverse("audit_log"), {"user": "x'; DROP", "case": "-1", "date_from": "2026-13-45",
                                             "page": "zz"}).status_code == 200


def test_audit_export_csv_and_json(cast, client_for, history):
    one, _ = history
    client = client_for(cast.admin)
    response = client.get(reverse("audit_export_csv"), {"case": one.pk})
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert {(r["username"], r["action"], r["accession"]) for r in rows} == {
        ("dr_one", "view_case", "S26-00601"), ("admin", "edit_case", "S26-00601")}
    edit = next(r for r in rows if r["action"] == "edit_case")
    assert json.loads(edit["after"]) == {"priority": "=1+1"}  # JSON cells are not formulas: they start with {
    response = client.get(reverse("audit_export_json"), {"action": "view_case"})
    data = json.loads(b"".join(response.streaming_content))
    assert {row["accession"] for row in data} == {"S26-00601", "S26-00602"}
    # Exporting is itself recorded.
    assert AuditEvent.objects.filter(action="export_audit", username="admin").count() == 2


def test_csv_export_neutralises_formulas(cast, client_for):
    from django.contrib.auth import get_user_model

    get_user_model().objects.create_user(username="=HYPERLINK(1)", password="x-long-password-1")
    record(None, "view_case", user=get_user_model().objects.get(username="=HYPERLINK(1)"))
    body = b"".join(client_for(cast.admin).get(reverse("audit_export_csv")).streaming_content).decode()
    assert "'=HYPERLINK(1)" in body and "\n=HYPERLINK" not in body and ",=HYPERLINK" not in body


def test_patient_access_report(cast, case_factory, client_for):
    case = case_factory(assigned_to=cast.path1, accession_number="S26-00777")
    client_for(cast.path1).get(reverse("case_detail", args=[case.pk]))
    client_for(cast.path1).get(reverse("case_detail", args=[case.pk]))
    client_for(cast.outsider).get(reverse("case_detail", args=[case.pk]))  # refused, recorded
    admin = client_for(cast.admin)
    response = admin.post(reverse("audit_case_access_lookup"), {"accession": "S26-00777"})
    assert response.status_code == 302 and "S26" not in response["Location"]
    page = admin.get(response["Location"])
    assert page.status_code == 200
    people = {p["username"]: p for p in page.context["people"]}
    assert people["dr_one"]["count"] == 2 and people["dr_one"]["actions"] == ["view_case"]
    assert "outsider" not in people
    assert [e.username for e in page.context["denied"]] == ["outsider"]
    assert "S26-00777" in page.content.decode()
    assert AuditEvent.objects.filter(action="view_access_report", case_id=case.pk).exists()
    assert "No case has that" in admin.post(reverse("audit_case_access_lookup"),
                                            {"accession": "S26-00000"}).content.decode()
