"""Accessioning: a Case (one specimen submission) has Parts (A, B, ...), each Part has Slides.

Once a case is signed out, the fields that identify the patient and the specimen are part of the signed
record: they are locked (here and by a database trigger, reports migration 0005). A correction goes through
an amendment: while one is open, the reports app opens the correction window (`register_correction_window`).
"""
from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models
from django.utils import timezone

ACCESSION_PATTERN = r"^[A-Z]{1,3}\d{2}-\d{5}$"
accession_validator = RegexValidator(ACCESSION_PATTERN, "Use the lab format, for example S26-00042.")
part_label_validator = RegexValidator(r"^[A-Z]{1,2}$", "Part labels are capital letters: A, B, ... AA.")


class Priority(models.TextChoices):
    ROUTINE = "routine", "Routine"
    URGENT = "urgent", "Urgent"
    STAT = "stat", "STAT"


PRIORITY_RANK = {Priority.STAT: 0, Priority.URGENT: 1, Priority.ROUTINE: 2}


class CaseStatus(models.TextChoices):
    ACCESSIONED = "accessioned", "Accessioned"
    ASSIGNED = "assigned", "Assigned"
    IN_REVIEW = "in_review", "In review"
    SIGNED_OUT = "signed_out", "Signed out"
    AMENDED = "amended", "Amended"


# A case is signed out once its primary report is signed; an amendment keeps it so.
SIGNED_OUT_STATUSES = (CaseStatus.SIGNED_OUT, CaseStatus.AMENDED)

# What the signed record shows of the case and its parts (the snapshot freezes them; these stay locked).
IDENTIFYING_CASE_FIELDS = ("accession_number", "patient_pseudonym", "received_date", "clinical_history")
IDENTIFYING_PART_FIELDS = ("label", "site", "procedure")


class IdentityLocked(Exception):
    """A signed case's identifying field was changed outside an amendment."""


# {case id -> True while a correction (an amendment in progress) may change identifying fields}. The
# reports app registers it; this app sits below reports and does not import it.
_correction_open: Callable[[int], bool] | None = None


def register_correction_window(is_open: Callable[[int], bool]) -> None:
    global _correction_open
    _correction_open = is_open


def identity_locked(case_id: int | None, status: str) -> bool:
    if case_id is None or status not in SIGNED_OUT_STATUSES:
        return False
    return not (_correction_open is not None and _correction_open(case_id))


LOCKED_MESSAGE = ("This case is signed out: its identifying fields are part of the signed record. To correct "
                  "them, the pathologist starts an amendment; while it is open they can be changed.")


class Case(models.Model):
    accession_number = models.CharField(max_length=16, unique=True, validators=[accession_validator])
    patient_pseudonym = models.CharField(
        max_length=64, help_text="A study or lab pseudonym, never the patient's name."
    )
    clinical_history = models.TextField(blank=True)
    priority = models.CharField(max_length=10, choices=Priority.choices, default=Priority.ROUTINE)
    received_date = models.DateField(default=timezone.localdate)
    status = models.CharField(max_length=12, choices=CaseStatus.choices, default=CaseStatus.ACCESSIONED)
    assigned_to = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="assigned_cases",
        limit_choices_to={"role": "pathologist", "is_active": True},
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-received_date", "-id"]
        indexes = [models.Index(fields=["assigned_to", "status"])]

    def __str__(self) -> str:
        return self.accession_number

    def save(self, *args, **kwargs):
        if self.pk:
            stored = Case.objects.filter(pk=self.pk).values("status", *IDENTIFYING_CASE_FIELDS).first()
            if stored and identity_locked(self.pk, stored["status"]):
                changed = [f for f in IDENTIFYING_CASE_FIELDS if getattr(self, f) != stored[f]]
                if changed:
                    raise IdentityLocked(f"{LOCKED_MESSAGE} (changed: {', '.join(changed)})")
        super().save(*args, **kwargs)

    @property
    def age_days(self) -> int:
        return (timezone.localdate() - self.received_date).days

    def next_part_label(self) -> str:
        used = set(self.parts.values_list("label", flat=True))
        for index in range(702):  # A..Z, AA..ZZ
            label = chr(65 + index) if index < 26 else chr(64 + index // 26) + chr(65 + index % 26)
            if label not in used:
                return label
        raise ValueError("a case cannot have more than 702 parts")


class Part(models.Model):
    case = models.ForeignKey(Case, on_delete=models.CASCADE, related_name="parts")
    label = models.CharField(max_length=2, validators=[part_label_validator])
    site = models.CharField(max_length=200, help_text="Anatomic site, e.g. 'Colon, sigmoid'.")
    procedure = models.CharField(max_length=200, blank=True, help_text="e.g. 'Biopsy', 'Resection'.")
    description = models.TextField(blank=True, help_text="Gross description.")
    # Derived from site and procedure by the lab's specimen rules (cases.specimens): retrieval drafts and
    # evidence come only from parts of the same organ and procedure family.
    organ = models.CharField(max_length=60, blank=True, db_index=True)
    procedure_family = models.CharField(max_length=60, blank=True)

    class Meta:
        ordering = ["case", "label"]
        constraints = [models.UniqueConstraint(fields=["case", "label"], name="unique_part_label_per_case")]

    def __str__(self) -> str:
        return f"{self.case.accession_number}-{self.label}"

    def save(self, *args, **kwargs):
        from .specimens import classify  # the rules live in their own module (same app)

        case_status = Case.objects.filter(pk=self.case_id).values_list("status", flat=True).first()
        if identity_locked(self.case_id, case_status or ""):
            stored = Part.objects.filter(pk=self.pk).values(*IDENTIFYING_PART_FIELDS).first() if self.pk else None
            changed = ([f for f in IDENTIFYING_PART_FIELDS if getattr(self, f) != stored[f]] if stored
                       else ["a new part"])
            if changed:
                raise IdentityLocked(f"{LOCKED_MESSAGE} (changed: {', '.join(changed)})")
        self.organ, self.procedure_family = classify(self.site, self.procedure)
        if kwargs.get("update_fields") is not None:
            kwargs["update_fields"] = {*kwargs["update_fields"], "organ", "procedure_family"}
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        status = Case.objects.filter(pk=self.case_id).values_list("status", flat=True).first()
        if identity_locked(self.case_id, status or ""):
            raise IdentityLocked(LOCKED_MESSAGE)
        return super().delete(*args, **kwargs)


class SpecimenField(models.TextChoices):
    SITE = "site", "Site"
    PROCEDURE = "procedure", "Procedure"


class SpecimenRule(models.Model):
    """A lab-editable rule: a part whose site (or procedure) contains `contains` belongs to `family`.
    Rules are tried in `order`; the first match wins. See cases.specimens."""

    field = models.CharField(max_length=10, choices=SpecimenField.choices)
    contains = models.CharField(max_length=80, help_text="Matched case-insensitively as a whole word.")
    family = models.CharField(max_length=60, help_text="Organ (for sites) or procedure family, e.g. 'colon'.")
    order = models.PositiveSmallIntegerField(default=100)

    class Meta:
        ordering = ["field", "order", "id"]
        constraints = [models.UniqueConstraint(fields=["field", "contains"], name="unique_specimen_rule")]

    def __str__(self) -> str:
        return f"{self.get_field_display()} contains '{self.contains}' -> {self.family}"
