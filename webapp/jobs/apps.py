from django.apps import AppConfig


class JobsConfig(AppConfig):
    name = "webapp.jobs"
    label = "jobs"

    def ready(self) -> None:
        # The Celery task, the selftest handler and the worker-signal receivers register on import.
        from . import heartbeat, runner  # noqa: F401
