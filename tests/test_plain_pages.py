"""Plain pages (issue #17): what lab admins and pathologists read is in words, not in developer terms.

Jobs with queued/started/finished times, durations in s or min, kinds in words, filters and pages; audit
details as fields; the model page's figures in words beside the active model's; a favicon; friendly error
pages; a wrong signing password back on the workspace with the reason and what was typed; the chosen
follow-up kept after a form error; turnaround instead of a still-counting age after sign-out; the case list
by priority and age; the version history as an inline diff that wraps."""
from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from tests.conftest import PASSWORD
from tests.model_fixtures import bundle_row
from tests.test_reports_support import drafted_report, signed_report
from webapp.audit.log import record
from webapp.jobs.models import Job, JobState

pytestmark = pytest.mark.django_db
RAW_DICT = re.compile(r"\{'|&#x27;[a-z_]+&#x27;:|\{&quot;")


def assert_no_raw_dict(html: str) -> None:
    match = RAW_DICT.search(html)
    assert match is None, f"raw dict on the page: {html[max(0, match.start() - 80):match.end() + 80]!r}"


# --- jobs ------------------------------------------------------------------------------------------------
def test_jobs_page_shows_times_durations_kinds_in_words_and_paginates(cast, client_for):
    now = timezone.now()
    finished = Job.objects.create(kind="embed_report", state=JobState.SUCCEEDED)
    Job.objects.filter(pk=finished.pk).update(created_at=now - timedelta(minutes=10),
                                              started_at=now - timedelta(minutes=9, seconds=30),
                                              finished_at=now - timedelta(minutes=5, seconds=15))
    quick = Job.objects.create(kind="analyze_slide", state=JobState.SUCCEEDED)
    Job.objects.filter(pk=quick.pk).update(created_at=now - timedelta(seconds=20), started_at=now - timedelta(seconds=19),
                                           finished_at=now - timedelta(seconds=6, microseconds=654321))
    client = client_for(cast.admin)
    page = client.get(reverse("job_list")).content.decode()
    start = page.rindex("<tr>", 0, page.index(f"#{finished.pk}<"))
    row = page[start:page.index("</tr>", start)]
    assert "Index a signed report for search" in row and "embed_report" not in row.split("title=")[0]
    created = timezone.localtime(now - timedelta(minutes=10))
    assert created.strftime("%Y-%m-%d %H:%M:%S") in row  # queued
    assert timezone.localtime(now - timedelta(minutes=5, seconds=15)).strftime("%H:%M:%S") in row  # finished
    assert "30.0 s" in row and "4 min 15 s" in row  # waited, ran
    start = page.rindex("<tr>", 0, page.index(f"#{quick.pk}<"))
    quick_row = page[start:page.index("</tr>", start)]
    assert "Slide analysis" in quick_row and "12.3 s" in quick_row  # never microseconds
    for heading in ("Queued", "Started", "Finished", "Waited", "Ran"):
        assert f">{heading}<" in page
    # Filters (kinds offered in words) and pages of 50, newest first, filters kept across pages.
    assert '<option value="embed_report" >Index a signed report for search</option>' in page.replace("  ", " ")
    Job.objects.bulk_create([Job(kind="draft_report", state=JobState.FAILED, error="x") for _ in range(55)])
    first = client.get(reverse("job_list"), {"kind": "draft_report"}).content.decode()
    assert "55 jobs, 1–50 shown" in first and "Page 1 of 2" in first
    assert 'href="?kind=draft_report&amp;page=2"' in first
    second = client.get(reverse("job_list"), {"kind": "draft_report", "page": 2}).content.decode()
    assert second.count("AI draft of a report") == 5 + 1  # five rows and the selected filter option
    only_done = client.get(reverse("job_list"), {"state": "succeeded"}).content.decode()
    assert "2 jobs" in only_done and "AI draft of a report <" not in only_done


