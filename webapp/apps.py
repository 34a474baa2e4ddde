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
