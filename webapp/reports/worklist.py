"""The pathologist's worklist: assigned cases with their analysis and report state, sorted for triage.

Default order ("triage"): STAT, then urgent, then routine; within each, a flagged case comes first, and a
flagged routine case ranks above unflagged routine ones. Then the oldest case first.

Flagged: the pathologist decided an alert label of a triage label set (e.g. "likely malignant"), or the
model suggests one with at least the set's confidence threshold and the pathologist has not decided
otherwise. The model's suggestion exists as soon as a slide's analysis finishes (`SlideTriage`, before
anyone opens the case) or a draft classified the part. The worklist shows the model's suggestion and the
pathologist's decision in separate columns.
"""
from __future__ import annotations

from django import forms
from django.db.models import (
    BooleanField,
    Count,
    Exists,
    ExpressionWrapper,
    F,
    IntegerField,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Value,
    When,
)
from django.db.models import Case as When_
from django.db.models.functions import Coalesce

from webapp.analysis.models import SlideEmbedding
from webapp.analysis.runtime import active_bundle
from webapp.cases.access import visible_cases
from webapp.cases.models import SIGNED_OUT_STATUSES, Case, CaseStatus, Priority
from webapp.jobs.models import ACTIVE_STATES, Job

from .drafting import DRAFT, EMBED_REPORT
from .models import Classification, Decision, Label, Report, ReportStatus, SlideTriage

SORTS = {
    "triage": ["triage_rank", "received_date", "id"],
    "-triage": ["-triage_rank", "-received_date", "-id"],
    "age": ["received_date", "id"],  # oldest first
    "-age": ["-received_date", "-id"],
    "accession": ["accession_number"],
    "-accession": ["-accession_number"],
    "priority": ["priority_rank", "received_date"],
    "-priority": ["-priority_rank", "-received_date"],
}
OPEN_STATUSES = [CaseStatus.ACCESSIONED, CaseStatus.ASSIGNED, CaseStatus.IN_REVIEW]


class WorklistFilter(forms.Form):
    q = forms.CharField(required=False, label="Accession", widget=forms.TextInput(attrs={"placeholder": "S26-"}))
    show = forms.ChoiceField(required=False, choices=[("open", "To report"), ("signed", "Signed out"), ("all", "All")])
    priority = forms.ChoiceField(required=False, choices=[("", "Any priority"), *Priority.choices])
    flagged = forms.BooleanField(required=False, label="AI-flagged only")
    sort = forms.ChoiceField(required=False, choices=[(k, k) for k in SORTS], widget=forms.HiddenInput)


def _analysis_annotations(cases: QuerySet[Case]) -> QuerySet[Case]:
    """Slides analysed by the active model, and whether any analysis job of the case is still running."""
    running = Job.objects.filter(
        Q(case=OuterRef("pk")) | Q(slide__part__case=OuterRef("pk")), state__in=ACTIVE_STATES
    ).exclude(kind__in=[DRAFT, EMBED_REPORT])
    cases = cases.annotate(analysis_running=Exists(running))
    bundle = active_bundle()
    if bundle is None:
        return cases.annotate(analysed_count=Value(0))
    analysed = (
        SlideEmbedding.objects.filter(bundle=bundle, slide__part__case=OuterRef("pk"))
        .values("slide__part__case").annotate(n=Count("slide", distinct=True)).values("n")
    )
    return cases.annotate(analysed_count=Coalesce(Subquery(analysed, output_field=IntegerField()), 0))


def worklist_cases(user, data) -> tuple[QuerySet[Case], WorklistFilter, str]:
    form = WorklistFilter(data or None)
    params = form.cleaned_data if form.is_valid() else {}
    cases = visible_cases(user).filter(assigned_to=user) if user.is_pathologist else visible_cases(user)
    show = params.get("show") or "open"
    if show == "open":
        in_progress = Report.objects.filter(case=OuterRef("pk"), status=ReportStatus.DRAFT)
        cases = cases.filter(Q(status__in=OPEN_STATUSES) | Exists(in_progress))
    elif show == "signed":
        cases = cases.filter(status__in=SIGNED_OUT_STATUSES)
    if params.get("q"):
        cases = cases.filter(accession_number__icontains=params["q"].strip())
    if params.get("priority"):
        cases = cases.filter(priority=params["priority"])
    triage = Classification.objects.filter(section__report__case=OuterRef("pk"), label_set__is_triage=True)
    decided = triage.filter(decision__in=[Decision.CONFIRMED, Decision.OVERRIDDEN])
    model_alert_label = Label.objects.filter(label_set=OuterRef("label_set"), name=OuterRef("model_label"), alert=True)
    suggested = triage.filter(Exists(model_alert_label), model_confidence__gte=F("label_set__confidence_threshold"))
    bundle = active_bundle()
    slide_calls = SlideTriage.objects.filter(case=OuterRef("pk"), alert=True, bundle=bundle)
    latest_report = Report.objects.filter(case=OuterRef("pk")).order_by("-created_at", "-id")
    cases = cases.annotate(
        part_count=Count("parts", distinct=True),
        slide_count=Count("parts__slides", distinct=True),
        decided_alert=Exists(decided.filter(alert=True)),
        decided_other=Exists(decided.filter(alert=False)),
        model_alert=ExpressionWrapper(Q(Exists(slide_calls)) | Q(Exists(suggested)), output_field=BooleanField()),
        ai_suggestion_label=Coalesce(
            Subquery(slide_calls.order_by("-confidence").values("label")[:1]),
            Subquery(suggested.order_by("-model_confidence").values("model_label")[:1])),
        ai_suggestion_confidence=Coalesce(
            Subquery(slide_calls.order_by("-confidence").values("confidence")[:1]),
            Subquery(suggested.order_by("-model_confidence").values("model_confidence")[:1])),
        decision_label=Subquery(decided.order_by("-decided_at").values("decided_label")[:1]),
        report_kind=Subquery(latest_report.values("kind")[:1]),
        report_status=Subquery(latest_report.values("status")[:1]),
        priority_rank=When_(
            When(priority=Priority.STAT, then=Value(0)), When(priority=Priority.URGENT, then=Value(1)),
            default=Value(2), output_field=IntegerField(),
        ),
    )
    cases = cases.annotate(
        ai_flag=ExpressionWrapper(Q(decided_alert=True) | (Q(model_alert=True) & Q(decided_other=False)),
                                  output_field=BooleanField()),
    ).annotate(
        triage_rank=When_(
            When(ai_flag=True, then=Value(10) * Coalesce("priority_rank", 2) - Value(5)),
            default=Value(10) * Coalesce("priority_rank", 2), output_field=IntegerField(),
        )
    )
    if params.get("flagged"):
        cases = cases.filter(ai_flag=True)
    cases = _analysis_annotations(cases)
    sort = params.get("sort") or "triage"
    return cases.order_by(*SORTS[sort]), form, sort


def report_state_label(case: Case) -> str:
    kind, status = getattr(case, "report_kind", None), getattr(case, "report_status", None)
    if not kind:
        return "Not started"
    if status == ReportStatus.SIGNED:
        return {"report": "Signed out", "addendum": "Addendum signed", "amendment": "Amended"}[kind]
    return {"report": "Draft", "addendum": "Addendum in progress", "amendment": "Amendment in progress"}[kind]
