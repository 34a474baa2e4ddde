"""AI drafts and classifications for a report, run as jobs on the "gpu" queue.

Three ways to draft a part's text (the pathologist chooses):
- "qformer":   the Q-Former's own decoder (PathAlign-G), `model.generate(features)`.
- "retrieval": PathAlign-R: embed the slide, rank the text embeddings of signed-out reports (stored in
               pgvector at sign-out) by query-max similarity, and start from the closest report's text.
- "llm":       a language model: the bundle's stage-2 bridge (soft prompt into a local causal LM), or a local
               multimodal model (PATHALIGN_MULTIMODAL_DIR) shown the patches the Q-Former attends to most.
Every draft also stores its evidence (the nearest signed-out reports, the most attended patches) and the
zero-shot classifications of every active label set.
"""
from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from django.conf import settings
from django.db import transaction
from pgvector.django import CosineDistance

from webapp.analysis.jobs import JobFailed, Progress, create_job, job_handler
from webapp.analysis.models import Job

from .models import (
    AIDraft,
    Classification,
    Decision,
    DraftMethod,
    LabelSet,
    Report,
    ReportKind,
    ReportSection,
    ReportStatus,
    ReportTextEmbedding,
    VersionSource,
)
from .text import without_case_specifics

log = logging.getLogger(__name__)
EVIDENCE_K = 3
PREFILTER = 50  # HNSW candidates re-scored exactly (query-max over the slide's 32 query vectors)
ACCESSION_RE = re.compile(r"\b[A-Z]{1,3}\d{2}-\d{5}\b")


def bundle_key(bundle: Any) -> str:
    return f"{bundle.name}@{bundle.version}"


# --- which methods can run now (read by the workspace; no model is loaded here) ----------------------------
@dataclass(frozen=True)
class MethodOption:
    value: str
    label: str
    available: bool
    reason: str = ""


def multimodal_dir() -> str:
    return getattr(settings, "PATHALIGN_MULTIMODAL_DIR", "") or os.environ.get("PATHALIGN_MULTIMODAL_DIR", "")


def method_options() -> list[MethodOption]:
    from webapp.analysis.runtime import active_bundle

    bundle = active_bundle()
    if bundle is None:
        reason = "No model bundle is active (a lab admin registers one)."
        return [MethodOption(m.value, m.label, False, reason) for m in DraftMethod]
    from inference.bundle import read_bundle_config

    try:
        config = read_bundle_config(bundle.path)
    except (OSError, ValueError) as exc:
        reason = f"The active bundle cannot be read: {exc}"
        return [MethodOption(m.value, m.label, False, reason) for m in DraftMethod]
    generative = "itg" in config.get("model", {}).get("losses", ["itg"])
    has_texts = ReportTextEmbedding.objects.filter(bundle=bundle_key(bundle)).exists()
    llm_reason = ""
    if not (config.get("has_bridge") or multimodal_dir()):
        llm_reason = ("This bundle has no stage-2 language-model bridge and no multimodal model is configured "
                      "(PATHALIGN_MULTIMODAL_DIR).")
    return [
        MethodOption(DraftMethod.QFORMER, DraftMethod.QFORMER.label, generative,
                     "" if generative else "The active bundle is a retrieval model (PathAlign-R)."),
        MethodOption(DraftMethod.RETRIEVAL, DraftMethod.RETRIEVAL.label, has_texts,
                     "" if has_texts else "No signed-out report has been embedded with the active bundle yet."),
        MethodOption(DraftMethod.LLM, DraftMethod.LLM.label, not llm_reason, llm_reason),
    ]


def queue_draft(report: Report, method: str, user) -> Job:
    """Queue the draft job (the view checked access and that the method is available)."""
    job = create_job("draft_report", case=report.case, user=user,
                     params={"report_id": report.pk, "method": method, "user_id": user.pk})
    Report.objects.filter(pk=report.pk, status=ReportStatus.DRAFT).update(draft_job=job)
    return job


