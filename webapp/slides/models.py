"""Slides: one scanned glass slide of a Part, stored under a generated name in the slide store."""
from __future__ import annotations

import uuid
from pathlib import Path

from django.conf import settings
from django.db import models

from webapp.cases.models import Part


class Slide(models.Model):
    # A random UUID keeps tile and viewer URLs free of accession numbers and guessable counters.
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    part = models.ForeignKey(Part, on_delete=models.PROTECT, related_name="slides")
    stain = models.CharField(max_length=60, default="H&E")
    block_label = models.CharField(max_length=20, blank=True, help_text="Block, e.g. '1' or 'A1'.")
    # Relative to SLIDE_STORE_DIR; a file or a directory (multi-file formats such as DICOM or MIRAX).
    file_path = models.CharField(max_length=300, unique=True, editable=False)
    original_filename = models.CharField(max_length=255, blank=True, help_text="As uploaded; shown only.")
    file_size = models.BigIntegerField(default=0)
    vendor = models.CharField(max_length=40, blank=True)
    width = models.PositiveIntegerField(default=0)
    height = models.PositiveIntegerField(default=0)
    level_count = models.PositiveSmallIntegerField(default=0)
    level_dimensions = models.JSONField(default=list)
    level_downsamples = models.JSONField(default=list)
    mpp_x = models.FloatField(null=True, blank=True, help_text="Microns per pixel at level 0.")
    mpp_y = models.FloatField(null=True, blank=True)
    # Set by a lab admin when the file's resolution is missing or implausible (webapp/slides/resolution.py).
    mpp_override = models.FloatField(null=True, blank=True, help_text="Microns per pixel set by a lab admin.")
    mpp_override_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    mpp_override_at = models.DateTimeField(null=True, blank=True)
    objective_power = models.FloatField(null=True, blank=True)
    scanner = models.CharField(max_length=200, blank=True)
    associated_images = models.JSONField(default=list, help_text="Names of label/macro/thumbnail images.")
    properties = models.JSONField(default=dict, help_text="OpenSlide properties (label text excluded).")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["part__case", "part__label", "block_label", "created_at"]

    def __str__(self) -> str:
        block = f"-{self.block_label}" if self.block_label else ""
        return f"{self.part}{block} {self.stain}"

    @property
    def case(self):
        return self.part.case

    @property
    def path(self) -> Path:
        return Path(settings.SLIDE_STORE_DIR) / self.file_path

    @property
    def thumbnail_path(self) -> Path:
        return Path(settings.SLIDE_STORE_DIR) / "thumbnails" / f"{self.pk}.jpg"

    @property
    def effective_mpp(self) -> float | None:
        """Level-0 um/px analysis uses: the lab admin's, else the file's when plausible; None = unknown."""
        from .resolution import effective_mpp

        return effective_mpp(self)

    @property
    def resolution_unknown(self) -> bool:
        return self.effective_mpp is None

    @property
    def magnification_label(self) -> str:
        return f"{self.objective_power:g}x" if self.objective_power else "unknown"


# --- annotations (webapp/slides/annotations.py holds the rules; annotation_views.py the API) ----------
class AnnotationLabel(models.Model):
    """One entry of the lab's annotation label list (QuPath's "classification"), edited by lab admins.
    Labels are retired (active=False), never deleted: saved annotations keep pointing at them."""

    name = models.CharField(max_length=80, unique=True)
    color = models.CharField(max_length=7, default="#d62728", help_text="#rrggbb")
    position = models.PositiveSmallIntegerField(default=0, help_text="Order in the viewer's list.")
    active = models.BooleanField(default=True)

    class Meta:
        ordering = ["position", "name"]

    def __str__(self) -> str:
        return self.name

    @property
    def rgb(self) -> list[int]:
        value = self.color.lstrip("#")
        return [int(value[i:i + 2], 16) for i in (0, 2, 4)]


class AnnotationQuerySet(models.QuerySet):
    def alive(self):
        return self.filter(deleted_at__isnull=True)

    def visible_to(self, user):
        """Not deleted, and either on the shared layer or on `user`'s own layer."""
        return self.alive().filter(models.Q(layer=Annotation.Layer.SHARED) | models.Q(owner=user))


class Annotation(models.Model):
    """A region, line or point drawn on a slide, in level-0 pixel coordinates (a GeoJSON geometry)."""

    class Kind(models.TextChoices):
        POINT = "point", "Point"
        LINE = "line", "Line"
        RECTANGLE = "rectangle", "Rectangle"
        POLYGON = "polygon", "Polygon"
        FREEHAND = "freehand", "Free-hand"

    class Layer(models.TextChoices):
        PERSONAL = "personal", "Mine"
        SHARED = "shared", "Shared"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    slide = models.ForeignKey(Slide, on_delete=models.PROTECT, related_name="annotations")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    layer = models.CharField(max_length=10, choices=Layer.choices, default=Layer.PERSONAL)
    kind = models.CharField(max_length=10, choices=Kind.choices)
    geometry = models.JSONField(help_text="GeoJSON geometry in level-0 pixels (x right, y down).")
    label = models.ForeignKey(AnnotationLabel, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    # A classification imported from GeoJSON that is not on the lab's list is kept as it came.
    class_name = models.CharField(max_length=80, blank=True)
    class_color = models.CharField(max_length=7, blank=True)
    comment = models.TextField(blank=True, max_length=2000)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    deleted_at = models.DateTimeField(null=True, blank=True)
    deleted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    objects = AnnotationQuerySet.as_manager()

    class Meta:
        ordering = ["created_at"]
        indexes = [models.Index(fields=["slide", "layer"], name="slides_ann_slide_layer",
                                condition=models.Q(deleted_at__isnull=True))]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} on {self.slide_id}"
