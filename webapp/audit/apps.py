from django.apps import AppConfig


class AuditConfig(AppConfig):
    name = "webapp.audit"
    label = "audit"

    def ready(self) -> None:
        from . import signals  # noqa: F401 - logins, logouts, failed logins and lockouts go to the log
