"""Report workspace, autosave, history, classifications, sign-out, follow-ups, exports, label sets.

Every view resolves its case or report through `webapp.reports.access` (404 for those who may not see the
case, 403 for readers who try to write) and writes an audit event.
"""
from __future__ import annotations

import json

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import Min, Prefetch
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from webapp.accounts import reauth
from webapp.accounts.decorators import lab_admin_required
from webapp.analysis.runtime import active_bundle
from webapp.audit.log import record
from webapp.audit.models import AuditEvent
from webapp.cases.access import can_work_on, visible_cases
from webapp.jobs.models import ACTIVE_STATES, Job, JobState
from webapp.slides.models import Slide
from webapp.slides.viewer_views import viewer_context

from . import access, calibration, export, services, snapshot
from .drafting import DRAFT, method_options, queue_draft
from .forms import FollowupForm, LabelFormSet, LabelSetForm
from .labelsets import ensure_default_label_sets
from .models import LabelSet, Report, ReportKind, ReportLocked, ReportSection, ReportStatus
from .worklist import report_state_label, worklist_cases

SIGN_FAILURES_SHOWN = 5


# --- worklist -------------------------------------------------------------------------------------------
@login_required
def worklist_view(request: HttpRequest) -> HttpResponse:
    """A pathologist's assigned cases with analysis, report and AI triage state (see worklist.py)."""
    cases, form, sort = worklist_cases(request.user, request.GET)
    cases = list(cases[:200])
    # After sign-out the age stops: the turnaround (received to the primary report's signature) instead.
    signed_at = dict(Report.objects.filter(case__in=[c.pk for c in cases], kind=ReportKind.PRIMARY,
                                           status=ReportStatus.SIGNED)
                     .values("case").annotate(at=Min("signed_at")).values_list("case", "at"))
    for case in cases:
        case.report_state = report_state_label(case)
        at = signed_at.get(case.pk)
        case.turnaround_days = (timezone.localdate(at) - case.received_date).days if at else None
    record(request, "worklist.view", count=len(cases), sort=sort)
    context = {"cases": cases, "form": form, "sort": sort}
    template = "reports/_worklist_rows.html" if request.htmx and not request.htmx.boosted else "cases/worklist.html"
    return render(request, template, context)


# --- the workspace ---------------------------------------------------------------------------------------
def _viewer(case, request) -> dict:
    """The slide viewer's context for the case's slides (the one asked for in ?slide= first)."""
    slides = list(Slide.objects.filter(part__case=case).select_related("part")
                  .order_by("part__label", "block_label", "created_at"))
    wanted = request.GET.get("slide")
    ids = {str(s.pk) for s in slides}
    return {"slides": slides, "has_viewer": bool(slides),
            **viewer_context(slides, wanted if wanted in ids else None, None, deidentified=False)}


def _evidence_for(user, draft) -> list[dict]:
    """Evidence rows for display: de-identified diagnosis snippets; a link and the accession number only for
    cases the user may open (the others stay anonymous)."""
    if draft is None:
        return []
    ids = {e.get("case") for e in draft.evidence}
    visible = dict(visible_cases(user).filter(pk__in=ids).values_list("pk", "accession_number"))
    rows = []
    for e in draft.evidence:
        mine = e.get("case") in visible
        rows.append({
            "score": e.get("score"), "snippet": e.get("snippet", ""), "part": e.get("part", "") if mine else "",
            "url": reverse("report_workspace", args=[e["case"]]) if mine else "",
            "label": visible[e["case"]] if mine else "Another signed-out case",
        })
    return rows


def _section_rows(report, user) -> list[dict]:
    rows = []
    for section in report.sections.prefetch_related("classifications__label_set__labels", "ai_drafts"):
        drafts = list(section.ai_drafts.all())
        draft = drafts[-1] if drafts else None
        rows.append({
            "section": section,
            "ai": draft,
            "evidence": _evidence_for(user, draft),
            "distance": services.edit_distance(draft.text, section.text) if draft else None,
            "classifications": list(section.classifications.all()),
        })
    return rows


def _integrity(reports: list[Report], request) -> dict[int, snapshot.Integrity]:
    """Every read of a signed report verifies it (a mismatch is logged and audited by `snapshot.check`)."""
    return {r.pk: snapshot.check(r, request) for r in reports}


FORM_MEMORY = "pathalign_workspace_form"  # what a refused workspace form held, shown again once


