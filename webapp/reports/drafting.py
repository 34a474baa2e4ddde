"""AI drafts and classifications for a report, run as jobs on the "gpu" queue.

Three ways to draft a part's text (the pathologist chooses):
- "qformer":   the Q-Former's own decoder (PathAlign-G).
- "retrieval": PathAlign-R: embed the part, rank the text embeddings of signed-out reports (stored in
               pgvector at sign-out) by query-max similarity, among parts of the same organ and procedure
               family only (cases.specimens), and start from the closest report's final-diagnosis lines,
               de-identified: never another patient's history, gross description, names or dates.
- "llm":       a language model: the bundle's stage-2 bridge (soft prompt into a local causal LM), or a local
               multimodal model (MULTIMODAL_MODEL_DIR) shown the patches the Q-Former attends to most.
The model library does the reading (`PathAlign.draft_part`: all the part's slides as one bag of patches);
this module chooses, orchestrates and saves. Every draft states its own part's header (label, site,
procedure) and carries warnings when its text names another organ or side than the part's. Every draft
also stores its evidence (the nearest signed-out reports of the same specimen family, de-identified, and the
most attended patches) and the zero-shot classifications of every active label set.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.dispatch import receiver
from pgvector.django import CosineDistance

from webapp.analysis import pipeline, runtime
from webapp.analysis.models import ModelBundle, SlideEmbedding
from webapp.analysis.search import hnsw_scan
from webapp.cases.deid import deidentify, staff_names
from webapp.cases.specimens import organs_named
from webapp.jobs.models import Job
from webapp.jobs.runner import JobFailed, Progress, create_job, job_handler

from .models import (
    AIDraft,
    Classification,
    Decision,
    DraftMethod,
    LabelSet,
    Report,
    ReportSection,
    ReportStatus,
    ReportTextEmbedding,
    VersionSource,
)
from .services import save_section
from .signals import report_signed
from .text import diagnosis_lines, names_malignancy, own_part_header, reads_benign, side_of, with_own_header

log = logging.getLogger(__name__)
EVIDENCE_K = 3
PREFILTER = 50  # HNSW candidates re-scored exactly (query-max over the part's 32 query vectors)
SNIPPET_CHARS = 240
DRAFT = "draft_report"
EMBED_REPORT = "embed_report"


# --- which methods can run now (read by the workspace; no model is loaded here) ----------------------------
@dataclass(frozen=True)
class MethodOption:
    value: str
    label: str
    available: bool
    reason: str = ""


def method_options() -> list[MethodOption]:
    bundle = runtime.active_bundle()
    if bundle is None:
        reason = "No model bundle is active (a lab admin registers one)."
        return [MethodOption(m.value, m.label, False, reason) for m in DraftMethod]
    try:
        config = runtime.read_bundle_config(bundle.path)
    except (OSError, ValueError) as exc:
        reason = f"The active bundle cannot be read: {exc}"
        return [MethodOption(m.value, m.label, False, reason) for m in DraftMethod]
    generative = "itg" in config.get("model", {}).get("losses", ["itg"])
    has_texts = ReportTextEmbedding.objects.filter(bundle=bundle).exists()
    llm_reason = ""
    if not (config.get("has_bridge") or settings.MULTIMODAL_MODEL_DIR):
        llm_reason = ("This model has no language-model bridge, and no multimodal language model is set up; "
                      "a lab admin can add one.")
    return [
        MethodOption(DraftMethod.QFORMER, DraftMethod.QFORMER.label, generative,
                     "" if generative else "The active bundle is a retrieval model (PathAlign-R)."),
        MethodOption(DraftMethod.RETRIEVAL, DraftMethod.RETRIEVAL.label, has_texts,
                     "" if has_texts else "No signed-out report has been embedded with the active bundle yet."),
        MethodOption(DraftMethod.LLM, DraftMethod.LLM.label, not llm_reason, llm_reason),
    ]


def queue_draft(report: Report, method: str, user) -> Job:
    """Queue the draft job (the view checked access and that the method is available)."""
    job = create_job(DRAFT, case=report.case, user=user,
                     params={"report_id": report.pk, "method": method, "user_id": user.pk})
    Report.objects.filter(pk=report.pk, status=ReportStatus.DRAFT).update(draft_job=job)
    return job


@receiver(report_signed, dispatch_uid="reports_embed_signed_text")
def queue_text_embedding(sender, report: Report, user=None, **kwargs) -> Job | None:
    """After sign-out: embed the signed text for retrieval drafts (skipped when no model is active)."""
    if runtime.active_bundle() is None:
        log.info("no active bundle: report %s is not embedded for retrieval", report.pk)
        return None
    return create_job(EMBED_REPORT, case=report.case, user=user, params={"report_id": report.pk})


# --- retrieval -----------------------------------------------------------------------------------------
def similar_reports(model, embedding, bundle: ModelBundle, part, k: int = EVIDENCE_K) -> list[dict]:
    """The k reported (signed, not amended-away) sections closest to a part, among other cases' parts of the
    same organ and procedure family: an HNSW cosine pre-filter on the part vector (an iterative scan, so the
    filter does not starve it), then exact query-max re-scoring (as PathAlign ranks). Each carries its
    de-identified diagnosis lines ("diagnosis") and a snippet of them; never the other case's full text."""
    if not part.organ:
        return []
    rows = ReportTextEmbedding.objects.filter(
        bundle=bundle, section__report__in=Report.objects.reported(),
        section__part__organ=part.organ, section__part__procedure_family=part.procedure_family,
    ).exclude(section__report__case_id=part.case_id).select_related("section__report__case", "section__part")
    with hnsw_scan():
        rows = list(rows.order_by(CosineDistance("embedding", embedding.slide.tolist()))[:PREFILTER])
    if not rows:
        return []
    scores = model.similarity(embedding, np.stack([np.asarray(r.embedding, dtype=np.float32) for r in rows]))
    ranked = sorted(zip(rows, scores, strict=True), key=lambda pair: -pair[1])[:k]
    staff = staff_names()
    out = []
    for r, score in ranked:
        case = r.section.report.case
        diagnosis = deidentify(diagnosis_lines(r.section.text), [*staff, case.accession_number,
                                                                  case.patient_pseudonym])
        out.append({"section": r.section_id, "report": r.section.report_id, "case": case.pk,
                    "part": r.section.part.label if r.section.part else "", "score": round(float(score), 4),
                    "diagnosis": diagnosis, "snippet": diagnosis[:SNIPPET_CHARS]})
    return out


