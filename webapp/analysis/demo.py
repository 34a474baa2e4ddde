"""Demo seeding for the analysis app: the offline demo bundle, active, and every demo slide queued.

`make run` calls `seed(context)` after the cases exist. The bundle is built on first start by
`inference.demo.ensure_demo_bundle` (synthetic corpus -> features -> training -> eval; minutes on a few
CPU cores, with progress printed) and reused afterwards. DEMO_BUNDLE_DIR (PATHALIGN_DEMO_BUNDLE) points at
another directory; SKIP_DEMO_MODEL (PATHALIGN_SKIP_DEMO_MODEL=1) skips the model entirely (the app then
shows slides as "not analysed").
"""
from __future__ import annotations

from pathlib import Path

from django.conf import settings

from webapp.slides.models import Slide

from . import pipeline
from .models import ModelBundle, SlideEmbedding


def demo_version() -> str:
    from inference.demo import DEMO_VERSION  # torch: loaded only when the demo is seeded

    return DEMO_VERSION


def demo_bundle_dir() -> Path:
    """DEMO_BUNDLE_DIR, or MODEL_BUNDLE_DIR/demo-<version>: a new demo version gets a new directory
    (and a new ModelBundle row), so an installation that ran an older demo keeps its embeddings coherent."""
    if settings.DEMO_BUNDLE_DIR:
        return Path(settings.DEMO_BUNDLE_DIR)
    return Path(settings.MODEL_BUNDLE_DIR) / f"demo-{demo_version()}"


def seed(context) -> None:
    if settings.SKIP_DEMO_MODEL:
        context.log("Demo model skipped (PATHALIGN_SKIP_DEMO_MODEL=1).")
        return
    explicit = bool(settings.DEMO_BUNDLE_DIR)  # a directory named explicitly is used as it is
    path = demo_bundle_dir()
    bundle = ModelBundle.objects.filter(path=str(path.resolve())).first()
    if bundle is None:
        if not explicit:
            from inference.demo import ensure_demo_bundle  # torch: see demo_version

            context.log(f"Preparing the demo model bundle in {path} (built once; minutes on first start) ...")
            ensure_demo_bundle(path, log=context.log)
        try:
            bundle = pipeline.register_bundle(path, user=context.users.get("labadmin"))
        except pipeline.BundleInvalid as exc:
            context.log(f"The demo bundle could not be registered: {exc}")
            return
        context.log(f"Registered model bundle {bundle}.")
    active = ModelBundle.objects.filter(is_active=True).first()
    # An older demo bundle gives way to this one; a bundle a lab admin chose stays active.
    if active is None or (active.pk != bundle.pk and active.name == bundle.name and not explicit):
        pipeline.activate_bundle(bundle)
        context.log(f"{bundle} is the active model.")
    embedded = set(SlideEmbedding.objects.filter(bundle=bundle).values_list("slide_id", flat=True))
    queued = 0
    for slide in Slide.objects.select_related("part__case"):
        job = pipeline.latest_job(slide)
        if slide.pk in embedded or (job is not None and job.params.get("bundle") == bundle.pk):
            continue  # done, or on its way, with this bundle (a job of an older demo bundle does not count)
        if pipeline.queue_slide_analysis(slide, bundle=bundle) is not None:
            queued += 1
    if queued:
        context.log(f"Queued {queued} demo slide(s) for analysis on the gpu queue.")
