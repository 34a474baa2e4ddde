"""Demo seeding for the analysis app: the offline demo bundle, active, and every demo slide queued.

`make run` calls `seed(context)` after the cases exist. The demo bundle is the v2 one shipped in
inference/demo_bundle_v2 (its name and version read from its bundle.json: `inference.demo.DEMO_NAME` /
`DEMO_VERSION`), copied on first start into MODEL_BUNDLE_DIR/demo-<version> by
`inference.demo.ensure_demo_bundle` and reused afterwards; when the shipped bundle no longer matches the
built-in encoder, the message says how to rebuild it (hours) and the app starts without a demo model.
DEMO_BUNDLE_DIR (PATHALIGN_DEMO_BUNDLE) points at another directory; SKIP_DEMO_MODEL
(PATHALIGN_SKIP_DEMO_MODEL=1) skips the model entirely (the app then shows slides as "not analysed").
"""
from __future__ import annotations

from pathlib import Path

from django.conf import settings

from webapp.slides.models import Slide

from . import pipeline
from .models import ModelBundle, SlideEmbedding


def demo_version() -> str:
    # Imported here: PATHALIGN_SKIP_DEMO_MODEL=1 never reads the model library or the shipped bundle.
    from inference.demo import DEMO_VERSION  # the shipped demo bundle's (its bundle.json)

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
    from inference.demo import DemoBundleStale, ensure_demo_bundle, is_demo_bundle_name  # see demo_version

    explicit = bool(settings.DEMO_BUNDLE_DIR)  # a directory named explicitly is used as it is
    path = demo_bundle_dir()
    bundle = ModelBundle.objects.filter(path=str(path.resolve())).first()
    if bundle is None:
        if not explicit:
            context.log(f"Preparing the demo model bundle in {path} ...")
            try:
                ensure_demo_bundle(path, log=context.log)
            except DemoBundleStale as exc:
                context.log(f"No demo model this time. {exc}")
                return
        try:
            bundle = pipeline.register_bundle(path, user=context.users.get("labadmin"))
        except pipeline.BundleInvalid as exc:
            context.log(f"The demo bundle could not be registered: {exc}")
            return
        context.log(f"Registered model bundle {bundle}.")
    active = ModelBundle.objects.filter(is_active=True).first()
    # An older demo bundle (the v1 `pathalign-demo`, an earlier `pathalign-demo-v2`) gives way to this one; a
    # bundle a lab admin chose (any other name) stays active, and so does any active one when the demo
    # directory was named explicitly.
    if active is None or (active.pk != bundle.pk and not explicit and is_demo_bundle_name(active.name)):
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