# --- audit -----------------------------------------------------------------------------------------------
def test_audit_details_are_readable_fields(cast, case_factory, client_for):
    case = case_factory(assigned_to=cast.path1)
    record(None, "evaluation_study_status", user=cast.admin, case=case, before={"status": "open"},
           after={"status": "closed"}, raters_per_item=2, paired=True, sources=["signed_report", "ai:x"],
           gate={"new_r1": 0.41234, "margin": 0.02})
    client = client_for(cast.admin)
    page = client.get(reverse("audit_log")).content.decode()
    assert_no_raw_dict(page)
    assert "Opened or closed a rating study" in page
    assert '<option value="evaluation_study_status">Opened or closed a rating study</option>' in page
    assert re.search(r"<dt>Status</dt><dd>open → closed</dd>", page)
    assert re.search(r"<dt>Raters per item</dt><dd>2</dd>", page) and "<dt>Paired</dt><dd>yes</dd>" in page
    assert "<dd>signed_report, ai:x</dd>" in page and "<dd>margin: 0.02; new r1: 0.4123</dd>" in page
    report = client.get(reverse("audit_case_access", args=[case.pk])).content.decode()
    assert_no_raw_dict(report)
    assert "open → closed" in report


# --- the model page --------------------------------------------------------------------------------------
def test_bundle_page_states_figures_in_words_beside_the_active_ones(cast, client_for):
    active = bundle_row("base@1")
    new = bundle_row("trained@2")
    new.training = {"slides": 48, "bags": 21, "bag": "part", "splits": {"train": 40, "val": 8},
                    "train_diagnoses": {"adenoma": 20, "polyp": 20},
                    "patches_per_slide": {"min": 120, "mean": 800.5, "max": 2400}, "feature_dim": 768,
                    "best_val_loss": 0.7342, "epochs": [{"epoch": 1}, {"epoch": 2}],
                    "config": {"lr": 0.0001}, "source": "archive: 48 signed-out slides (job 7)"}
    new.eval_figures = {"heldout_comparison": {
        "heldout_cases": 12, "class_basis": "organ", "active_bundle": str(active), "active_bundle_key": active.key,
        "new": {"n": 12, "texts": 12, "i2t_r1": 0.5, "i2t_r1_hits": 6, "i2t_r5": 0.75, "i2t_r5_hits": 9,
                "t2i_r1": 0.25, "t2i_r1_hits": 3},
        "active": {"n": 12, "texts": 12, "i2t_r1": 0.4167, "i2t_r1_hits": 5, "i2t_r5": 0.75, "i2t_r5_hits": 9,
                   "t2i_r1": 0.3333, "t2i_r1_hits": 4}},
        "v2": {"mean_pool": {"auc": 0.635}}}
    new.encoder = {"kind": "hf", "name": "phikon", "dim": 768, "mean": [0.5, 0.5, 0.5]}
    new.dims = {"embed": 256, "queries": 32}
    new.variant = "G"
    new.save()
    page = client_for(cast.admin).get(reverse("bundle_detail", args=[new.pk])).content.decode()
    assert "name: phikon; kind: hf; dim: 768; mean: 0.5, 0.5, 0.5" in page and "embed: 256; queries: 32" in page
    assert "PathAlign-G (generative" in page
    assert_no_raw_dict(page)
    assert "48 slides: 40 for training, 8 for validation (choosing the best epoch)." in page
    assert "Training slides by diagnosis: adenoma 20, polyp 20." in page
    assert "Trained on 21 case parts, each part&#x27;s slides read as one bag with the part&#x27;s report." in page
    assert "Tissue patches per slide: 120 to 2,400 (mean 800)." in page
    table = page[page.index('id="comparison-table"'):page.index("</table>", page.index('id="comparison-table"'))]
    assert "6 of 12 (50%)" in table and "5 of 12 (42%)" in table and "better by 8 points" in table
    assert "the same" in table and "worse by 8 points" in table  # top 5 equal; report -> slide worse
    assert "V2 · Mean pool · AUC" in page and "heldout_comparison." not in page