def _remember_form(request: HttpRequest, case_id: int, form: str, **fields: str) -> None:
    request.session[FORM_MEMORY] = {"case": case_id, "form": form, **fields}


def _recall_form(request: HttpRequest, case_id: int) -> dict:
    """{form name: its fields} of the last refused form on this case's workspace (read once)."""
    memo = request.session.pop(FORM_MEMORY, None)
    if not isinstance(memo, dict) or memo.get("case") != case_id:
        return {}
    return {memo.get("form", ""): memo}


def _see_other(url: str) -> HttpResponse:
    response = HttpResponseRedirect(url)
    response.status_code = 303
    return response


def workspace_context(request: HttpRequest, case) -> dict:
    user = request.user
    chain = export.signed_chain(case, with_rows=True)
    integrity = _integrity(chain, request)
    current = services.open_report(case)
    signed = [{"report": r, "rows": _section_rows(r, user), "superseded": services.is_superseded(r),
               "integrity": integrity[r.pk]} for r in chain]
    job = None
    if current is not None and current.draft_job_id:
        job = Job.objects.filter(pk=current.draft_job_id).first()
    can_work = can_work_on(user, case)
    methods = method_options() if can_work else []
    failures = 0
    if current is not None:
        failures = AuditEvent.objects.filter(action="report.sign_refused", object_id=str(current.pk)).count()
    return {
        "case": case,
        "parts": case.parts.prefetch_related(Prefetch("slides", queryset=Slide.objects.order_by("block_label"))),
        "current": current,
        "rows": _section_rows(current, user) if current else [],
        "signed": signed,
        "job": job,
        "can_work": can_work,
        "methods": methods,
        "default_method": next((m.value for m in methods if m.available), ""),
        "followup_form": FollowupForm(),
        "kept": _recall_form(request, case.pk),
        "sign_failures": failures,
        "primary_signed": any(r.kind == ReportKind.PRIMARY for r in chain),
        "integrity_failures": [i for i in integrity.values() if not i.ok],
        "has_slides": Slide.objects.filter(part__case=case).exists(),
        **_viewer(case, request),
    }


@login_required
@require_GET
def workspace(request: HttpRequest, case_id: int) -> HttpResponse:
    case = access.get_case_for_report(request.user, case_id)
    context = workspace_context(request, case)
    record(request, "report.view", case=case, obj=context["current"] or (context["signed"][-1]["report"]
                                                                          if context["signed"] else None))
    return render(request, "reports/workspace.html", context)


@login_required
@require_POST
def report_start(request: HttpRequest, case_id: int) -> HttpResponse:
    case = access.get_case_for_report(request.user, case_id, work=True)
    try:
        report = services.start_report(case, request.user)
    except services.ReportError as exc:
        messages.error(request, str(exc))
        return redirect("report_workspace", case_id=case.pk)
    record(request, "report.start", case=case, obj=report)
    return redirect("report_workspace", case_id=case.pk)


@login_required
@require_POST
def draft_start(request: HttpRequest, case_id: int) -> HttpResponse:
    """Queue an AI draft; the answer is the job-state fragment that polls until the job ends."""
    case = access.get_case_for_report(request.user, case_id, work=True)
    method = request.POST.get("method", "")
    option = next((o for o in method_options() if o.value == method), None)
    if option is None or not option.available:
        return HttpResponse(option.reason if option else "Choose a drafting method.", status=400)
    try:
        report = services.open_report(case) or services.start_report(case, request.user)
    except services.ReportError as exc:
        return HttpResponse(str(exc), status=409)
    active = Job.objects.filter(pk=report.draft_job_id, state__in=ACTIVE_STATES).first()
    edited = [] if active else services.sections_with_own_text(report)
    if edited and request.POST.get("replace_edited") != "1":
        # Re-drafting replaces text a person wrote: ask first (the replaced text stays in the history).
        context = {"case": case, "method": method, "edited": edited}
        if not request.htmx:
            messages.warning(request, "Your text would be replaced; confirm in the workspace.")
            return redirect("report_workspace", case_id=case.pk)
        return render(request, "reports/_redraft_confirm.html", context, status=409)
    job = active or queue_draft(report, method, request.user)
    record(request, "report.draft_requested", case=case, obj=report, method=method, job=job.pk)
    if not request.htmx:
        return redirect("report_workspace", case_id=case.pk)
    return render(request, "reports/_job.html", {"case": case, "job": job})


