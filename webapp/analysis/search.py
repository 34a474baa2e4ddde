"""Similarity search over pgvector: text -> slides, slide -> similar slides, slide -> signed-out reports.

Every search runs over `candidate_slides(user, filters)`, i.e. only slides the user may see, so results
never reveal other cases. The HNSW indexes are read with iterative scans (`hnsw.iterative_scan =
relaxed_order`, pgvector 0.8): when a filter rejects most index neighbours the scan keeps going instead of
returning fewer than k rows. If it still stops short (hnsw.max_scan_tuples), an exact scan over the
candidates finishes the job, so a filtered search returns k results whenever k candidates exist.

Text -> slides is query-max, as in BLIP-2's ITC: a slide's score is its best query's cosine with the text.
We ask the HNSW index on the query rows (32 per slide) for the nearest `k * queries` rows and keep each
slide's best row: any slide outside that list has all its queries farther than the last row kept, so the
top k distinct slides are right (up to HNSW's approximation).
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
from django.core.exceptions import ImproperlyConfigured
from django.db import connection, transaction
from django.db.models import F, Min, QuerySet
from pgvector import HalfVector, Vector
from pgvector.django import CosineDistance

from webapp.cases.access import visible_cases
from webapp.cases.models import SIGNED_OUT_STATUSES
from webapp.slides.models import Slide

from . import runtime
from .models import ModelBundle, QueryEmbedding, SlideEmbedding

MAX_K = 50
EF_SEARCH = 100

# {case id: [signed report summaries, newest first]} for "slide -> signed-out reports of similar cases".
# The reports app registers it (this app sits below reports and does not import it).
SignedReportLookup = Callable[[Iterable[int]], dict[int, list[dict]]]
_signed_reports: SignedReportLookup | None = None


def register_signed_report_lookup(lookup: SignedReportLookup) -> None:
    global _signed_reports
    _signed_reports = lookup


@dataclass
class Filters:
    site: str = ""  # organ / anatomic site, substring of the part's site
    stain: str = ""
    received_from: dt.date | None = None
    received_to: dt.date | None = None
    signed_out_only: bool = False

    @property
    def active(self) -> bool:
        return bool(self.site or self.stain or self.received_from or self.received_to or self.signed_out_only)

    def describe(self) -> dict:
        return {k: str(v) for k, v in self.__dict__.items() if v}


@dataclass
class Hit:
    slide: Slide
    score: float  # cosine similarity (query-max for text searches), higher is closer
    reports: list[dict] = field(default_factory=list)


@dataclass
class SearchResult:
    kind: str  # "text", "slides" or "reports"
    hits: list[Hit]
    bundle: ModelBundle | None
    message: str = ""
    exact_fallback: bool = False


def candidate_slides(user, filters: Filters | None = None) -> QuerySet[Slide]:
    """The slides a search may return to `user`: visible ones, narrowed by the filters."""
    filters = filters or Filters()
    slides = Slide.objects.all() if _sees_everything(user) else Slide.objects.filter(
        part__case__in=visible_cases(user)
    )
    if filters.site:
        slides = slides.filter(part__site__icontains=filters.site)
    if filters.stain:
        slides = slides.filter(stain__iexact=filters.stain)
    if filters.received_from:
        slides = slides.filter(part__case__received_date__gte=filters.received_from)
    if filters.received_to:
        slides = slides.filter(part__case__received_date__lte=filters.received_to)
    if filters.signed_out_only:
        slides = slides.filter(part__case__status__in=SIGNED_OUT_STATUSES)
    return slides


def _sees_everything(user) -> bool:
    # Lab admins see every case (cases.access.visible_cases): no IN list, so the index scan stays plain.
    return bool(user.is_authenticated and user.is_active and user.is_lab_admin)


def _restricted(user, filters: Filters) -> bool:
    return filters.active or not _sees_everything(user)


@contextmanager
def hnsw_scan(ef_search: int = EF_SEARCH) -> Iterator[None]:
    """A transaction in which HNSW scans are iterative (pgvector >= 0.8) with the given ef_search."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
        cursor.execute(f"SET LOCAL hnsw.ef_search = {max(10, min(int(ef_search), 1000))}")
        yield


def _exact(queryset: QuerySet) -> QuerySet:
    # "+ 0" hides the distance from the planner's index matching: an exact scan over the filtered rows.
    return queryset.annotate(exact_distance=F("distance") + 0).order_by("exact_distance")


def _bundle_or_message(kind: str) -> tuple[ModelBundle | None, SearchResult | None]:
    bundle = runtime.search_bundle()
    if bundle is None:
        return None, SearchResult(kind, [], None, "No model is registered yet, so there is nothing to search.")
    return bundle, None


def _attach_slides(scored: list[tuple[str, float]]) -> list[Hit]:
    slides = Slide.objects.select_related("part__case").in_bulk([slide_id for slide_id, _ in scored])
    return [Hit(slides[slide_id], score) for slide_id, score in scored if slide_id in slides]


