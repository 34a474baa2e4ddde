from pathlib import Path

from django.apps import AppConfig
from django.conf import settings


class ProjectConfig(AppConfig):
    """The project itself, above every app: commands that span them all (demo data, backup and restore)."""

    name = "webapp"
    label = "webapp"

    def ready(self) -> None:
        # Every process starts Django (manage.py, gunicorn, the Celery worker, the tests): the folders the
        # app writes to exist from then on, on a fresh machine too. Importing the settings makes none.
        for directory in (settings.SLIDE_STORE_DIR, settings.SLIDE_DROP_DIR, settings.FILE_UPLOAD_TEMP_DIR,
                          settings.MODEL_BUNDLE_DIR):
            Path(directory).mkdir(parents=True, exist_ok=True)
        # The application role's grants after every migrate by the owner, and the role check (db_roles).
        from django.db.models.signals import post_migrate

        from webapp import db_roles

        post_migrate.connect(db_roles.grant_after_migrate, dispatch_uid="webapp.db_roles.grant")