@login_required
@require_GET
def draft_status(request: HttpRequest, case_id: int, job_id: int) -> HttpResponse:
    case = access.get_case_for_report(request.user, case_id)
    job = get_object_or_404(Job, pk=job_id, case=case, kind=DRAFT)
    response = render(request, "reports/_job.html", {"case": case, "job": job})
    if job.state == JobState.SUCCEEDED and request.GET.get("reload") != "0":
        response["HX-Refresh"] = "true"  # the new text, classifications and evidence: simplest as a reload
    return response


# --- editing ---------------------------------------------------------------------------------------------
def _conflict(request, section: ReportSection, mine: str) -> HttpResponse:
    """409: somebody saved first. Both texts go back: nothing is lost, the user chooses."""
    response = render(request, "reports/_conflict.html", {"section": section, "mine": mine}, status=409)
    response["HX-Retarget"] = f"#save-status-{section.pk}"
    return response


@login_required
@require_POST
def section_save(request: HttpRequest, report_id: int, section_id: int) -> HttpResponse:
    section = access.get_section_for_user(request.user, report_id, section_id, work=True)
    text = request.POST.get("text", "")
    if len(text) > 100_000:
        return HttpResponse("The text is too long.", status=400)
    try:
        base = int(request.POST.get("version", ""))
    except ValueError:
        return HttpResponse("A version number must come with each save.", status=400)
    before = section.text
    try:
        saved = services.save_section(section, text, base, request.user)
    except services.StaleVersion as exc:
        record(request, "report.edit_conflict", case=section.report.case_id, obj=section,
               base_version=base, current_version=exc.section.version)
        return _conflict(request, exc.section, text)
    except ReportLocked:
        return HttpResponse("This report is signed out and cannot be edited.", status=409)
    if saved.version != section.version:
        record(request, "report.edit", case=section.report.case_id, obj=saved, before={"text": before},
               after={"text": saved.text}, version=saved.version)
    return render(request, "reports/_save_status.html", {"section": saved})


@login_required
@require_GET
def section_history(request: HttpRequest, report_id: int, section_id: int) -> HttpResponse:
    section = access.get_section_for_user(request.user, report_id, section_id)
    versions = list(section.versions.select_related("saved_by").order_by("-number"))
    diffs = [(v, services.version_diff(section, v.number)) for v in versions]
    record(request, "report.history_view", case=section.report.case_id, obj=section)
    context = {"section": section, "report": section.report, "diffs": diffs,
               "can_restore": can_work_on(request.user, section.report.case) and not section.report.is_signed}
    template = "reports/_history.html" if request.htmx else "reports/history.html"
    return render(request, template, context)


@login_required
@require_POST
def section_restore(request: HttpRequest, report_id: int, section_id: int, number: int) -> HttpResponse:
    section = access.get_section_for_user(request.user, report_id, section_id, work=True)
    before = section.text
    try:
        base = int(request.POST.get("version", section.version))
        saved = services.restore_version(section, number, base, request.user)
    except services.StaleVersion:
        messages.error(request, "The text changed since you opened the history; look again before restoring.")
    except (ReportLocked, section.versions.model.DoesNotExist, ValueError):
        messages.error(request, "That version cannot be restored.")
    else:
        record(request, "report.restore", case=section.report.case_id, obj=saved, before={"text": before},
               after={"text": saved.text}, restored=number)
        messages.success(request, f"Restored version {number} (as version {saved.version}).")
    return redirect("report_workspace", case_id=section.report.case_id)


@login_required
@require_POST
def classification_decide(request: HttpRequest, report_id: int, classification_id: int) -> HttpResponse:
    item = access.get_classification_for_user(request.user, report_id, classification_id, work=True)
    before = {"label": item.final_label, "decision": item.decision}
    try:
        if request.POST.get("action") == "dismiss":
            item = services.dismiss(item, request.user)
        else:
            item = services.decide(item, request.POST.get("label", ""), request.user)
    except services.ReportError as exc:
        return HttpResponse(str(exc), status=400)
    except ReportLocked:
        return HttpResponse("This report is signed out.", status=409)
    record(request, "classification.decide", case=item.section.report.case_id, obj=item, before=before,
           after={"label": item.final_label, "decision": item.decision}, label_set=item.label_set.name,
           model_label=item.model_label, confidence=item.model_confidence,
           bundle=item.bundle.key if item.bundle else "")
    if request.htmx:
        return render(request, "reports/_classification.html", {"c": item, "report": item.section.report,
                                                                "can_work": True})
    return redirect("report_workspace", case_id=item.section.report.case_id)


