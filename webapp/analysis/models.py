"""Model bundles and the embeddings they make (slide vectors, query vectors, attention heatmaps)."""
from __future__ import annotations

import io

import numpy as np
from django.conf import settings
from django.db import models
from django.utils.text import slugify
from pgvector.django import HalfVectorField, HnswIndex, VectorField

# --- models, embeddings and search ------------------------------------------------------------------
EMBED_DIM = 256  # pgvector columns are fixed-width; a bundle with another width is refused at registration


class ModelBundle(models.Model):
    """A PathAlign model bundle on local disk (see inference/bundle.py); exactly one is active.

    The active bundle embeds new slides. Search reads the active bundle's rows once its archive is
    complete, otherwise the newest complete bundle's (so switching models never empties search).
    """

    name = models.CharField(max_length=100)
    version = models.CharField(max_length=40)
    path = models.CharField(max_length=500, unique=True, help_text="Local directory of the bundle.")
    variant = models.CharField(max_length=4, blank=True, help_text="R (retrieval) or G (generative).")
    encoder = models.JSONField(default=dict, help_text="The patch encoder spec from bundle.json.")
    dims = models.JSONField(default=dict)
    eval_figures = models.JSONField(default=dict, blank=True, help_text="eval.json of the bundle.")
    training = models.JSONField(default=dict, blank=True, help_text="What it was trained on (summary).")
    is_active = models.BooleanField(default=False)
    archive_complete_at = models.DateTimeField(
        null=True, blank=True, help_text="When every slide of the archive had an embedding from this bundle."
    )
    registered_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # At most one active bundle, enforced by the database (a partial unique index).
            models.UniqueConstraint(
                fields=["is_active"], condition=models.Q(is_active=True), name="one_active_bundle"
            ),
            models.UniqueConstraint(fields=["name", "version"], name="unique_bundle_name_version"),
        ]

    def __str__(self) -> str:
        return f"{self.name} {self.version}"

    @property
    def key(self) -> str:
        """name@version: how drafts, classifications and rating-study sources name the bundle."""
        return f"{self.name}@{self.version}"

    @property
    def cache_key(self) -> str:
        """Directory name for this bundle's cached features: stable, filesystem-safe."""
        return f"{self.pk}-{slugify(self.name)[:40]}-{slugify(self.version)[:20]}"

    @property
    def encoder_name(self) -> str:
        return str(self.encoder.get("name") or self.encoder.get("type") or "?")


class SlideEmbedding(models.Model):
    """One slide's embedding by one bundle, plus the attention heatmap; written once, atomically."""

    slide = models.ForeignKey("slides.Slide", on_delete=models.CASCADE, related_name="embeddings")
    bundle = models.ForeignKey(ModelBundle, on_delete=models.CASCADE, related_name="slide_embeddings")
    embedding = VectorField(dimensions=EMBED_DIM)
    n_patches = models.PositiveIntegerField(default=0)
    patch_size = models.PositiveIntegerField(default=0, help_text="Patch side in level-0 pixels.")
    # npz of coords int32 [N, 2] (level-0 top-left) and attention float32 [N]: compact, read as a whole.
    heatmap = models.BinaryField(default=bytes)
    seconds = models.FloatField(default=0.0, help_text="Time to extract and embed.")
    job = models.ForeignKey("jobs.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["slide", "bundle"], name="one_embedding_per_bundle")]
        # m=24, ef_construction=128: at a million rows m=16/64 needs ef_search 400 for recall@10 0.95
        # (bench/search.py, docs/analysis.md); this graph reaches 0.97 at ef_search 100.
        indexes = [
            HnswIndex(
                name="slide_emb_hnsw", fields=["embedding"], m=24, ef_construction=128,
                opclasses=["vector_cosine_ops"],
            ),
            models.Index(fields=["bundle", "slide"], name="slide_emb_bundle_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.slide_id} by {self.bundle}"

    def heatmap_arrays(self):
        """(coords int [N, 2], attention float [N]) or None when absent."""
        if not self.heatmap:
            return None
        with np.load(io.BytesIO(bytes(self.heatmap))) as data:
            return data["coords"], data["attention"]


class QueryEmbedding(models.Model):
    """The 32 query embeddings of a slide (one row each), for text -> slide query-max search.

    halfvec: 32 rows per slide make this the largest table; half precision halves it and its HNSW index,
    and cosine ranks of unit vectors barely move at fp16 (see docs/analysis.md for the measured recall).
    """

    slide = models.ForeignKey("slides.Slide", on_delete=models.CASCADE, related_name="query_embeddings")
    bundle = models.ForeignKey(ModelBundle, on_delete=models.CASCADE, related_name="query_embeddings")
    index = models.PositiveSmallIntegerField()
    embedding = HalfVectorField(dimensions=EMBED_DIM)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["slide", "bundle", "index"], name="one_row_per_query")
        ]
        indexes = [
            HnswIndex(
                name="query_emb_hnsw", fields=["embedding"], m=24, ef_construction=128,
                opclasses=["halfvec_cosine_ops"],
            ),
        ]

    def __str__(self) -> str:
        return f"{self.slide_id} q{self.index} by {self.bundle_id}"
