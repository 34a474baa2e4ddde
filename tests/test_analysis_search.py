"""Similarity search: text -> slides, slide -> slides, slide -> signed-out reports; access, filters, audit."""
from __future__ import annotations

import datetime as dt

import pytest
from django.db import connection

from tests import test_analysis_support as support
from webapp.analysis import pipeline, runtime, search
from webapp.analysis.models import SlideEmbedding
from webapp.audit.models import AuditEvent
from webapp.cases.models import CaseStatus

active_bundle, second_bundle_dir = support.active_bundle, support.second_bundle_dir
small_slides, tiny_bundle_dir = support.small_slides, support.tiny_bundle_dir


@pytest.fixture
def archive(active_bundle, cast, case_factory, small_slides):
    """Three embedded cases: one per pathologist and one nobody is assigned (lab admins only)."""

    class Archive:
        case1 = case_factory(assigned_to=cast.path1, received_date=dt.date(2026, 1, 10))
        case2 = case_factory(assigned_to=cast.path2, received_date=dt.date(2026, 3, 5))
        case3 = case_factory(received_date=dt.date(2026, 5, 20), status=CaseStatus.SIGNED_OUT)

    Archive.case2.parts.update(site="Stomach, antrum")
    Archive.slides = []
    for case, path, stain in ((Archive.case1, small_slides[0], "H&E"), (Archive.case2, small_slides[1], "PAS"),
                              (Archive.case3, small_slides[2], "H&E")):
        slide = support.ingest(path, case.parts.get(), stain=stain)
        pipeline.embed_slide(slide, active_bundle, lambda *a: None)
        Archive.slides.append(slide)
    return Archive


def _ids(result) -> set[str]:
    return {str(hit.slide.pk) for hit in result.hits}


def test_text_search_finds_only_what_the_user_may_see(archive, cast):
    everything = search.text_search(cast.admin, "tubular adenoma", k=10)
    assert _ids(everything) == {str(s.pk) for s in archive.slides}
    scores = [hit.score for hit in everything.hits]
    assert scores == sorted(scores, reverse=True) and all(-1 <= s <= 1 for s in scores)
    assert _ids(search.text_search(cast.path1, "tubular adenoma")) == {str(archive.slides[0].pk)}
    assert _ids(search.text_search(cast.outsider, "tubular adenoma")) == set()
    assert _ids(search.text_search(cast.evaluator, "carcinoma")) == set()


def test_text_score_is_query_max_over_the_32_queries(archive, cast):
    import numpy as np

    model = runtime.get_model()
    text = model.embed_text(["invasive carcinoma"])[0]
    result = search.text_search(cast.admin, "invasive carcinoma", k=3)
    for hit in result.hits:
        rows = hit.slide.query_embeddings.order_by("index").values_list("embedding", flat=True)
        queries = np.stack([np.asarray(list(row), np.float32) for row in rows])
        expected = float((queries @ text).max())
        assert hit.score == pytest.approx(expected, abs=2e-3)  # halfvec storage: ~3 decimal places


def test_similar_slides_excludes_itself_and_hidden_slides(archive, cast):
    source = archive.slides[0]
    result = search.similar_slides(cast.admin, source, k=5)
    assert _ids(result) == {str(archive.slides[1].pk), str(archive.slides[2].pk)}
    assert _ids(search.similar_slides(cast.path1, source, k=5)) == set()  # path1 sees only its own case


def test_filters_narrow_and_still_fill_k(archive, cast):
    ids = [str(s.pk) for s in archive.slides]
    assert _ids(search.text_search(cast.admin, "x", filters=search.Filters(site="stomach"))) == {ids[1]}
    assert _ids(search.text_search(cast.admin, "x", filters=search.Filters(stain="pas"))) == {ids[1]}
    dated = search.Filters(received_from=dt.date(2026, 3, 1), received_to=dt.date(2026, 4, 1))
    assert _ids(search.text_search(cast.admin, "x", filters=dated)) == {ids[1]}
    assert _ids(search.text_search(cast.admin, "x", filters=search.Filters(signed_out_only=True))) == {ids[2]}
    # k=2 with a filter that leaves exactly two candidates: both come back.
    assert len(search.text_search(cast.admin, "x", k=2, filters=search.Filters(stain="H&E")).hits) == 2