def text_search(user, text: str, k: int = 10, filters: Filters | None = None) -> SearchResult:
    """Free text -> the k visible slides with the highest query-max cosine to the text."""
    filters = filters or Filters()
    k = max(1, min(int(k), MAX_K))
    bundle, empty = _bundle_or_message("text")
    if empty:
        return empty
    vector = runtime.get_model(bundle).embed_text([text])[0]
    queries = max(1, int((bundle.dims or {}).get("queries") or 32))
    limit = k * queries
    rows = QueryEmbedding.objects.filter(bundle=bundle)
    if _restricted(user, filters):
        rows = rows.filter(slide__in=candidate_slides(user, filters))
    rows = rows.annotate(distance=CosineDistance("embedding", HalfVector(vector.astype(np.float16))))
    with hnsw_scan(max(EF_SEARCH, limit)):
        found = list(rows.order_by("distance").values_list("slide_id", "distance")[:limit])
    best = _best_per_slide(found)
    exact = False
    if len(best) < k:  # the index scan stopped short (or there are fewer than k slides): exact query-max
        grouped = rows.values("slide_id").annotate(best=Min("distance")).order_by("best")[:k]
        exact_best = {row["slide_id"]: row["best"] for row in grouped}
        exact = len(exact_best) > len(best)
        best = exact_best if exact else best
    scored = sorted(((slide_id, 1.0 - d) for slide_id, d in best.items()), key=lambda p: -p[1])[:k]
    return SearchResult("text", _attach_slides(scored), bundle, exact_fallback=exact)


def _best_per_slide(rows: list[tuple]) -> dict:
    best: dict = {}
    for slide_id, distance in rows:
        if slide_id not in best or distance < best[slide_id]:
            best[slide_id] = distance
    return best


def _nearest_slides(user, source: Slide, bundle: ModelBundle, k: int, filters: Filters,
                    exclude_case: bool = False) -> tuple[list[tuple[str, float]], bool]:
    own = SlideEmbedding.objects.filter(slide=source, bundle=bundle).values_list("embedding", flat=True).first()
    if own is None:
        return [], False
    rows = SlideEmbedding.objects.filter(bundle=bundle).exclude(slide=source)
    if exclude_case:
        rows = rows.exclude(slide__part__case_id=source.part.case_id)
    if _restricted(user, filters):
        rows = rows.filter(slide__in=candidate_slides(user, filters))
    rows = rows.annotate(distance=CosineDistance("embedding", Vector(np.asarray(own, dtype=np.float32))))
    with hnsw_scan(max(EF_SEARCH, k)):
        found = list(rows.order_by("distance").values_list("slide_id", "distance")[:k])
    exact = False
    if len(found) < k:
        exact_rows = list(_exact(rows).values_list("slide_id", "distance")[:k])
        exact = len(exact_rows) > len(found)
        found = exact_rows if exact else found
    return [(slide_id, 1.0 - distance) for slide_id, distance in found], exact


def similar_slides(user, slide: Slide, k: int = 10, filters: Filters | None = None) -> SearchResult:
    """Slide -> the k most similar visible slides (cosine of the slide embeddings)."""
    filters = filters or Filters()
    k = max(1, min(int(k), MAX_K))
    bundle, empty = _bundle_or_message("slides")
    if empty:
        return empty
    scored, exact = _nearest_slides(user, slide, bundle, k, filters)
    if not scored and not SlideEmbedding.objects.filter(slide=slide, bundle=bundle).exists():
        return SearchResult("slides", [], bundle, "This slide has not been embedded yet.")
    return SearchResult("slides", _attach_slides(scored), bundle, exact_fallback=exact)


def similar_reports(user, slide: Slide, k: int = 10, filters: Filters | None = None) -> SearchResult:
    """Slide -> signed-out reports of the most similar other cases (one hit per case, best slide)."""
    filters = filters or Filters()
    k = max(1, min(int(k), MAX_K))
    bundle, empty = _bundle_or_message("reports")
    if empty:
        return empty
    signed = Filters(**{**filters.__dict__, "signed_out_only": True})
    scored, exact = _nearest_slides(user, slide, bundle, k * 4, signed, exclude_case=True)
    if not scored and not SlideEmbedding.objects.filter(slide=slide, bundle=bundle).exists():
        return SearchResult("reports", [], bundle, "This slide has not been embedded yet.")
    hits, seen = [], set()
    for hit in _attach_slides(scored):
        if hit.slide.part.case_id in seen:
            continue
        seen.add(hit.slide.part.case_id)
        hits.append(hit)
    hits = hits[:k]
    if _signed_reports is None:
        raise ImproperlyConfigured("No signed-report lookup is registered (webapp.reports registers one).")
    reports = _signed_reports([hit.slide.part.case_id for hit in hits])
    for hit in hits:
        hit.reports = reports.get(hit.slide.part.case_id, [])
    return SearchResult("reports", hits, bundle, exact_fallback=exact)
