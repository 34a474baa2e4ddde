"""Reports: AI drafts that a pathologist edits, classifies and signs out; addenda and amendments after that.

A case has one primary `Report` and, after sign-out, any number of addenda and amendments (each a `Report`
of its own, signed in turn). A report has one `ReportSection` per part. Every save of a section's text is a
`ReportVersion` (history, undo, diffs); every AI draft is an `AIDraft`, kept unchanged so the final text can
be compared with what the model wrote. Signed reports are frozen by the app (save/update/delete raise
`ReportLocked`) and by PostgreSQL triggers (migration 0002), whoever asks.
"""
from __future__ import annotations

import hashlib

from django.conf import settings
from django.db import models
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone
from pgvector.django import HnswIndex, VectorField

from webapp.analysis.models import EMBED_DIM


class ReportLocked(Exception):
    """A change to a signed-out report was attempted."""


class LabelSet(models.Model):
    """A classification the model proposes and the pathologist decides, e.g. organ or triage priority."""

    name = models.CharField(max_length=80, unique=True)
    description = models.CharField(max_length=300, blank=True)
    is_triage = models.BooleanField(
        default=False, help_text="Alert labels of a triage set raise a case in the worklist."
    )
    active = models.BooleanField(default=True)
    order = models.PositiveSmallIntegerField(default=0)
    # Below this probability the model's pick is shown as "uncertain", never as a proposal. A lab sets it per
    # label set from its own validation (docs/reporting.md); the default only keeps near-uniform picks out.
    confidence_threshold = models.FloatField(
        default=0.6, help_text="Below this probability the model's label is shown as uncertain.")
    # How the threshold was last calibrated from sign-out decisions (webapp.reports.calibration), if it was.
    calibration = models.JSONField(default=dict, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["order", "name"]

    def __str__(self) -> str:
        return self.name

    def label_prompts(self) -> dict[str, list[str]]:
        """{label: prompts} for `PathAlign.classify` (a zero-shot prompt ensemble per label)."""
        return {label.name: label.prompt_list() for label in self.labels.all()}


class Label(models.Model):
    label_set = models.ForeignKey(LabelSet, on_delete=models.CASCADE, related_name="labels")
    name = models.CharField(max_length=120)
    prompts = models.JSONField(default=list, blank=True, help_text="Prompt texts; their embeddings are averaged.")
    alert = models.BooleanField(default=False, help_text="For triage sets: this label flags the case.")
    order = models.PositiveSmallIntegerField(default=0)
    # A standard code for exports (FHIR conclusionCode / Specimen bodySite), e.g. SNOMED CT.
    code_system = models.CharField(max_length=100, blank=True, help_text="e.g. http://snomed.info/sct")
    code = models.CharField(max_length=40, blank=True, help_text="e.g. 71854001 (Colon structure)")

    class Meta:
        ordering = ["label_set", "order", "name"]
        constraints = [models.UniqueConstraint(fields=["label_set", "name"], name="unique_label_per_set")]

    def __str__(self) -> str:
        return self.name

    def prompt_list(self) -> list[str]:
        return [p.strip() for p in self.prompts if str(p).strip()] or [self.name]


class ReportKind(models.TextChoices):
    PRIMARY = "report", "Report"
    ADDENDUM = "addendum", "Addendum"
    AMENDMENT = "amendment", "Amendment"


class ReportStatus(models.TextChoices):
    DRAFT = "draft", "Draft"
    SIGNED = "signed", "Signed out"


class DraftMethod(models.TextChoices):
    QFORMER = "qformer", "Q-Former decoder (PathAlign-G)"
    RETRIEVAL = "retrieval", "Closest signed-out reports (PathAlign-R)"
    LLM = "llm", "Language model (stage-2 bridge)"


class ReportQuerySet(models.QuerySet):
    def reported(self) -> ReportQuerySet:
        """What is reported now, the one definition: for each case, its latest signed primary report or
        amendment (a later signed amendment replaces the text before it; addenda add, never replace)."""
        diagnostic = [ReportKind.PRIMARY, ReportKind.AMENDMENT]
        later = Report.objects.filter(
            case=OuterRef("case"), status=ReportStatus.SIGNED, kind=ReportKind.AMENDMENT
        ).filter(Q(signed_at__gt=OuterRef("signed_at")) | Q(signed_at=OuterRef("signed_at"), id__gt=OuterRef("id")))
        return self.filter(status=ReportStatus.SIGNED, kind__in=diagnostic).exclude(Exists(later))

    # Bulk paths skip Model.save(); refuse them here too so no ORM route changes a signed report.
    def update(self, **kwargs):
        if self.filter(status=ReportStatus.SIGNED).exists():
            raise ReportLocked("signed-out reports cannot be changed")
        return super().update(**kwargs)

    def delete(self):
        if self.filter(status=ReportStatus.SIGNED).exists():
            raise ReportLocked("signed-out reports cannot be deleted")
        return super().delete()


class Report(models.Model):
    case = models.ForeignKey("cases.Case", on_delete=models.PROTECT, related_name="reports")
    kind = models.CharField(max_length=10, choices=ReportKind.choices, default=ReportKind.PRIMARY)
    follows = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="followups",
        help_text="For addenda and amendments: the signed report they follow.",
    )
    reason = models.TextField(blank=True, help_text="Why an amendment changes what was reported.")
    status = models.CharField(max_length=10, choices=ReportStatus.choices, default=ReportStatus.DRAFT)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    # A plain id, not a constraint: deleting old jobs must never try to touch a signed report.
    draft_job = models.ForeignKey(
        "jobs.Job", null=True, blank=True, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+"
    )
    signed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    signed_at = models.DateTimeField(null=True, blank=True)
    content_hash = models.CharField(max_length=64, blank=True, help_text="SHA-256 of the signed text.")
    # Everything the signed report shows, frozen at sign-out (webapp.reports.snapshot): exports render
    # from it, and every read checks it against `snapshot_hash`.
    snapshot = models.JSONField(null=True, blank=True)
    snapshot_hash = models.CharField(max_length=64, blank=True, help_text="SHA-256 of the canonical snapshot.")
    no_slides_reason = models.TextField(blank=True, help_text="Why the case was signed out without slides.")

    objects = ReportQuerySet.as_manager()

    class Meta:
        ordering = ["case", "created_at", "id"]
        constraints = [
            # One report in progress per case: a draft, an addendum or an amendment, never two at once.
            models.UniqueConstraint(fields=["case"], condition=models.Q(status="draft"), name="one_draft_per_case"),
            models.CheckConstraint(
                condition=~models.Q(kind="amendment") | ~models.Q(reason=""), name="amendment_has_reason"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.case} #{self.pk}"

    def save(self, *args, **kwargs):
        if self.pk and Report.objects.filter(pk=self.pk, status=ReportStatus.SIGNED).exists():
            raise ReportLocked(f"report {self.pk} is signed out and cannot be changed")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        if Report.objects.filter(pk=self.pk, status=ReportStatus.SIGNED).exists():
            raise ReportLocked(f"report {self.pk} is signed out and cannot be deleted")
        return super().delete(*args, **kwargs)

    @property
    def is_signed(self) -> bool:
        return self.status == ReportStatus.SIGNED

    def full_text(self) -> str:
        """The report as one text: each section under its heading."""
        parts = []
        for section in self.sections.all():
            parts.append(f"{section.heading}\n{section.text.strip()}" if section.heading else section.text.strip())
        return "\n\n".join(p for p in parts if p.strip())

    def compute_hash(self) -> str:
        return hashlib.sha256(self.full_text().encode()).hexdigest()


class _GuardedBySignedReport(models.Model):
    """Rows whose report is signed are frozen (the triggers say the same in the database)."""

    class Meta:
        abstract = True

    def save(self, *args, **kwargs):
        if Report.objects.filter(pk=self._report_id(), status=ReportStatus.SIGNED).exists():
            raise ReportLocked("this report is signed out and cannot be changed")
        super().save(*args, **kwargs)

    def _report_id(self) -> int | None:
        raise NotImplementedError


class ReportSection(_GuardedBySignedReport):
    """The text for one part (or, for an addendum, free text with no part)."""

    report = models.ForeignKey(Report, on_delete=models.CASCADE, related_name="sections")
    part = models.ForeignKey("cases.Part", null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    heading = models.CharField(max_length=300, blank=True)
    order = models.PositiveSmallIntegerField(default=0)
    text = models.TextField(blank=True)
    # Optimistic lock: each save sends the version it started from; a stale one is refused (409).
    version = models.PositiveIntegerField(default=0)
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["report", "order", "id"]

    def __str__(self) -> str:
        return self.heading or f"section {self.pk}"

    def _report_id(self) -> int | None:
        return self.report_id

    @property
    def latest_ai_draft(self) -> AIDraft | None:
        return self.ai_drafts.order_by("-created_at", "-id").first()


class AIDraft(models.Model):
    """What the model wrote for a section, kept unchanged (the database refuses UPDATE)."""

    section = models.ForeignKey(ReportSection, on_delete=models.CASCADE, related_name="ai_drafts")
    job_id = models.BigIntegerField(null=True, blank=True)
    method = models.CharField(max_length=12, choices=DraftMethod.choices)
    text = models.TextField()
    bundle = models.ForeignKey("analysis.ModelBundle", null=True, on_delete=models.PROTECT, related_name="+",
                               help_text="The model bundle that wrote it.")
    # Similar signed-out cases the draft drew on: [{"section": id, "case": id, "score": s, "snippet": ...}].
    evidence = models.JSONField(default=list, blank=True)
    slides = models.JSONField(default=list, blank=True, help_text="Slide ids whose patches were read.")
    # Safety findings about the text, e.g. it names another organ than the part's: shown beside the draft.
    warnings = models.JSONField(default=list, blank=True)
    seconds = models.FloatField(default=0.0)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["section", "created_at", "id"]
        constraints = [
            # A retried job (worker died) must not store its draft twice.
            models.UniqueConstraint(fields=["section", "job_id"], name="one_ai_draft_per_job"),
        ]

    def __str__(self) -> str:
        return f"AI draft ({self.method}) for {self.section}"


class VersionSource(models.TextChoices):
    AI = "ai", "AI draft"
    EDIT = "edit", "Edit"
    RESTORE = "restore", "Restored"
    COPY = "copy", "Copied from the signed report"


class ReportVersion(models.Model):
    """Every saved text of a section: undo and diffs. Append-only (the database refuses UPDATE)."""

    section = models.ForeignKey(ReportSection, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    text = models.TextField(blank=True)
    source = models.CharField(max_length=8, choices=VersionSource.choices, default=VersionSource.EDIT)
    saved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    saved_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["section", "-number"]
        constraints = [models.UniqueConstraint(fields=["section", "number"], name="unique_version_number")]

    def __str__(self) -> str:
        return f"v{self.number} of {self.section}"


class Decision(models.TextChoices):
    PENDING = "pending", "Not yet decided"
    CONFIRMED = "confirmed", "Confirmed"
    OVERRIDDEN = "overridden", "Overridden"
    DISMISSED = "dismissed", "Dismissed (not reported)"


REVIEWED = (Decision.CONFIRMED, Decision.OVERRIDDEN, Decision.DISMISSED)


class Classification(_GuardedBySignedReport):
    """The model's label probabilities for one section and one label set, and the pathologist's decision."""

    section = models.ForeignKey(ReportSection, on_delete=models.CASCADE, related_name="classifications")
    label_set = models.ForeignKey(LabelSet, on_delete=models.PROTECT, related_name="+")
    scores = models.JSONField(default=dict, help_text="{label: probability}, from model.classify.")
    model_label = models.CharField(max_length=120)
    model_confidence = models.FloatField()
    bundle = models.ForeignKey("analysis.ModelBundle", null=True, on_delete=models.PROTECT, related_name="+")
    job_id = models.BigIntegerField(null=True, blank=True)
    decision = models.CharField(max_length=10, choices=Decision.choices, default=Decision.PENDING)
    decided_label = models.CharField(max_length=120, blank=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    # Whether the label that counts now (decided, else proposed) is an alert label: the worklist reads it.
    alert = models.BooleanField(default=False)

    class Meta:
        ordering = ["section", "label_set__order", "label_set__name"]
        constraints = [models.UniqueConstraint(fields=["section", "label_set"], name="one_classification_per_set")]
        indexes = [models.Index(fields=["alert"], name="classification_alert_idx", condition=models.Q(alert=True))]

    def __str__(self) -> str:
        return f"{self.label_set}: {self.final_label}"

    def _report_id(self) -> int | None:
        return ReportSection.objects.filter(pk=self.section_id).values_list("report_id", flat=True).first()

    @property
    def final_label(self) -> str:
        return self.decided_label or self.model_label

    @property
    def uncertain(self) -> bool:
        """The model's pick is below its label set's threshold: shown as uncertain, not as a proposal."""
        return self.model_confidence < self.label_set.confidence_threshold

    @property
    def reported_label(self) -> str:
        """What a signed report may state: only a label the pathologist confirmed or chose."""
        return self.decided_label if self.decision in (Decision.CONFIRMED, Decision.OVERRIDDEN) else ""

    def ranked(self) -> list[tuple[str, float]]:
        return sorted(self.scores.items(), key=lambda item: -item[1])


class ReportTextEmbedding(models.Model):
    """The text embedding of a signed section, for retrieval drafts (PathAlign-R). One per model bundle."""

    section = models.ForeignKey(ReportSection, on_delete=models.CASCADE, related_name="embeddings")
    bundle = models.ForeignKey("analysis.ModelBundle", on_delete=models.CASCADE, related_name="+")
    embedding = VectorField(dimensions=EMBED_DIM)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["section", "bundle"], name="one_text_embedding_per_bundle")]
        indexes = [
            HnswIndex(name="report_text_emb_hnsw", fields=["embedding"], m=16, ef_construction=64,
                      opclasses=["vector_cosine_ops"]),
        ]

    def __str__(self) -> str:
        return f"text embedding of {self.section_id} by {self.bundle}"


class SlideTriage(models.Model):
    """The model's triage call for one slide, made as soon as the slide's analysis finishes (before anyone
    opens the case), so the worklist can raise a likely-malignant case. A suggestion: the pathologist's
    decision on the report's classification is shown beside it, never mixed with it."""

    slide = models.ForeignKey("slides.Slide", on_delete=models.CASCADE, related_name="+")
    case = models.ForeignKey("cases.Case", on_delete=models.CASCADE, related_name="+")
    bundle = models.ForeignKey("analysis.ModelBundle", on_delete=models.CASCADE, related_name="+")
    label_set = models.ForeignKey(LabelSet, on_delete=models.CASCADE, related_name="+")
    label = models.CharField(max_length=120)
    confidence = models.FloatField()
    alert = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["slide", "bundle", "label_set"], name="one_triage_per_slide")]
        indexes = [models.Index(fields=["case", "alert"], name="slidetriage_case_alert_idx")]

    def __str__(self) -> str:
        return f"{self.label_set}: {self.label} ({self.confidence:.0%}) for slide {self.slide_id}"
