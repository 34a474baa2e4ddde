"""The audit log for lab admins: browse and filter events, export them, and a patient-access report.

Filters travel in URLs as ids and dates only; accession numbers are POSTed and resolved to case ids.
Exports and access reports are themselves audit events (looking at who looked is an access too).
"""
from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from datetime import date, datetime, time, timedelta
from urllib.parse import urlencode

from django.core.paginator import Paginator
from django.db.models import Count, Max, Min, Q, QuerySet
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods

from webapp.accounts.decorators import lab_admin_required
from webapp.accounts.models import User

from .case_directory import case_directory
from .forms import AuditFilterForm, CaseLookupForm
from .log import record
from .models import AuditEvent

PAGE_SIZE = 100
EXPORT_FIELDS = ("id", "at", "username", "user_id", "action", "case_id", "accession", "object_type",
                 "object_id", "ip_address", "session", "before", "after", "details")


# --- readable events: field names and values in words, never a raw dict ---------------------------------
ACTION_LABELS = {
    "denied": "Refused access", "login_failed": "Sign-in failed", "login_locked_out": "Locked out after failed sign-ins",
    "login": "Signed in", "logout": "Signed out", "admin.view": "Opened the admin site",
    "report.sign": "Signed out a report", "report.sign_refused": "Sign-out refused",
    "report.integrity_failure": "Signed report failed its integrity check", "classification.decide":
    "Decided on an AI classification", "view_attention": "Viewed the attention heatmap",
    "model_activate_override": "Activated a model despite the regression gate",
    "model_activate_refused": "Model activation refused", "evaluation_rate": "Rated a study item",
    "evaluation_view_item": "Opened a study item", "evaluation_create_study": "Created a rating study",
    "evaluation_study_status": "Opened or closed a rating study", "evaluation_view_results": "Viewed study results",
    "evaluation_export": "Exported study results", "worklist.view": "Viewed the worklist",
}
# Words for keys that read badly when only their underscores are replaced.
KEY_LABELS = {"ip": "IP address", "mpp": "Microns per pixel", "id": "ID", "url": "Address", "at": "At",
              "deidentified": "De-identified view", "stat": "STAT"}


def words(key: str) -> str:
    """'assigned_to' -> 'Assigned to', 'report.sign' -> 'Report sign'."""
    key = str(key)
    if key.lower() in KEY_LABELS:
        return KEY_LABELS[key.lower()]
    text = " ".join(key.replace("_", " ").replace(".", " ").replace("-", " ").split())
    return text[:1].upper() + text[1:] if text else ""


def action_label(action: str) -> str:
    return ACTION_LABELS.get(action) or words(action)


def value_words(value, depth: int = 0) -> str:
    """A JSON value as a person would write it: yes/no, lists with commas, nested fields as 'name: value'."""
    if value is None or value == "" or value == [] or value == {}:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(value_words(item, depth + 1) for item in value[:20]) + (" …" if len(value) > 20 else "")
    if isinstance(value, dict):
        if depth > 1:
            return f"{len(value)} fields"
        return "; ".join(f"{words(k).lower()}: {value_words(v, depth + 1)}" for k, v in value.items())
    text = str(value)
    return text if len(text) <= 240 else text[:239] + "…"


def readable_details(event: AuditEvent) -> list[tuple[str, str]]:
    """(field, what happened) rows: changes as 'before → after', then the event's own details."""
    rows: list[tuple[str, str]] = []
    before, after = event.before, event.after
    if isinstance(before, dict) or isinstance(after, dict):
        before = before if isinstance(before, dict) else {}
        after = after if isinstance(after, dict) else {}
        for key in dict.fromkeys([*before, *after]):
            if key in before and key in after:
                rows.append((words(key), f"{value_words(before[key])} → {value_words(after[key])}"))
            elif key in after:
                rows.append((words(key), f"set to {value_words(after[key])}"))
            else:
                rows.append((words(key), f"removed (was {value_words(before[key])})"))
    elif before is not None or after is not None:
        rows.append(("Change", f"{value_words(before)} → {value_words(after)}"))
    details = event.details
    if isinstance(details, dict):
        rows += [(words(key), value_words(value)) for key, value in details.items()]
    elif details not in (None, "", []):
        rows.append(("Details", value_words(details)))
    return rows