# --- favicon, errors, words ------------------------------------------------------------------------------
def test_favicon_is_served_and_linked(cast, client_for):
    client = client_for(cast.path1)
    page = client.get(reverse("worklist")).content.decode()
    icon = re.search(r'<link rel="icon" href="([^"]+)"', page).group(1)
    response = client.get(icon)
    assert response.status_code == 200 and response["Content-Type"].startswith("image/svg")
    ico = client_for(None).get("/favicon.ico")  # asked for by browsers on every page, signed in or not
    assert ico.status_code == 200 and ico["Content-Type"] == "image/vnd.microsoft.icon"
    assert b"".join(ico.streaming_content)[:4] == b"\0\0\1\0"


def test_error_pages_are_friendly(cast, client_for):
    missing = client_for(cast.path1).get("/no/such/page/")
    html = missing.content.decode()
    assert missing.status_code == 404 and "Not found" in html and "Back to the start page" in html
    assert "urlconf" not in html.lower() and "Traceback" not in html and 'class="topbar"' in html
    anonymous = client_for(None).get("/no/such/page/").content.decode()
    assert "Log in" in anonymous
    refused = client_for(cast.path1).get(reverse("job_list"))
    assert refused.status_code == 403 and "Not allowed" in refused.content.decode()


def test_pathologist_pages_name_no_environment_variable(cast, case_factory, client_for):
    case = case_factory(assigned_to=cast.path1)
    client = client_for(cast.path1)
    for url in (reverse("worklist"), reverse("report_workspace", args=[case.pk]), reverse("case_list"),
                reverse("case_detail", args=[case.pk]), "/no/such/page/"):
        html = client.get(url).content.decode()
        assert not re.search(r"PATHALIGN_|DJANGO_|DATABASE_URL|CELERY_", html), url


def test_login_form_fields_are_labelled_and_stacked(client):
    html = client.get(reverse("login")).content.decode()
    assert 'class="stacked-form"' in html
    assert re.search(r'<label for="id_username">Username</label>\s*<input[^>]*name="username"', html)
    assert re.search(r'<label for="id_password">Password</label>\s*<input[^>]*name="password"', html)


# --- sign-out and follow-up forms -----------------------------------------------------------------------
def test_wrong_signing_password_stays_on_the_workspace_and_keeps_what_was_typed(cast, case_factory, client_for):
    case = case_factory(assigned_to=cast.path1)
    report = drafted_report(case, cast.path1)
    report.case.parts.get().slides.all().delete()  # no slides: the form asks why, and that text must survive
    client = client_for(cast.path1)
    data = {"password": "not-my-password", "no_slides_reason": "Slides sent out for consult.",
            **{f"section_version_{s.pk}": s.version for s in report.sections.all()}}
    refused = client.post(reverse("report_sign", args=[report.pk]), data)
    workspace = reverse("report_workspace", args=[case.pk])
    assert refused.status_code == 303 and refused["Location"] == workspace + "#sign"
    page = client.get(refused["Location"]).content.decode()
    assert "Wrong password: the report was not signed" in page and 'data-role="sign-error"' in page
    assert ">Slides sent out for consult.</textarea>" in page
    assert re.search(r'name="password"[^>]*autofocus', page)
    # Once: a later visit is a clean form.
    again = client.get(workspace).content.decode()
    assert 'data-role="sign-error"' not in again and "Slides sent out for consult." not in again
    report.refresh_from_db()
    assert report.status == "draft"


def test_followup_form_keeps_the_chosen_option_after_an_error(cast, case_factory, client_for):
    case = case_factory(assigned_to=cast.path1)
    signed_report(case, cast.path1)
    client = client_for(cast.path1)
    response = client.post(reverse("report_followup", args=[case.pk]), {"kind": "amendment", "reason": " "})
    assert response.status_code == 302
    page = client.get(response["Location"]).content.decode()
    assert "An amendment needs a reason" in page
    assert re.search(r'<input type="radio" name="kind" value="amendment"[^>]*checked', page)
    assert not re.search(r'<input type="radio" name="kind" value="addendum"[^>]*checked', page)