# --- sign-out --------------------------------------------------------------------------------------------
@login_required
@require_POST
def report_sign(request: HttpRequest, report_id: int) -> HttpResponse:
    """Electronic signature: the signer types their password again; a wrong one is refused and logged."""
    report = access.get_report_for_user(request.user, report_id, work=True)
    case = report.case
    # Through axes (accounts.reauth): a wrong signing password counts towards the lockout like a login.
    if not reauth.check_password(request, request.user, request.POST.get("password", "")):
        locked = reauth.locked_out(request)
        record(request, "report.sign_refused", case=case, obj=report,
               reason="locked out" if locked else "wrong password")
        failures = AuditEvent.objects.filter(action="report.sign_refused", object_id=str(report.pk)).count()
        if locked:
            error = f"{reauth.LOCKED_MESSAGE} The report was not signed."
        else:
            error = (f"Wrong password: the report was not signed ({failures} refused attempt"
                     f"{'s' if failures != 1 else ''} logged). Type your password again to sign.")
        messages.error(request, error)
        # Back to the workspace (not a page at the sign-out URL that a reload would post again), with what
        # the signer typed besides the password.
        _remember_form(request, case.pk, "sign", error=error,
                       no_slides_reason=request.POST.get("no_slides_reason", "")[:2000])
        return _see_other(reverse("report_workspace", args=[case.pk]) + "#sign")
    versions = {}
    for key, value in request.POST.items():
        if key.startswith("section_version_"):
            try:
                versions[int(key.removeprefix("section_version_"))] = int(value)
            except ValueError:
                return HttpResponse("Bad section version.", status=400)
    before = {"status": report.status, "text": report.full_text()}
    no_slides_reason = request.POST.get("no_slides_reason", "")[:2000]
    try:
        result = services.sign(report, request.user, versions, no_slides_reason=no_slides_reason)
    except services.SignoutRefused as exc:
        record(request, "report.sign_refused", case=case, obj=report, reason="sign-out checks",
               problems=exc.problems)
        messages.error(request, "Not signed out. Before signing:")
        for problem in exc.problems:
            messages.error(request, problem)
        _remember_form(request, case.pk, "sign", no_slides_reason=no_slides_reason)
        return redirect("report_workspace", case_id=case.pk)
    except services.StaleVersion:
        messages.error(request, "The text changed after you last saw it (another session saved). Read it "
                                "again, then sign.")
        return redirect("report_workspace", case_id=case.pk)
    except services.ReportError as exc:
        messages.error(request, str(exc))
        return redirect("report_workspace", case_id=case.pk)
    signed = result.report
    record(request, "report.sign", case=case, obj=signed, before=before,
           after={"status": signed.status, "text": signed.full_text(), "hash": signed.content_hash,
                  "snapshot_hash": signed.snapshot_hash},
           kind=signed.kind, case_status=result.case_status, no_slides_reason=signed.no_slides_reason,
           meaning=signed.snapshot["signature"]["meaning"])
    messages.success(request, f"{signed.get_kind_display()} signed out.")
    return redirect("report_workspace", case_id=case.pk)


@login_required
@require_POST
def followup_start(request: HttpRequest, case_id: int) -> HttpResponse:
    case = access.get_case_for_report(request.user, case_id, work=True)
    form = FollowupForm(request.POST)
    if not form.is_valid():
        for errors in form.errors.values():
            for error in errors:
                messages.error(request, error)
        # The chosen kind and the reason come back with the message, not a blank form.
        _remember_form(request, case.pk, "followup", kind=request.POST.get("kind", "")[:20],
                       reason=request.POST.get("reason", "")[:2000])
        return redirect("report_workspace", case_id=case.pk)
    try:
        report = services.start_followup(case, form.cleaned_data["kind"], request.user,
                                         form.cleaned_data.get("reason", ""))
    except services.ReportError as exc:
        messages.error(request, str(exc))
        return redirect("report_workspace", case_id=case.pk)
    record(request, "report.followup_start", case=case, obj=report, kind=report.kind, reason=report.reason)
    return redirect("report_workspace", case_id=case.pk)


