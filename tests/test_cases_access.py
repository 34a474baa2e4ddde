"""Who sees which case: lab admins all, pathologists their own, everyone else nothing (404, not 403)."""
import pytest
from django.urls import reverse

from webapp.cases.models import Case, CaseStatus


@pytest.fixture
def setup(cast, case_factory):
    return {"mine": case_factory(assigned_to=cast.path1), "theirs": case_factory(assigned_to=cast.path2)}


@pytest.mark.parametrize("view", ["case_detail", "case_edit", "part_create"])
def test_outsider_gets_404_for_existing_case(cast, setup, client_for, view):
    response = client_for(cast.outsider).get(reverse(view, args=[setup["mine"].pk]))
    assert response.status_code == 404


def test_pathologist_sees_own_case_but_not_colleagues(cast, setup, client_for):
    client = client_for(cast.path1)
    assert client.get(reverse("case_detail", args=[setup["mine"].pk])).status_code == 200
    assert client.get(reverse("case_detail", args=[setup["theirs"].pk])).status_code == 404
    listing = client.get(reverse("case_list")).content.decode()
    assert setup["mine"].accession_number in listing
    assert setup["theirs"].accession_number not in listing


def test_pathologist_cannot_edit_accessioning(cast, setup, client_for):
    client = client_for(cast.path1)
    assert client.get(reverse("case_edit", args=[setup["mine"].pk])).status_code == 403
    response = client.post(reverse("case_assign", args=[setup["mine"].pk]), {"pathologist": cast.path1.pk})
    assert response.status_code == 403


def test_evaluator_and_anonymous_see_no_case(cast, setup, client_for):
    assert client_for(cast.evaluator).get(reverse("case_detail", args=[setup["mine"].pk])).status_code == 404
    anonymous = client_for(None).get(reverse("case_detail", args=[setup["mine"].pk]))
    assert anonymous.status_code == 302 and "/login/" in anonymous["Location"]


def test_admin_creates_case_adds_part_and_assigns(cast, client_for):
    client = client_for(cast.admin)
    response = client.post(reverse("case_create"), {
        "accession_number": "s26-00042", "patient_pseudonym": "PSN-42", "clinical_history": "Rectal bleeding.",
        "priority": "urgent", "received_date": "2026-11-20",
    })
    case = Case.objects.get(accession_number="S26-00042")
    assert response.status_code == 302 and case.priority == "urgent"
    client.post(reverse("part_create", args=[case.pk]), {"label": "A", "site": "Colon, sigmoid", "procedure": "Biopsy"})
    client.post(reverse("part_create", args=[case.pk]), {"label": "A", "site": "Rectum"})  # duplicate label
    assert list(case.parts.values_list("label", "site")) == [("A", "Colon, sigmoid")]
    client.post(reverse("case_assign", args=[case.pk]), {"pathologist": cast.path2.pk})
    case.refresh_from_db()
    assert case.assigned_to == cast.path2 and case.status == CaseStatus.ASSIGNED


def test_duplicate_or_malformed_accession_refused(cast, case_factory, client_for):
    case_factory(accession_number="S26-00001")
    client = client_for(cast.admin)
    for number in ("S26-00001", "Mr Smith", "S2600001"):
        response = client.post(reverse("case_create"), {
            "accession_number": number, "patient_pseudonym": "PSN", "priority": "routine",
            "received_date": "2026-11-20"})
        assert response.status_code == 200  # the form again, with an error
    assert Case.objects.count() == 1


def test_case_search_and_filters(cast, case_factory, client_for):
    case_factory(accession_number="S26-00100", priority="stat", assigned_to=cast.path1)
    case_factory(accession_number="S26-00200", priority="routine")
    client = client_for(cast.admin)
    body = client.get(reverse("case_list"), {"q": "00100"}).content.decode()
    assert "S26-00100" in body and "S26-00200" not in body
    body = client.get(reverse("case_list"), {"priority": "routine"}, HTTP_HX_REQUEST="true").content.decode()
    assert "S26-00200" in body and "S26-00100" not in body and "<html" not in body
    body = client.get(reverse("case_list"), {"assigned_to": cast.path1.pk}).content.decode()
    assert "S26-00100" in body and "S26-00200" not in body


def test_user_management_is_for_lab_admins(cast, client_for, django_user_model):
    assert client_for(cast.path1).get(reverse("user_list")).status_code == 403
    client = client_for(cast.admin)
    response = client.post(reverse("user_create"), {
        "username": "dr_new", "role": "pathologist", "password1": "a-long-Passphrase-9", "password2": "a-long-Passphrase-9"})
    assert response.status_code == 302
    assert django_user_model.objects.get(username="dr_new").role == "pathologist"


def test_django_admin_is_for_superusers_only(cast, client_for, django_user_model):
    assert client_for(cast.admin).get("/admin/").status_code == 302  # to the admin login
    root = django_user_model.objects.create_superuser("root", password="x-Long-password-1")
    assert client_for(root).get("/admin/").status_code == 200


def test_login_logout_and_password_change(cast, client):
    from tests.conftest import PASSWORD

    response = client.post("/login/", {"username": "dr_one", "password": PASSWORD})
    assert response.status_code == 302
    response = client.post("/password/", {"old_password": PASSWORD, "new_password1": "brand-New-secret-42",
                                          "new_password2": "brand-New-secret-42"})
    assert response.status_code == 302
    assert client.get("/logout/").status_code == 405  # logging out changes state: POST only
    assert client.post("/logout/").status_code == 302
    response = client.post("/login/", {"username": "dr_one", "password": "brand-New-secret-42"})
    assert response.status_code == 302 and response["Location"] == "/"