def queue_text_embedding(report_id: int, user=None) -> Job | None:
    """After sign-out: embed the signed text for retrieval drafts (skipped when no model is active)."""
    from webapp.analysis.runtime import active_bundle

    if active_bundle() is None:
        log.info("no active bundle: report %s is not embedded for retrieval", report_id)
        return None
    report = Report.objects.get(pk=report_id)
    return create_job("embed_report", case=report.case, user=user, params={"report_id": report_id})


# --- retrieval -----------------------------------------------------------------------------------------
def superseded_report_ids(case_ids: set[int]) -> set[int]:
    """Signed reports whose text a later signed amendment replaced (retrieval must not offer them)."""
    signed = list(Report.objects.filter(case_id__in=case_ids, status=ReportStatus.SIGNED)
                  .values("id", "case_id", "kind", "signed_at"))
    out = set()
    for row in signed:
        if row["kind"] == ReportKind.ADDENDUM:
            continue
        if any(o["case_id"] == row["case_id"] and o["kind"] == ReportKind.AMENDMENT and o["signed_at"] > row["signed_at"]
               for o in signed):
            out.add(row["id"])
    return out


def similar_reports(model: Any, embedding: Any, key: str, exclude_case: int | None, k: int = EVIDENCE_K) -> list[dict]:
    """The k signed-out report sections closest to a slide: an HNSW cosine pre-filter on the slide vector,
    then exact query-max re-scoring (as PathAlign ranks), amended-away texts dropped."""
    rows = (
        ReportTextEmbedding.objects.filter(bundle=key, section__report__status=ReportStatus.SIGNED)
        .exclude(section__report__kind=ReportKind.ADDENDUM)
        .exclude(section__report__case_id=exclude_case)
        .select_related("section__report__case", "section__part")
        .order_by(CosineDistance("embedding", embedding.slide.tolist()))[:PREFILTER]
    )
    rows = list(rows)
    if not rows:
        return []
    superseded = superseded_report_ids({r.section.report.case_id for r in rows})
    rows = [r for r in rows if r.section.report_id not in superseded]
    if not rows:
        return []
    scores = model.similarity(embedding, np.stack([np.asarray(r.embedding, dtype=np.float32) for r in rows]))
    ranked = sorted(zip(rows, scores, strict=True), key=lambda pair: -pair[1])[:k]
    return [
        {
            "section": r.section_id, "report": r.section.report_id, "case": r.section.report.case_id,
            "accession": r.section.report.case.accession_number,
            "part": r.section.part.label if r.section.part else "",
            "score": round(float(score), 4), "text": r.section.text,
            "snippet": anonymise(r.section.text)[:240],
        }
        for r, score in ranked
    ]


def anonymise(text: str) -> str:
    """Snippets of other people's cases drop accession numbers (report texts carry no names)."""
    return ACCESSION_RE.sub("[case]", text)


def top_patches(feature_set: Any, attention: np.ndarray, k: int = 5) -> list[dict]:
    coords = np.asarray(getattr(feature_set, "coords", np.zeros((len(attention), 2))))
    size = int(getattr(feature_set, "patch_size", 0) or 0)
    order = np.argsort(-attention)[:k]
    return [{"x": int(coords[i][0]), "y": int(coords[i][1]), "size": size, "weight": round(float(attention[i]), 5)}
            for i in order]


def generation_options() -> dict:
    """Beam search settings; PATHALIGN_DRAFT_BEAMS / PATHALIGN_DRAFT_MAX_TOKENS (settings or environment)."""
    def value(name: str, default: int) -> int:
        return int(getattr(settings, name, None) or os.environ.get(name, default))

    return {"num_beams": value("PATHALIGN_DRAFT_BEAMS", 3), "max_new_tokens": value("PATHALIGN_DRAFT_MAX_TOKENS", 160)}


