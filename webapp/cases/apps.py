from django.apps import AppConfig

from webapp.audit.case_directory import register_case_directory


class CasesConfig(AppConfig):
    name = "webapp.cases"
    label = "cases"

    def ready(self) -> None:
        # Imported here: it imports models, which can be defined only once the app registry is ready.
        from .audit_directory import CaseDirectoryForAudit

        register_case_directory(CaseDirectoryForAudit())