def draft_warnings(text: str, part) -> list[str]:
    """What makes a draft unsafe to take as it stands: it names another organ or side than its part."""
    warnings = []
    body = text.split("\n", 1)[1] if text.startswith(own_part_header(part)) else text
    others = sorted(organs_named(body) - {part.organ}) if part.organ else []
    if others:
        warnings.append(f"The draft names {', '.join(others)}, but this part is {part.site or 'unspecified'} "
                        f"({part.organ}). Check the text before using it.")
    side, own = side_of(body), side_of(part.site)
    if side and own and side != own:
        warnings.append(f"The draft says {side}, but this part's site is {part.site}.")
    if not part.organ:
        warnings.append(f"Part {part.label}'s site ({part.site or 'empty'}) matches no specimen rule, so the "
                        "draft could not be checked against it.")
    return warnings


# How sure the triage classification must be before a draft that says the opposite is flagged.
CONTRADICTION_CONFIDENCE = 0.5


def classification_warnings(text: str, label_sets: list, scores: dict) -> list[str]:
    """A draft that contradicts the same model's triage classification of the part: it reads benign while
    the classification calls the part likely malignant, or it names a malignancy while the classification
    calls it likely benign. The two readings come from different heads of the model (the decoder and the
    slide-text similarity); when they disagree, neither can be taken as it stands. ``scores``: label set pk
    -> {label name: probability}, as ``draft_report`` computes them. (The part header names no finding.)"""
    warnings = []
    for label_set in label_sets:
        if not label_set.is_triage or label_set.pk not in scores:
            continue
        probs = scores[label_set.pk]
        alerts = [label.name for label in label_set.labels.all() if label.alert and label.name in probs]
        if not alerts:
            continue
        alert = max(alerts, key=probs.get)
        p_alert = float(probs[alert])
        others = {name: float(p) for name, p in probs.items() if name not in alerts}
        if p_alert >= CONTRADICTION_CONFIDENCE and reads_benign(text):
            warnings.append(f"The draft reads as benign, but the model's {label_set.name.lower()} classification "
                            f"of this part is {alert} ({p_alert:.0%}). A small focus may have been missed: "
                            "read the slides before using the text.")
        elif others and max(others.values()) > 1 - CONTRADICTION_CONFIDENCE and names_malignancy(text):
            benign = max(others, key=others.get)
            warnings.append(f"The draft names a malignancy, but the model's {label_set.name.lower()} "
                            f"classification of this part is {benign} ({others[benign]:.0%}). Read the slides "
                            "before using the text.")
    return warnings


