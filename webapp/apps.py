import contextlib
import os
from pathlib import Path

from django.apps import AppConfig
from django.conf import settings


class ProjectConfig(AppConfig):
    """The project itself, above every app: commands that span them all (demo data, backup and restore)."""

    name = "webapp"
    label = "webapp"

    def ready(self) -> None:
        # Everything the service writes is case material or derived from it (slides, thumbnails, uploads,
        # backups, feature caches, the demo credentials): owner-only from its creation, whatever the shell's
        # umask (finding, issue 16: 0644 files in 0755 folders). Every process starts Django (manage.py,
        # gunicorn, the Celery worker, the tests), so this holds in each.
        os.umask(0o077)
        # The folders the app writes to exist from then on, on a fresh machine too, owner-only (older ones
        # are tightened). Importing the settings makes none.
        for directory in (settings.SLIDE_STORE_DIR, Path(settings.SLIDE_STORE_DIR) / "thumbnails",
                          settings.SLIDE_DROP_DIR, settings.FILE_UPLOAD_TEMP_DIR, settings.MODEL_BUNDLE_DIR):
            Path(directory).mkdir(mode=0o700, parents=True, exist_ok=True)
            with contextlib.suppress(OSError):  # a shared mount the service does not own stays as it is
                Path(directory).chmod(0o700)
        # The application role's grants after every migrate by the owner, and the role check (db_roles).
        from django.db.models.signals import post_migrate

        from webapp import db_roles

        post_migrate.connect(db_roles.grant_after_migrate, dispatch_uid="webapp.db_roles.grant")
