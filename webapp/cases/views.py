"""Accessioning and case pages. Every case is resolved through `access.get_case_for_user`."""
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.db.models import Case as When_
from django.db.models import Count, IntegerField, Value, When
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from webapp.accounts.decorators import lab_admin_required
from webapp.audit.log import record

from . import access, specimens
from .forms import AssignForm, CaseFilterForm, CaseForm, PartForm, SpecimenRuleForm
from .models import (
    SIGNED_OUT_STATUSES,
    CaseStatus,
    IdentityLocked,
    Part,
    Priority,
    SpecimenField,
    SpecimenRule,
)
from .search import filter_cases

PAGE_SIZE = 50


@login_required
def home(request):
    user = request.user
    if user.is_lab_admin:
        return redirect("case_list")
    if user.is_pathologist:
        return redirect("worklist")
    return render(request, "home.html")


@login_required
def case_list(request):
    """All visible cases, searchable and filterable; htmx requests get only the results table."""
    form = CaseFilterForm(request.GET or None)
    cases = access.visible_cases(request.user).select_related("assigned_to").annotate(
        part_count=Count("parts", distinct=True), slide_count=Count("parts__slides", distinct=True)
    )
    if form.is_valid():
        cases = filter_cases(cases, form.cleaned_data)
    # Work first: open cases before signed-out ones, STAT then urgent then routine, then the oldest.
    cases = cases.annotate(
        done_rank=When_(When(status__in=SIGNED_OUT_STATUSES, then=Value(1)), default=Value(0),
                        output_field=IntegerField()),
        priority_rank=When_(When(priority=Priority.STAT, then=Value(0)), When(priority=Priority.URGENT, then=Value(1)),
                            default=Value(2), output_field=IntegerField()),
    ).order_by("done_rank", "priority_rank", "received_date", "id")
    context = {"form": form, "cases": cases[:PAGE_SIZE], "total": cases.count()}
    template = "cases/_case_rows.html" if request.htmx else "cases/case_list.html"
    return render(request, template, context)


@lab_admin_required
@require_http_methods(["GET", "POST"])
def case_create(request):
    form = CaseForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        case = form.save(commit=False)
        case.created_by = request.user
        case.save()
        record(request, "create_case", case=case, obj=case, after=_case_fields(case))
        messages.success(request, f"Case {case.accession_number} accessioned.")
        return redirect("case_detail", case_id=case.pk)
    return render(request, "cases/case_form.html", {"form": form, "title": "Accession a case"})


@login_required
@require_http_methods(["GET", "POST"])
def case_edit(request, case_id: int):
    case = access.get_case_for_user(request.user, case_id, edit=True)
    before = _case_fields(case)
    form = CaseForm(request.POST or None, instance=case)
    if request.method == "POST" and form.is_valid():
        try:
            form.save()
        except IdentityLocked as exc:
            record(request, "edit_case_refused", case=case, obj=case, before=before, reason=str(exc))
            form.add_error(None, str(exc))
            return render(request, "cases/case_form.html", {"form": form, "title": f"Edit {case}", "case": case},
                          status=409)
        record(request, "edit_case", case=case, obj=case, before=before, after=_case_fields(case))
        messages.success(request, "Case updated.")
        return redirect("case_detail", case_id=case.pk)
    return render(request, "cases/case_form.html", {"form": form, "title": f"Edit {case}", "case": case})


@login_required
def case_detail(request, case_id: int):
    case = access.get_case_for_user(request.user, case_id)
    parts = case.parts.prefetch_related("slides")  # the page sorts them by block (cases sit below slides)
    record(request, "view_case", case=case, obj=case)
    context = {
        "case": case,
        "parts": parts,
        "can_edit": access.can_edit_accessioning(request.user),
        "assign_form": AssignForm(initial={"pathologist": case.assigned_to}),
        "part_form": PartForm(case=case),
        "upload_limit": settings.SLIDE_UPLOAD_MAX_BYTES,
    }
    return render(request, "cases/case_detail.html", context)


@login_required
@require_POST
def case_assign(request, case_id: int):
    case = access.get_case_for_user(request.user, case_id, edit=True)
    form = AssignForm(request.POST)
    if form.is_valid():
        before = {"assigned_to": case.assigned_to.username if case.assigned_to else None, "status": case.status}
        case.assigned_to = form.cleaned_data["pathologist"]
        if case.status in (CaseStatus.ACCESSIONED, CaseStatus.ASSIGNED):
            case.status = CaseStatus.ASSIGNED if case.assigned_to else CaseStatus.ACCESSIONED
        case.save(update_fields=["assigned_to", "status", "updated_at"])
        record(request, "assign_case", case=case, obj=case, before=before, after={
            "assigned_to": case.assigned_to.username if case.assigned_to else None, "status": case.status})
        messages.success(request, f"Assigned to {case.assigned_to or 'nobody'}.")
    else:
        messages.error(request, "Choose an active pathologist.")
    return redirect("case_detail", case_id=case.pk)