@login_required
@require_POST
def followup_discard(request: HttpRequest, report_id: int) -> HttpResponse:
    report = access.get_report_for_user(request.user, report_id, work=True)
    case_id = report.case_id
    try:
        text = report.full_text()
        services.discard_draft(report)
    except services.ReportError as exc:
        messages.error(request, str(exc))
    else:
        record(request, "report.followup_discard", case=case_id, before={"text": text}, kind=report.kind)
    return redirect("report_workspace", case_id=case_id)


# --- outputs ---------------------------------------------------------------------------------------------
def _base_url(request: HttpRequest) -> str:
    return settings.PUBLIC_BASE_URL or request.build_absolute_uri("/").rstrip("/")


def _refuse_if_tampered(request: HttpRequest, case, reports: list[Report]) -> HttpResponse | None:
    """Exports of a record that fails its integrity check are refused (and the failure logged/audited)."""
    failures = [i for i in _integrity(reports, request).values() if not i.ok]
    if not failures:
        return None
    problems = "; ".join(p for f in failures for p in f.problems)
    return HttpResponse(
        f"This signed record failed its integrity check and is not exported: {problems} The failure is logged; "
        "tell the lab's system administrator.", status=409, content_type="text/plain; charset=utf-8")


@login_required
@require_GET
def report_print(request: HttpRequest, case_id: int) -> HttpResponse:
    case = access.get_case_for_report(request.user, case_id)
    chain = export.signed_chain(case)
    failures = [i for i in _integrity(chain, request).values() if not i.ok]
    record(request, "report.export", case=case, format="html")
    printed = export.case_record(case)
    return render(request, "reports/print.html", {"case": case, "record": printed, "integrity_failures": failures})


@login_required
@require_GET
def report_pdf_view(request: HttpRequest, case_id: int) -> HttpResponse:
    case = access.get_case_for_report(request.user, case_id)
    if not case.reports.exists():
        raise Http404("No report yet.")
    refused = _refuse_if_tampered(request, case, export.signed_chain(case))
    if refused:
        return refused
    record(request, "report.export", case=case, format="pdf")
    response = HttpResponse(export.case_pdf(case), content_type="application/pdf")
    response["Content-Disposition"] = f'inline; filename="{case.accession_number}-report.pdf"'
    return response


def _signed_version(request: HttpRequest, report_id: int) -> tuple[Report, export.Version]:
    report = access.get_report_for_user(request.user, report_id)
    if report.status != ReportStatus.SIGNED:
        raise Http404("Only signed reports are exported.")
    return report, export.version_of(report)


@login_required
@require_GET
def report_version_pdf(request: HttpRequest, report_id: int) -> HttpResponse:
    """The PDF of one version of the signed record (what that version's FHIR presentedForm points at)."""
    report, version = _signed_version(request, report_id)
    refused = _refuse_if_tampered(request, report.case, [version.diagnostic, *version.addenda, report])
    if refused:
        return refused
    record(request, "report.export", case=report.case_id, obj=report, format="pdf", version=version.number)
    response = HttpResponse(export.version_pdf(version), content_type="application/pdf")
    response["Content-Disposition"] = (f'inline; filename="{report.case.accession_number}-report-v{version.number}.pdf"')
    return response


@login_required
@require_GET
def report_fhir(request: HttpRequest, report_id: int) -> HttpResponse:
    """The case's DiagnosticReport as it stood when this report was signed (meta.versionId)."""
    report, version = _signed_version(request, report_id)
    refused = _refuse_if_tampered(request, report.case, [version.diagnostic, *version.addenda, report])
    if refused:
        return refused
    resource = export.fhir_diagnostic_report(version, _base_url(request))
    record(request, "report.export", case=report.case_id, obj=report, format="fhir", version=version.number)
    return JsonResponse(resource, content_type="application/fhir+json", json_dumps_params={"indent": 2})


def _verified_case_chain(request: HttpRequest, case_id: int) -> tuple:
    """(case, its signed reports, None), or a 409 response as the third item when the record fails its
    integrity check; 404 when nothing is signed yet (or the case is not the user's)."""
    case = access.get_case_for_report(request.user, case_id)
    chain = export.signed_chain(case)
    if not chain:
        raise Http404("Nothing is signed out yet.")
    return case, chain, _refuse_if_tampered(request, case, chain)