def _readable(events: Iterable[AuditEvent]) -> None:
    for event in events:
        event.action_label = action_label(event.action)
        event.readable = readable_details(event)


def _int(value: str | None) -> int | None:
    try:
        number = int(value or "")
    except ValueError:
        return None
    return number if 0 < number < 2**63 else None


def _date(value: str | None) -> date | None:
    try:
        return date.fromisoformat(value or "")
    except ValueError:
        return None


def parse_filters(params) -> dict:
    """GET parameters -> filters; a malformed value is ignored rather than failing the page."""
    return {
        "user": _int(params.get("user")),
        "action": (params.get("action") or "")[:40],
        "case": _int(params.get("case")),
        "date_from": _date(params.get("date_from")),
        "date_to": _date(params.get("date_to")),
    }


def filtered_events(filters: dict) -> QuerySet[AuditEvent]:
    events = AuditEvent.objects.all()
    if filters["user"]:
        events = events.filter(user_id=filters["user"])
    if filters["action"]:
        events = events.filter(action=filters["action"])
    if filters["case"]:
        events = events.filter(case_id=filters["case"])
    tz = timezone.get_current_timezone()
    if filters["date_from"]:
        events = events.filter(at__gte=datetime.combine(filters["date_from"], time.min, tzinfo=tz))
    if filters["date_to"]:  # inclusive: the whole of the end day
        events = events.filter(at__lt=datetime.combine(filters["date_to"] + timedelta(days=1), time.min, tzinfo=tz))
    return events


def _accessions(case_ids: Iterable[int | None]) -> dict[int, str]:
    return case_directory().accessions({case_id for case_id in case_ids if case_id})


def _form_initial(filters: dict) -> dict:
    initial = {key: value for key, value in filters.items() if value and key != "case"}
    if filters["case"]:
        initial["accession"] = _accessions([filters["case"]]).get(filters["case"], "")
    return initial


