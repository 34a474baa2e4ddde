from django.apps import AppConfig


class SlidesConfig(AppConfig):
    name = "webapp.slides"
    label = "slides"

    def ready(self) -> None:
        # Every worker sweeps the store for files an interrupted upload left without a row (uploads.py).
        from django.conf import settings

        from webapp.jobs.heartbeat import register_periodic

        from . import prerender  # noqa: F401 - registers its job handler and slide_stored receiver
        from .uploads import sweep_orphans

        register_periodic("slides.sweep_orphans", sweep_orphans, settings.ORPHAN_SWEEP_SECONDS)