# --- the jobs ------------------------------------------------------------------------------------------
def _generate(model: Any, method: str, features: Any, feature_sets: list, slides: list, embedding: Any,
              key: str, case_id: int, context: dict) -> tuple[str, list[dict]]:
    evidence = similar_reports(model, embedding, key, exclude_case=case_id)
    if method == DraftMethod.QFORMER:
        return model.generate(features, **generation_options()), evidence
    if method == DraftMethod.RETRIEVAL:
        if not evidence:
            raise JobFailed("No signed-out reports are embedded with this model yet: choose another method.")
        # The closest report's findings, without that patient's history, signature or accession number.
        return without_case_specifics(evidence[0]["text"]), evidence
    if method == DraftMethod.LLM:
        if model.bundle.config.get("has_bridge"):
            return model.generate(features, backend="llm", **generation_options()), evidence
        if multimodal_dir():
            from inference.multimodal import MultimodalReporter

            reporter = MultimodalReporter.from_pretrained(multimodal_dir(), device=str(model.device))
            largest = max(range(len(slides)), key=lambda i: len(feature_sets[i]))
            fs = feature_sets[largest]
            attention = model.embed(fs.features).attention

            class _Feats:  # the reporter reads coords and the level-0 patch size
                coords = fs.coords
                patch_size_level0 = fs.patch_size

            text, _ = reporter.describe_slide(slides[largest].path, _Feats, attention, context=context)
            return text, evidence
        raise JobFailed("No language model is configured for this bundle.")
    raise JobFailed(f"Unknown drafting method {method!r}.")


def ensure_slide_embeddings(slides: list, bundle: Any) -> None:
    """The viewer's attention heatmap comes from the slide's embedding row (webapp.analysis): make it now
    if the slide's own analysis job has not run yet (features are cached, so this is cheap)."""
    try:
        from webapp.analysis import pipeline
        from webapp.analysis.models import SlideEmbedding
    except ImportError:
        return
    for slide in slides:
        if SlideEmbedding.objects.filter(slide=slide, bundle=bundle).exists() or not slide.path.exists():
            continue
        try:
            pipeline.embed_slide(slide, bundle, lambda fraction, message: None)
        except JobFailed as exc:  # the draft does not need it; the heatmap is just missing
            log.warning("no attention heatmap for slide %s: %s", slide.pk, exc)


def draft_report(report: Report, method: str, user, job_id: int | None, progress: Progress) -> dict:
    """Fill each part's section with an AI draft and classify it. Idempotent per job (a retried job finds
    its AIDraft rows and does not write twice)."""
    import torch

    from webapp.analysis import runtime

    from .services import save_section

    if report.status == ReportStatus.SIGNED:
        raise JobFailed("The report was signed out before the draft finished.")
    bundle = runtime.active_bundle()
    if bundle is None:
        raise JobFailed("No model bundle is active. A lab admin can register one under Models.")
    model = runtime.get_model(bundle)
    key = bundle_key(bundle)
    sections = list(report.sections.filter(part__isnull=False).select_related("part"))
    label_sets = list(LabelSet.objects.filter(active=True).prefetch_related("labels"))
    done, skipped = 0, []
    for index, section in enumerate(sections):
        slides = list(section.part.slides.order_by("block_label", "created_at"))
        if not slides:
            skipped.append(section.part.label)
            continue

        def sub(fraction: float, message: str = "", _i: int = index, _label: str = section.part.label) -> None:
            progress((_i + 0.8 * fraction) / len(sections), f"Part {_label}: {message}")

        feature_sets = [runtime.slide_features(s, bundle, progress=sub) for s in slides]
        ensure_slide_embeddings(slides, bundle)
        features = torch.cat([fs.features for fs in feature_sets])  # a part = all its slides' patches
        progress((index + 0.8) / len(sections), f"Part {section.part.label}: drafting")
        started = time.perf_counter()
        embedding = model.embed(features)
        context = {"organ": section.part.site, "clinical_history": report.case.clinical_history}
        text, evidence = _generate(model, method, features, feature_sets, slides, embedding, key,
                                   report.case_id, context)
        seconds = time.perf_counter() - started
        offsets = np.cumsum([0] + [len(fs) for fs in feature_sets])
        attention = [
            {"slide": str(s.pk), "patches": top_patches(fs, embedding.attention[offsets[i]:offsets[i + 1]])}
            for i, (s, fs) in enumerate(zip(slides, feature_sets, strict=True))
        ]
        scores = {ls.pk: model.classify(embedding, ls.label_prompts()) for ls in label_sets}
        with transaction.atomic():
            draft, created = AIDraft.objects.get_or_create(
                section=section, job_id=job_id,
                defaults={"method": method, "text": text, "bundle": key, "seconds": seconds,
                          "evidence": [{k: v for k, v in e.items() if k != "text"} for e in evidence],
                          "slides": attention},
            )
            if created:
                current = ReportSection.objects.get(pk=section.pk)
                save_section(current, text, current.version, user, source=VersionSource.AI)
            for label_set in label_sets:
                store_classification(section, label_set, scores[label_set.pk], key, job_id)
        done += 1
    return {"sections": done, "skipped_parts": skipped, "method": method, "bundle": key}


