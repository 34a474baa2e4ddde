from django.apps import AppConfig


class ReportsConfig(AppConfig):
    name = "webapp.reports"
    label = "reports"

    def ready(self) -> None:
        from webapp.analysis.search import register_signed_report_lookup
        from webapp.analysis.training import register_pair_source
        from webapp.cases.models import register_correction_window

        from . import (
            checks,  # noqa: F401 - the deploy check on PATHALIGN_PUBLIC_BASE_URL
            drafting,  # noqa: F401 - registers the draft and embed jobs and the report_signed receiver
            triage,  # noqa: F401 - the slide_analysed receiver (triage before the case is opened)
        )
        from .archive import signed_reports_by_case, training_pairs
        from .services import correction_open

        register_signed_report_lookup(signed_reports_by_case)
        register_pair_source(training_pairs)
        register_correction_window(correction_open)