@login_required
@require_http_methods(["GET", "POST"])
def part_create(request, case_id: int):
    case = access.get_case_for_user(request.user, case_id, edit=True)
    form = PartForm(request.POST or None, case=case)
    if request.method == "POST" and form.is_valid():
        part = form.save(commit=False)
        part.case = case
        try:
            part.save()
        except IdentityLocked as exc:
            form.add_error(None, str(exc))
            template = "cases/_part_form.html" if request.htmx else "cases/part_form.html"
            return render(request, template, {"case": case, "part_form": form}, status=409)
        record(request, "create_part", case=case, obj=part, after=_part_fields(part))
        messages.success(request, f"Part {part.label} added.")
        if request.htmx:
            response = render(request, "cases/_part_form.html", {"case": case, "part_form": PartForm(case=case)})
            response["HX-Refresh"] = "true"
            return response
        return redirect("case_detail", case_id=case.pk)
    template = "cases/_part_form.html" if request.htmx else "cases/part_form.html"
    return render(request, template, {"case": case, "part_form": form})


@login_required
@require_http_methods(["GET", "POST"])
def part_edit(request, case_id: int, part_id: int):
    part = access.get_part_for_user(request.user, case_id, part_id, edit=True)
    before = _part_fields(part)
    form = PartForm(request.POST or None, instance=part, case=part.case)
    if request.method == "POST" and form.is_valid():
        try:
            form.save()
        except IdentityLocked as exc:
            record(request, "edit_part_refused", case=part.case_id, obj=part, before=before, reason=str(exc))
            form.add_error(None, str(exc))
            return render(request, "cases/part_form.html", {"case": part.case, "part_form": form, "part": part},
                          status=409)
        record(request, "edit_part", case=part.case_id, obj=part, before=before, after=_part_fields(part))
        messages.success(request, f"Part {part.label} updated.")
        return redirect("case_detail", case_id=part.case_id)
    return render(request, "cases/part_form.html", {"case": part.case, "part_form": form, "part": part})


# Before/after values for the audit log: the accessioning fields a person can change.
def _case_fields(case) -> dict:
    return {field: str(getattr(case, field)) for field in CaseForm.Meta.fields}


def _part_fields(part) -> dict:
    return {field: getattr(part, field) for field in PartForm.Meta.fields}


@lab_admin_required
@require_http_methods(["GET", "POST"])
def specimen_rules(request):
    """The lab's organ and procedure-family rules (cases.specimens), which retrieval drafts and their evidence
    filter by and which flag a draft naming another organ. Adding or deleting a rule re-derives every part's
    family at once; each change is audited. A rule is changed by deleting it and adding the new one."""
    form = SpecimenRuleForm(initial={"field": SpecimenField.SITE, "order": 100})
    action = request.POST.get("action") if request.method == "POST" else None
    if action == "add":
        form = SpecimenRuleForm(request.POST)
        if form.is_valid():
            rule = form.save()
            parts = specimens.reclassify_parts()
            record(request, "specimen_rule.add", obj=rule, after=_rule_fields(rule), classified_parts=parts)
            messages.success(request, f"Rule added: {rule}. {parts} parts now have an organ.")
            return redirect("specimen_rules")
    elif action == "delete":
        rule = get_object_or_404(SpecimenRule, pk=request.POST.get("rule") or 0)
        with transaction.atomic():  # recorded while the rule still has its id
            record(request, "specimen_rule.delete", obj=rule, before=_rule_fields(rule))
            rule.delete()
            parts = specimens.reclassify_parts()
        messages.success(request, f"Rule deleted. {parts} parts now have an organ.")
        return redirect("specimen_rules")
    elif action == "defaults":
        created = specimens.ensure_default_rules()
        record(request, "specimen_rule.defaults", created=created)
        messages.success(request, f"{created} default rules added.")
        return redirect("specimen_rules")
    elif request.method == "POST":
        messages.error(request, "Choose to add or delete a rule.")
    rules = SpecimenRule.objects.order_by("field", "order", "id")
    unmatched = (Part.objects.filter(organ="").exclude(site="").values_list("site", flat=True)
                 .distinct().order_by("site")[:50])
    context = {"form": form, "site_rules": [r for r in rules if r.field == SpecimenField.SITE],
               "procedure_rules": [r for r in rules if r.field == SpecimenField.PROCEDURE],
               "unmatched_sites": list(unmatched)}
    return render(request, "cases/specimen_rules.html", context)


def _rule_fields(rule) -> dict:
    return {"field": rule.field, "contains": rule.contains, "family": rule.family, "order": rule.order}
