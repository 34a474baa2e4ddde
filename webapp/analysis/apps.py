import logging

from django.apps import AppConfig

log = logging.getLogger(__name__)


class AnalysisConfig(AppConfig):
    name = "webapp.analysis"
    label = "analysis"

    def ready(self) -> None:
        # Job handlers and the slide_stored receiver register on import.
        from . import pipeline, training  # noqa: F401

        try:
            from webapp.slides.overlays import register_overlay
        except ImportError:  # the viewer's overlay registry is not there: the heatmap JSON view still works
            log.info("webapp.slides.overlays not available; the attention overlay is not registered")
        else:
            from .overlays import attention_for_slide

            register_overlay("attention", attention_for_slide)
