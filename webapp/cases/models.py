"""Accessioning: a Case (one specimen submission) has Parts (A, B, ...), each Part has Slides."""
from __future__ import annotations

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

    class Meta:
        ordering = ["case", "label"]
        constraints = [models.UniqueConstraint(fields=["case", "label"], name="unique_part_label_per_case")]

    def __str__(self) -> str:
        return f"{self.case.accession_number}-{self.label}"
