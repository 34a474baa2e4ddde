"""Case search and filtering, applied on top of what the user may see."""
from django.db.models import Q, QuerySet

from .models import Case


def filter_cases(cases: QuerySet[Case], data: dict) -> QuerySet[Case]:
    if q := (data.get("q") or "").strip():
        cases = cases.filter(
            Q(accession_number__icontains=q) | Q(patient_pseudonym__icontains=q) | Q(parts__site__icontains=q)
        ).distinct()
    if data.get("status"):
        cases = cases.filter(status=data["status"])
    if data.get("priority"):
        cases = cases.filter(priority=data["priority"])
    if data.get("assigned_to"):
        cases = cases.filter(assigned_to=data["assigned_to"])
    if data.get("received_from"):
        cases = cases.filter(received_date__gte=data["received_from"])
    if data.get("received_to"):
        cases = cases.filter(received_date__lte=data["received_to"])
    return cases
