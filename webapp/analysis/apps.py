from django.apps import AppConfig


class AnalysisConfig(AppConfig):
    name = "webapp.analysis"
    label = "analysis"

    def ready(self) -> None:
        # Job handlers and the slide_stored receiver register on import.
        from webapp.jobs.views import register_retry_fragment
        from webapp.slides.overlays import register_overlay

        from . import pipeline, training  # noqa: F401
        from .overlays import attention_for_slide
        from .views import slide_retry_fragment

        register_overlay("attention", attention_for_slide)
        register_retry_fragment(pipeline.ANALYZE, slide_retry_fragment)
