"""Rating studies: blinded ratings of report texts on the PathAlign rubric (1-5, 4-5 = no clinically
significant error).

A `Study` holds `Item`s: a frozen snapshot of one text about one part (so later edits to a report never
change what was rated) and a hidden source key saying where the text came from. Each item goes to
`raters_per_item` distinct evaluators as `Assignment`s, in a seeded random order per evaluator; an
assignment carries at most one `Rating`. Evaluators address their work by queue position, never by item or
source, so no id, URL or ordering they see says which source wrote a text.
"""
from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q


class StudyStatus(models.TextChoices):
    OPEN = "open", "Open"
    CLOSED = "closed", "Closed"


DEFAULT_RATER_INSTRUCTION = (
    "Read each text beside its slide and rate how accurate it is as a pathology report for that slide, on "
    "the scale shown. For a rating of 3 or less, say what kind of error it has. Texts come from several "
    "writers in a random order; judge each one on its own."
)


class Study(models.Model):
    # Name and description are for lab admins only: they may say what is compared (which would unblind).
    name = models.CharField(max_length=200, help_text="Seen by lab admins only.")
    description = models.TextField(blank=True, help_text="Seen by lab admins only.")
    # What raters read instead of the name and description (written by the lab admin for raters).
    rater_instruction = models.TextField(default=DEFAULT_RATER_INSTRUCTION)
    show_overlays = models.BooleanField(
        default=False, help_text="Raters may switch on the model's overlays (attention heatmap) on the slide.")
    # Off by default: pathologists' marks can point at the answer. On: the case's shared layer, read-only,
    # without author names or comments (webapp/slides/annotations.py, de-identified reads).
    show_annotations = models.BooleanField(
        default=False, help_text="Raters see the slide's shared annotation layer (read-only, no authors or "
                                 "comments).")
    paired = models.BooleanField(
        default=True, help_text="Only parts with a text from every chosen source, so every arm rates the "
                                "same slides.")
    status = models.CharField(max_length=10, choices=StudyStatus.choices, default=StudyStatus.OPEN)
    raters_per_item = models.PositiveSmallIntegerField(default=2)
    seed = models.BigIntegerField(help_text="Randomises item order and assignment; same seed, same study.")
    include_clinical_history = models.BooleanField(
        default=False, help_text="Show raters the clinical history (otherwise they see site and procedure only)."
    )
    evaluators = models.ManyToManyField(settings.AUTH_USER_MODEL, related_name="rating_studies", blank=True)
    # What the lab admin asked for, kept for the record (filters, accession list, source keys).
    selection = models.JSONField(default=dict, blank=True)
    sources = models.JSONField(default=list, blank=True, help_text="[{key, label}] of the compared sources.")
    # Automatic metrics of item texts never change once built (items are snapshots): computed once, kept.
    text_metrics = models.JSONField(null=True, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "studies"
        constraints = [
            models.CheckConstraint(condition=Q(raters_per_item__gte=1), name="study_at_least_one_rater"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def is_open(self) -> bool:
        return self.status == StudyStatus.OPEN

    @property
    def rater_title(self) -> str:
        """What raters call the study: a number, never the name (which may say what is compared)."""
        return f"Rating study {self.pk}"

    def source_labels(self) -> dict[str, str]:
        return {source["key"]: source["label"] for source in self.sources}


class Item(models.Model):
    """One text to rate, about one part (and the slide shown with it)."""

    # Random: exports and admin pages name items without a counter that follows creation order.
    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="items")
    case = models.ForeignKey("cases.Case", on_delete=models.PROTECT, related_name="+")
    part = models.ForeignKey("cases.Part", on_delete=models.PROTECT, related_name="+")
    slide = models.ForeignKey("slides.Slide", null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    text = models.TextField(help_text="The text as it was when the study was built (a snapshot).")
    # Hidden from evaluators: never rendered in their pages, URLs or JSON.
    source_key = models.CharField(max_length=250)
    source_ref = models.JSONField(default=dict, blank=True, help_text="Where the text was read from.")
    specimen = models.CharField(max_length=300, blank=True, help_text="Site and procedure, shown to raters.")
    clinical_history = models.TextField(blank=True, help_text="Shown only if the study includes it.")

    class Meta:
        ordering = ["study", "id"]
        constraints = [
            models.UniqueConstraint(fields=["study", "part", "source_key"], name="one_item_per_part_and_source"),
        ]

    def __str__(self) -> str:
        return f"item {self.public_id}"


class Assignment(models.Model):
    """An item in one evaluator's queue, at a position of that evaluator's own random order."""

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="assignments")
    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="assignments")
    evaluator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    position = models.PositiveIntegerField(help_text="1-based place in the evaluator's queue.")

    class Meta:
        ordering = ["study", "evaluator", "position"]
        constraints = [
            # Distinct raters per item, and so nobody rates an item twice.
            models.UniqueConstraint(fields=["item", "evaluator"], name="one_assignment_per_item_and_rater"),
            models.UniqueConstraint(fields=["study", "evaluator", "position"], name="one_item_per_queue_position"),
        ]

    def __str__(self) -> str:
        return f"{self.evaluator} #{self.position} of {self.study}"


class ErrorKind(models.TextChoices):
    WRONG_DIAGNOSIS = "wrong_diagnosis", "Wrong diagnosis"
    MISSED_FINDING = "missed_finding", "Missed finding"
    HALLUCINATED_FINDING = "hallucinated_finding", "Hallucinated finding"
    WRONG_GRADE_STAGE = "wrong_grade_stage", "Wrong grade or stage"
    OTHER = "other", "Other"


# The anchors raters see. 4 and 5 both mean "no clinically significant error" (PathAlign's threshold).
SCORE_ANCHORS = {
    5: "Accurate: no clinically significant error or omission. Could be reported as it stands.",
    4: "Accurate: no clinically significant error; minor wording, style or trivial omissions only.",
    3: "Partly accurate: the main diagnosis is right but there is a clinically significant error or "
       "omission (e.g. a missed finding, wrong grade).",
    2: "Mostly inaccurate: the main diagnosis is wrong or seriously incomplete, or several significant errors.",
    1: "Wrong or unusable: unrelated to the slide, or misleading enough to cause harm if reported.",
}
ACCEPTABLE_MIN = 4  # a rating of 4 or 5 counts as accurate
ERROR_REQUIRED_MAX = 3  # ratings of 3 or less must name the kind of error


class Rating(models.Model):
    assignment = models.OneToOneField(Assignment, on_delete=models.CASCADE, related_name="rating")
    score = models.PositiveSmallIntegerField()
    error_kind = models.CharField(max_length=24, choices=ErrorKind.choices, blank=True)
    comment = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["assignment"]
        constraints = [
            models.CheckConstraint(condition=Q(score__gte=1, score__lte=5), name="rating_score_1_to_5"),
            models.CheckConstraint(
                condition=Q(score__gte=ACCEPTABLE_MIN) | ~Q(error_kind=""), name="rating_error_kind_when_low"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.score} for {self.assignment}"
