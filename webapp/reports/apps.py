from django.apps import AppConfig


class ReportsConfig(AppConfig):
    name = "webapp.reports"
    label = "reports"

    def ready(self) -> None:
        from . import drafting  # noqa: F401 - registers the draft_report and embed_report job handlers