@lab_admin_required
@require_http_methods(["GET", "POST"])
def audit_log(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        form = AuditFilterForm(request.POST, user=request.user)
        if form.is_valid():
            query = urlencode(form.query_params())
            return redirect(reverse("audit_log") + (f"?{query}" if query else ""))
        filters = parse_filters({})
    else:
        filters = parse_filters(request.GET)
        form = AuditFilterForm(initial=_form_initial(filters), user=request.user)
    # The action filter in words too (the codes stay the values).
    choices = list(form.fields["action"].choices)
    form.fields["action"].choices = choices[:1] + sorted(((value, action_label(value)) for value, _ in choices[1:]),
                                                         key=lambda choice: choice[1])
    events = filtered_events(filters)
    page = Paginator(events, PAGE_SIZE).get_page(request.GET.get("page"))
    accessions = _accessions(event.case_id for event in page)
    for event in page:
        event.accession = accessions.get(event.case_id, "")
    _readable(page)
    query = urlencode({key: str(value) for key, value in filters.items() if value})
    return render(request, "audit/log.html", {"form": form, "page": page, "query": query})


def _rows(events: QuerySet[AuditEvent]) -> Iterator[dict]:
    batch: list[AuditEvent] = []

    def flush() -> Iterator[dict]:
        accessions = _accessions(event.case_id for event in batch)
        for event in batch:
            yield {
                "id": event.pk, "at": event.at.isoformat(), "username": event.username, "user_id": event.user_id,
                "action": event.action, "case_id": event.case_id, "accession": accessions.get(event.case_id, ""),
                "object_type": event.object_type, "object_id": event.object_id, "ip_address": event.ip_address,
                "session": event.session, "before": event.before, "after": event.after, "details": event.details,
            }

    # Streamed in batches: a year of events must not be held in memory.
    for event in events.iterator(chunk_size=2000):
        batch.append(event)
        if len(batch) >= 2000:
            yield from flush()
            batch = []
    yield from flush()


class _Echo:
    def write(self, value: str) -> str:
        return value


def _csv_stream(events: QuerySet[AuditEvent]) -> Iterator[str]:
    writer = csv.writer(_Echo())
    yield writer.writerow(EXPORT_FIELDS)
    for row in _rows(events):
        yield writer.writerow([
            json.dumps(row[key], sort_keys=True) if key in ("before", "after", "details") and row[key] is not None
            else _csv_safe(row[key]) for key in EXPORT_FIELDS
        ])


def _csv_safe(value) -> str:
    # A cell starting with = + - @ is a formula to spreadsheet programs (CSV injection): quote it.
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _json_stream(events: QuerySet[AuditEvent]) -> Iterator[str]:
    yield "["
    for index, row in enumerate(_rows(events)):
        yield ("," if index else "") + "\n" + json.dumps(row, sort_keys=True)
    yield "\n]\n"


def _export(request: HttpRequest, fmt: str) -> StreamingHttpResponse:
    filters = parse_filters(request.GET)
    # A snapshot up to this moment: the export's own event (recorded next) is not part of it.
    last_id = AuditEvent.objects.aggregate(last=Max("id"))["last"] or 0
    events = filtered_events(filters).filter(id__lte=last_id).order_by("at", "id")
    record(request, "export_audit", case=filters["case"], format=fmt,
           filters={key: str(value) for key, value in filters.items() if value})
    stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
    if fmt == "csv":
        response = StreamingHttpResponse(_csv_stream(events), content_type="text/csv; charset=utf-8")
    else:
        response = StreamingHttpResponse(_json_stream(events), content_type="application/json")
    response["Content-Disposition"] = f'attachment; filename="audit-{stamp}.{fmt}"'
    response["Cache-Control"] = "no-store"
    return response


@lab_admin_required
@require_GET
def audit_export_csv(request: HttpRequest) -> StreamingHttpResponse:
    return _export(request, "csv")


@lab_admin_required
@require_GET
def audit_export_json(request: HttpRequest) -> StreamingHttpResponse:
    return _export(request, "json")


@lab_admin_required
@require_http_methods(["GET", "POST"])
def case_access_lookup(request: HttpRequest) -> HttpResponse:
    """Type an accession number (POST, so it stays out of URLs); go to that case's access report."""
    form = CaseLookupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        case_id = case_directory().find(request.user, form.cleaned_data["accession"])
        if case_id is not None:
            return redirect("audit_case_access", case_id=case_id)
        form.add_error("accession", "No case has that accession number.")
    return render(request, "audit/case_access_lookup.html", {"form": form})


@lab_admin_required
@require_GET
def case_access_report(request: HttpRequest, case_id: int) -> HttpResponse:
    """Everyone who saw or changed a case, with first and last access, plus refused attempts."""
    case = case_directory().get(request.user, case_id)
    events = AuditEvent.objects.filter(case_id=case.pk)
    seen = events.exclude(action="denied")
    people = list(
        seen.values("user_id", "username")
        .annotate(first=Min("at"), last=Max("at"), count=Count("id"))
        .order_by("-last")
    )
    actions: dict[int | None, set[str]] = {}
    for user_id, action in seen.values_list("user_id", "action").distinct():
        actions.setdefault(user_id, set()).add(action)
    roles = dict(User.objects.filter(pk__in=[p["user_id"] for p in people if p["user_id"]])
                 .values_list("pk", "role"))
    for person in people:
        person["actions"] = sorted(actions.get(person["user_id"], ()))
        person["action_labels"] = sorted(action_label(action) for action in person["actions"])
        person["role"] = roles.get(person["user_id"], "")
    denied = events.filter(action="denied")
    record(request, "view_access_report", case=case, obj=case)
    denied_rows, event_rows = list(denied[:200]), list(events.filter(~Q(action="denied"))[:500])
    _readable([*denied_rows, *event_rows])
    return render(request, "audit/case_access.html", {
        "case": case, "people": people, "denied": denied_rows, "denied_count": denied.count(),
        "events": event_rows, "event_count": seen.count(),
    })