def test_iterative_scan_settings_apply_inside_the_search_transaction(db):
    with search.hnsw_scan(123), connection.cursor() as cursor:
        cursor.execute("SHOW hnsw.iterative_scan")
        assert cursor.fetchone()[0] == "relaxed_order"
        cursor.execute("SHOW hnsw.ef_search")
        assert cursor.fetchone()[0] == "123"


def test_query_rows_use_the_hnsw_index(archive):
    with search.hnsw_scan(), connection.cursor() as cursor:
        # The table is tiny, so tell the planner to prefer what it would pick at scale: the ordered index scan.
        for switch in ("enable_seqscan", "enable_bitmapscan", "enable_sort"):
            cursor.execute(f"SET LOCAL {switch} = off")
        vector = "[" + ",".join(["0.0625"] * 256) + "]"
        cursor.execute(
            "EXPLAIN SELECT slide_id FROM analysis_queryembedding WHERE bundle_id = %s "
            "ORDER BY embedding <=> %s::halfvec LIMIT 320", [archive.slides[0].embeddings.get().bundle_id, vector]
        )
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "query_emb_hnsw" in plan


def test_similar_reports_come_from_signed_out_cases_only(archive, cast):
    result = search.similar_reports(cast.admin, archive.slides[0], k=5)
    assert [hit.slide.part.case_id for hit in result.hits] == [archive.case3.pk]


def test_search_reads_the_newest_complete_bundle_while_the_active_one_is_incomplete(archive, second_bundle_dir):
    first = runtime.active_bundle()
    assert first.archive_complete_at is not None and runtime.search_bundle() == first
    second = pipeline.register_bundle(second_bundle_dir, activate=True)
    assert runtime.search_bundle() == first  # old rows keep serving
    for slide in archive.slides:
        pipeline.embed_slide(slide, second, lambda *a: None)
    second.refresh_from_db()
    assert second.archive_complete_at is not None and runtime.search_bundle() == second
    assert SlideEmbedding.objects.filter(bundle=first).count() == 3  # one row per (slide, bundle)


# --- the page ----------------------------------------------------------------------------------------
def test_search_page_shows_hits_with_thumbnail_and_viewer_link_and_audits(archive, cast, client_for):
    response = client_for(cast.path1).get("/search/", {"mode": "text", "q": "adenoma"})
    assert response.status_code == 200
    body = response.content.decode()
    slide = archive.slides[0]
    assert f"/slides/{slide.pk}/thumbnail.jpg" in body
    assert f"/cases/{archive.case1.pk}/viewer/?slide={slide.pk}" in body
    assert str(archive.slides[1].pk) not in body and str(archive.slides[2].pk) not in body
    event = AuditEvent.objects.filter(action="search").latest("id")
    assert event.details["hits"] == 1 and event.details["query_kind"] == "text"
    assert event.user == cast.path1


def test_search_page_slide_modes_resolve_the_source_through_access(archive, cast, client_for):
    source = archive.slides[1]
    assert client_for(cast.path1).get("/search/", {"mode": "slides", "slide": source.pk}).status_code == 404
    response = client_for(cast.path2).get("/search/", {"mode": "reports", "slide": source.pk})
    assert response.status_code == 200 and "No results" in response.content.decode()
    admin = client_for(cast.admin).get("/search/", {"mode": "reports", "slide": source.pk}).content.decode()
    assert f"/cases/{archive.case3.pk}/" in admin


@pytest.mark.parametrize("who, status", [("evaluator", 403), ("outsider", 200), (None, 302)])
def test_search_page_access(db, cast, client_for, who, status):
    user = getattr(cast, who) if who else None
    assert client_for(user).get("/search/").status_code == status