# A slide this many times larger (in tissue patches) than the largest the model was trained on is outside what
# its training tested: a model trained on small fields can read a 10 mm slide as benign around a small focus.
RANGE_FACTOR = 4


def range_warnings(bundle: ModelBundle, slides: list, feature_sets: list) -> list[str]:
    """The part's slides that are far larger than any the bundle was trained on (bundle.json's
    training.patches_per_slide, kept on the ModelBundle row), in words; [] when in range or unrecorded."""
    largest = ((bundle.training or {}).get("patches_per_slide") or {}).get("max")
    if not largest:
        return []
    beyond = [f"{slide.part.label}-{slide.block_label or index + 1} ({len(features):,} tissue patches)"
              for index, (slide, features) in enumerate(zip(slides, feature_sets, strict=True))
              if len(features) > RANGE_FACTOR * largest]
    if not beyond:
        return []
    return [f"Slide{'s' if len(beyond) > 1 else ''} {', '.join(beyond)} {'are' if len(beyond) > 1 else 'is'} far "
            f"larger than any this model ({bundle.key}) was trained on (at most {int(largest):,} tissue patches a "
            "slide): its reading of such slides is untested and may miss a small focus."]


class PartNotDrafted(Exception):
    """This part cannot be drafted by the chosen method; the others still are (the reason is shown)."""


# --- the jobs ------------------------------------------------------------------------------------------
def _write(model, method: str, feature_sets: list, slides: list, bundle: ModelBundle, part, context: dict):
    """(draft, text, evidence) for one part by `method`."""
    config = runtime.generation_config()
    # The library writes the text for the Q-Former decoder and the stage-2 bridge; for retrieval and the
    # multimodal model it gives the part's embedding and attention only, and the text is chosen here.
    if method == DraftMethod.QFORMER:
        backend = "qformer"
    elif method == DraftMethod.LLM and model.bundle.config.get("has_bridge"):
        backend = "llm"
    else:
        backend = "none"
    draft = model.draft_part(feature_sets, config.with_(backend=backend))
    evidence = similar_reports(model, draft.embedding, bundle, part)
    if backend != "none":
        return draft, with_own_header(draft.text, part), evidence
    if method == DraftMethod.RETRIEVAL:
        if not part.organ:
            raise PartNotDrafted(f"Part {part.label}: its site ({part.site or 'empty'}) matches no specimen rule, "
                                 "so no signed-out report of the same organ can be chosen (a lab admin can add "
                                 "a rule).")
        usable = [e for e in evidence if e["diagnosis"].strip()]
        if not usable:
            raise PartNotDrafted(f"Part {part.label}: no signed-out {part.organ} "
                                 f"{part.procedure_family or 'specimen'} report is embedded with this model yet.")
        # The closest report's final-diagnosis lines only, de-identified, under this part's own header.
        return draft, f"{own_part_header(part)}\n{usable[0]['diagnosis']}", evidence
    if method == DraftMethod.LLM:
        if not settings.MULTIMODAL_MODEL_DIR:
            raise JobFailed("No language model is configured for this bundle.")
        from inference.multimodal import MultimodalReporter  # transformers: only in the drafting worker

        reporter = MultimodalReporter.from_pretrained(settings.MULTIMODAL_MODEL_DIR, device=str(model.device))
        largest = max(range(len(slides)), key=lambda i: len(feature_sets[i]))
        text, _ = reporter.describe_slide(slides[largest].path, feature_sets[largest],
                                          draft.per_slide_attention[largest], config, context=context)
        return draft, with_own_header(text, part), evidence
    raise JobFailed(f"Unknown drafting method {method!r}.")


