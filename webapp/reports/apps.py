from django.apps import AppConfig


class ReportsConfig(AppConfig):
    name = "webapp.reports"
    label = "reports"

    def ready(self) -> None:
        from webapp.analysis.search import register_signed_report_lookup
        from webapp.analysis.training import register_pair_source

        from . import drafting  # noqa: F401 - registers the draft and embed jobs and the report_signed receiver
        from .archive import signed_reports_by_case, training_pairs

        register_signed_report_lookup(signed_reports_by_case)
        register_pair_source(training_pairs)