# --- worklist and case list ------------------------------------------------------------------------------
def test_worklist_shows_turnaround_after_sign_out(cast, case_factory, client_for, monkeypatch):
    today = timezone.localdate()
    open_case = case_factory(assigned_to=cast.path1, received_date=today - timedelta(days=9))
    done = case_factory(assigned_to=cast.path1, received_date=today - timedelta(days=30))
    signed_then = timezone.now() - timedelta(days=26)  # signed 4 days after receipt, 26 days ago
    with monkeypatch.context() as patch:
        patch.setattr(timezone, "now", lambda: signed_then)
        signed_report(done, cast.path1)
    page = client_for(cast.path1).get(reverse("worklist"), {"show": "all"}).content.decode()

    def age_cell(case) -> str:
        row = page[page.index(f'data-accession="{case.accession_number}"'):]
        return re.search(r'<td data-role="age">(.*?)</td>', row[:row.index("</tr>")]).group(1)

    assert age_cell(open_case) == "9"
    assert "4 (signed out)" in age_cell(done) and "Turnaround" in age_cell(done)
    assert "30" not in age_cell(done)


def test_lab_admin_case_list_by_priority_then_age(cast, case_factory, client_for):
    today = timezone.localdate()
    made = [
        case_factory(accession_number="S26-00001", priority="routine", received_date=today - timedelta(days=3)),
        case_factory(accession_number="S26-00002", priority="stat", received_date=today - timedelta(days=1)),
        case_factory(accession_number="S26-00003", priority="routine", received_date=today - timedelta(days=8)),
        case_factory(accession_number="S26-00004", priority="urgent", received_date=today - timedelta(days=2)),
        case_factory(accession_number="S26-00005", priority="stat", received_date=today - timedelta(days=20),
                     status="signed_out"),
        case_factory(accession_number="S26-00006", priority="stat", received_date=today - timedelta(days=4)),
    ]
    assert made
    page = client_for(cast.admin).get(reverse("case_list")).content.decode()
    order = re.findall(r">(S26-0000\d)</a>", page)
    assert order == ["S26-00006", "S26-00002", "S26-00004", "S26-00003", "S26-00001", "S26-00005"]


# --- version history -------------------------------------------------------------------------------------
def test_version_history_is_an_inline_diff_that_wraps(cast, case_factory, client_for):
    from webapp.reports import services

    case = case_factory(assigned_to=cast.path1)
    report = drafted_report(case, cast.path1, text="Tubular adenoma with low-grade dysplasia. " * 6)
    section = report.sections.get()
    services.save_section(section, "Tubular adenoma with high-grade dysplasia. " * 6 + "<script>", section.version,
                          cast.path1)
    page = client_for(cast.path1).get(reverse("report_section_history", args=[report.pk, section.pk])).content.decode()
    assert '<table class="diff"' not in page and 'class="inline-diff"' in page
    assert '<del class="diff_sub">low-grade</del><ins class="diff_add">high-grade</ins>' in page
    assert "&lt;script&gt;" in page and "<script>" not in page.split("</header>")[1].split("<script src")[0]


def test_signed_login_password_unchanged(cast, client):
    """The login form still signs in (the template was rewritten)."""
    response = client.post(reverse("login"), {"username": cast.path1.username, "password": PASSWORD})
    assert response.status_code == 302


def test_an_expired_form_is_explained_in_words(cast):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(cast.path1)
    refused = client.post(reverse("password_change"), {"old_password": PASSWORD})
    html = refused.content.decode()
    assert refused.status_code == 403 and "The form had expired" in html and "reload the page" in html
    assert "CSRF verification" not in html and "Referer" not in html and 'class="topbar"' in html