def ensure_slide_embeddings(slides: list, bundle: ModelBundle) -> None:
    """The viewer's attention heatmap comes from the slide's embedding row (webapp.analysis): make it now
    if the slide's own analysis job has not run yet (features are cached, so this is cheap)."""
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
    if report.status == ReportStatus.SIGNED:
        raise JobFailed("The report was signed out before the draft finished.")
    bundle = runtime.active_bundle()
    if bundle is None:
        raise JobFailed("No model bundle is active. A lab admin can register one under Models.")
    model = runtime.get_model(bundle)
    sections = list(report.sections.filter(part__isnull=False).select_related("part"))
    label_sets = list(LabelSet.objects.filter(active=True).prefetch_related("labels"))
    done, skipped, not_drafted = 0, [], []
    for index, section in enumerate(sections):
        slides = list(section.part.slides.order_by("block_label", "created_at"))
        if not slides:
            skipped.append(section.part.label)
            continue

        def patches(done: int, total: int, _i: int = index, _label: str = section.part.label) -> None:
            progress((_i + 0.8 * done / max(total, 1)) / len(sections), f"Part {_label}: {done}/{total} patches")

        feature_sets = [runtime.slide_features(s, bundle, progress=patches) for s in slides]
        ensure_slide_embeddings(slides, bundle)
        progress((index + 0.8) / len(sections), f"Part {section.part.label}: drafting")
        started = time.perf_counter()
        context = {"organ": section.part.site, "clinical_history": report.case.clinical_history}
        try:
            draft, text, evidence = _write(model, method, feature_sets, slides, bundle, section.part, context)
        except PartNotDrafted as exc:
            not_drafted.append(str(exc))
            continue
        seconds = time.perf_counter() - started
        attention = [{"slide": str(s.pk), "patches": top}
                     for s, top in zip(slides, draft.top_patches(feature_sets), strict=True)]
        # a label scores as its best-matching prompt (labels are unions: "Likely malignant", "Malignant", ...)
        scores = {ls.pk: model.classify(draft.embedding, ls.label_prompts(), pooling="max") for ls in label_sets}
        with transaction.atomic():
            ai, created = AIDraft.objects.get_or_create(
                section=section, job_id=job_id,
                defaults={"method": method, "text": text, "bundle": bundle, "seconds": seconds,
                          "evidence": [{k: v for k, v in e.items() if k != "diagnosis"} for e in evidence],
                          "slides": attention,
                          "warnings": draft_warnings(text, section.part) + range_warnings(bundle, slides, feature_sets)
                          + classification_warnings(text, label_sets, scores)},
            )
            if created:
                current = ReportSection.objects.get(pk=section.pk)
                save_section(current, text, current.version, user, source=VersionSource.AI)
            for label_set in label_sets:
                store_classification(section, label_set, scores[label_set.pk], bundle, job_id)
        done += 1
    if not done and not_drafted:
        raise JobFailed(" ".join(not_drafted))
    return {"sections": done, "skipped_parts": skipped, "not_drafted": not_drafted, "method": method,
            "bundle": bundle.key}


def store_classification(section: ReportSection, label_set: LabelSet, probs: dict[str, float],
                         bundle: ModelBundle, job_id: int | None) -> Classification:
    """Write the model's probabilities; a pathologist's earlier decision is kept (and re-labelled
    confirmed/overridden against the new proposal)."""
    model_label = max(probs, key=probs.get)
    alerts = {label.name for label in label_set.labels.all() if label.alert}
    existing = Classification.objects.filter(section=section, label_set=label_set).first()
    row = existing or Classification(section=section, label_set=label_set)
    row.scores = {k: round(float(v), 5) for k, v in probs.items()}
    row.model_label = model_label
    row.model_confidence = round(float(probs[model_label]), 5)
    row.bundle = bundle
    row.job_id = job_id
    if row.decided_label:
        row.decision = Decision.CONFIRMED if row.decided_label == model_label else Decision.OVERRIDDEN
    row.alert = (row.decided_label or model_label) in alerts
    row.save()
    return row


def embed_report(report: Report) -> dict:
    """Store the text embedding of each signed section (for retrieval drafts). Idempotent."""
    if report.status != ReportStatus.SIGNED:
        raise JobFailed("Only signed-out reports are embedded.")
    bundle = runtime.active_bundle()
    if bundle is None:
        raise JobFailed("No model bundle is active. A lab admin can register one under Models.")
    model = runtime.get_model(bundle)
    sections = [s for s in report.sections.all() if s.text.strip()]
    if not sections:
        return {"embedded": 0}
    vectors = model.embed_text([s.text for s in sections])
    for section, vector in zip(sections, vectors, strict=True):
        ReportTextEmbedding.objects.update_or_create(
            section=section, bundle=bundle, defaults={"embedding": vector.tolist()}
        )
    return {"embedded": len(sections), "bundle": bundle.key}


@job_handler(DRAFT, queue="gpu")
def draft_report_job(job: Job, progress: Progress) -> dict:
    report = Report.objects.select_related("case").filter(pk=job.params.get("report_id")).first()
    if report is None:
        raise JobFailed("The report was discarded.")
    user = get_user_model().objects.filter(pk=job.params.get("user_id")).first()
    return draft_report(report, job.params.get("method", DraftMethod.QFORMER), user, job.pk, progress)


@job_handler(EMBED_REPORT, queue="gpu")
def embed_report_job(job: Job, progress: Progress) -> dict:
    report = Report.objects.filter(pk=job.params.get("report_id")).first()
    if report is None:
        raise JobFailed("The report no longer exists.")
    return embed_report(report)
