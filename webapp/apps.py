from django.apps import AppConfig


class ProjectConfig(AppConfig):
    """The project itself, above every app: commands that span them all (demo data, backup and restore)."""

    name = "webapp"
    label = "webapp"