def store_classification(section: ReportSection, label_set: LabelSet, probs: dict[str, float], key: str,
                         job_id: int | None) -> Classification:
    """Write the model's probabilities; a pathologist's earlier decision is kept (and re-labelled
    confirmed/overridden against the new proposal)."""
    model_label = max(probs, key=probs.get)
    alerts = {label.name for label in label_set.labels.all() if label.alert}
    existing = Classification.objects.filter(section=section, label_set=label_set).first()
    row = existing or Classification(section=section, label_set=label_set)
    row.scores = {k: round(float(v), 5) for k, v in probs.items()}
    row.model_label = model_label
    row.model_confidence = round(float(probs[model_label]), 5)
    row.bundle = key
    row.job_id = job_id
    if row.decided_label:
        row.decision = Decision.CONFIRMED if row.decided_label == model_label else Decision.OVERRIDDEN
    row.alert = (row.decided_label or model_label) in alerts
    row.save()
    return row


def embed_report(report: Report) -> dict:
    """Store the text embedding of each signed section (for retrieval drafts). Idempotent."""
    from webapp.analysis import runtime

    if report.status != ReportStatus.SIGNED:
        raise JobFailed("Only signed-out reports are embedded.")
    bundle = runtime.active_bundle()
    if bundle is None:
        raise JobFailed("No model bundle is active. A lab admin can register one under Models.")
    model = runtime.get_model(bundle)
    key = bundle_key(bundle)
    sections = [s for s in report.sections.all() if s.text.strip()]
    if not sections:
        return {"embedded": 0}
    vectors = model.embed_text([s.text for s in sections])
    for section, vector in zip(sections, vectors, strict=True):
        ReportTextEmbedding.objects.update_or_create(
            section=section, bundle=key, defaults={"embedding": vector.tolist()}
        )
    return {"embedded": len(sections), "bundle": key}


@job_handler("draft_report", queue="gpu")
def draft_report_job(job: Job, progress: Progress) -> dict:
    from django.contrib.auth import get_user_model

    report = Report.objects.select_related("case").filter(pk=job.params.get("report_id")).first()
    if report is None:
        raise JobFailed("The report was discarded.")
    user = get_user_model().objects.filter(pk=job.params.get("user_id")).first()
    return draft_report(report, job.params.get("method", DraftMethod.QFORMER), user, job.pk, progress)


@job_handler("embed_report", queue="gpu")
def embed_report_job(job: Job, progress: Progress) -> dict:
    report = Report.objects.filter(pk=job.params.get("report_id")).first()
    if report is None:
        raise JobFailed("The report no longer exists.")
    return embed_report(report)
