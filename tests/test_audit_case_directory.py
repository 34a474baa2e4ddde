"""The audit app reaches cases only through the directory the cases app registers (it sits a floor below
them), and the commands that span every app live on the project floor."""
from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import get_commands
from django.http import Http404
from django.urls import reverse

from webapp.audit import case_directory as registry
from webapp.audit.models import AuditEvent
from webapp.cases.audit_directory import CaseDirectoryForAudit


def test_the_cases_app_registers_its_directory():
    assert isinstance(registry.case_directory(), CaseDirectoryForAudit)


def test_no_directory_fails_loudly(monkeypatch):
    monkeypatch.setattr(registry, "_directory", None)
    with pytest.raises(ImproperlyConfigured, match="CasesConfig.ready"):
        registry.case_directory()


def test_directory_answers_only_with_cases_the_user_may_see(cast, case_factory):
    mine = case_factory(assigned_to=cast.path1, accession_number="S26-00801")
    theirs = case_factory(assigned_to=cast.path2, accession_number="S26-00802")
    directory = registry.case_directory()
    assert directory.accessions([mine.pk, theirs.pk, 2**40]) == {mine.pk: "S26-00801", theirs.pk: "S26-00802"}
    assert directory.accessions([]) == {}
    assert directory.find(cast.admin, "S26-00802") == theirs.pk
    assert directory.find(cast.path1, "S26-00801") == mine.pk
    assert directory.find(cast.path1, "S26-00802") is None
    assert directory.find(cast.admin, "S26-99999") is None
    assert directory.get(cast.admin, theirs.pk).accession_number == "S26-00802"
    with pytest.raises(Http404):
        directory.get(cast.outsider, mine.pk)


def test_audit_pages_resolve_accessions_through_the_directory(cast, case_factory, client_for):
    case = case_factory(assigned_to=cast.path1, accession_number="S26-00803")
    AuditEvent.objects.create(user=cast.path1, username="dr_one", action="view_case", case_id=case.pk)
    admin = client_for(cast.admin)
    response = admin.post(reverse("audit_log"), {"accession": "s26-00803"})
    assert response.status_code == 302 and response.url == f"{reverse('audit_log')}?case={case.pk}"
    page = admin.get(response.url).content.decode()
    assert 'value="S26-00803"' in page  # the filter form shows the accession back, from the case id
    response = admin.post(reverse("audit_case_access_lookup"), {"accession": "S26-00803"})
    assert response.url == reverse("audit_case_access", kwargs={"case_id": case.pk})
    assert "Access report: S26-00803" in admin.get(response.url).content.decode()
    event = AuditEvent.objects.get(action="view_access_report", case_id=case.pk)
    assert (event.object_type, event.object_id) == ("case", str(case.pk))


def test_cross_app_commands_live_on_the_project_floor():
    commands = get_commands()
    assert {name: commands[name] for name in ("backup", "restore", "seed_demo")} == {
        "backup": "webapp", "restore": "webapp", "seed_demo": "webapp"}