@login_required
@require_GET
def case_fhir(request: HttpRequest, case_id: int) -> HttpResponse:
    """The case's DiagnosticReport now (its latest version)."""
    case, chain, refused = _verified_case_chain(request, case_id)
    if refused:
        return refused
    version = export.versions(case, chain)[-1]
    record(request, "report.export", case=case, format="fhir", version=version.number)
    return JsonResponse(export.fhir_diagnostic_report(version, _base_url(request)),
                        content_type="application/fhir+json", json_dumps_params={"indent": 2})


@login_required
@require_GET
def case_fhir_history(request: HttpRequest, case_id: int) -> HttpResponse:
    """Every version of the case's DiagnosticReport with its Provenance (e-signature), as a history Bundle."""
    case, chain, refused = _verified_case_chain(request, case_id)
    if refused:
        return refused
    record(request, "report.export", case=case, format="fhir-history")
    return JsonResponse(export.fhir_history(case, _base_url(request)), content_type="application/fhir+json",
                        json_dumps_params={"indent": 2})


# --- label sets (lab admins) -------------------------------------------------------------------------------
@lab_admin_required
@require_http_methods(["GET", "POST"])
def labelset_list(request: HttpRequest) -> HttpResponse:
    if request.method == "POST" and request.POST.get("action") == "defaults":
        created = ensure_default_label_sets()
        record(request, "labelset.defaults", created=created)
        messages.success(request, f"{created} default label sets added.")
        return redirect("labelset_list")
    if request.method == "POST" and request.POST.get("action") == "calibrate":
        return _calibrate_label_sets(request)
    sets = LabelSet.objects.prefetch_related("labels")
    return render(request, "reports/labelset_list.html", {"label_sets": sets})


def _calibrate_label_sets(request: HttpRequest) -> HttpResponse:
    bundle = active_bundle()
    if bundle is None:
        messages.error(request, "No model bundle is active, so there is nothing to calibrate.")
        return redirect("labelset_list")
    for label_set in LabelSet.objects.filter(active=True):
        before = label_set.confidence_threshold
        result = calibration.calibrate(label_set, bundle)
        record(request, "labelset.calibrate", obj=label_set, before={"threshold": before},
               after={"threshold": label_set.confidence_threshold}, decisions=result.decisions,
               bundle=bundle.key)
        if result.threshold is None and result.decisions < calibration.MIN_DECISIONS:
            messages.info(request, f"{label_set.name}: {result.decisions} signed-out decisions with {bundle.key}; "
                                   f"{calibration.MIN_DECISIONS} are needed. The threshold stays "
                                   f"{before:.0%}.")
        elif result.threshold is None:
            messages.warning(request, f"{label_set.name}: at no confidence were the model's picks right "
                                      f"{calibration.TARGET:.0%} of the time ({result.decisions} decisions). "
                                      f"The threshold stays {before:.0%}; treat every pick as uncertain.")
        else:
            messages.success(request, f"{label_set.name}: picks at {result.threshold:.0%} or more were right "
                                      f"{result.accuracy_above:.0%} of the time ({result.decisions} decisions); "
                                      f"{result.share_above:.0%} of picks are now shown as proposals.")
    return redirect("labelset_list")


@lab_admin_required
@require_http_methods(["GET", "POST"])
def labelset_edit(request: HttpRequest, labelset_id: int | None = None) -> HttpResponse:
    label_set = get_object_or_404(LabelSet, pk=labelset_id) if labelset_id else LabelSet()
    before = None
    if label_set.pk:
        before = {"name": label_set.name, "labels": {lab.name: lab.prompts for lab in label_set.labels.all()}}
    form = LabelSetForm(request.POST or None, instance=label_set)
    formset = LabelFormSet(request.POST or None, instance=label_set)
    if request.method == "POST" and form.is_valid() and formset.is_valid():
        label_set = form.save()
        formset.instance = label_set
        formset.save()
        after = {"name": label_set.name, "labels": {lab.name: lab.prompts for lab in label_set.labels.all()}}
        record(request, "labelset.save", obj=label_set, before=before, after=json.loads(json.dumps(after)))
        messages.success(request, f"Label set {label_set.name} saved.")
        return redirect("labelset_list")
    return render(request, "reports/labelset_form.html", {"form": form, "formset": formset, "label_set": label_set})
