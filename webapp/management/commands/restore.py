"""manage.py restore DIR: load a backup into the (new, empty) database and slide store the settings name."""
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from webapp.backup import BackupError, restore


class Command(BaseCommand):
    help = "Restore a backup made by `manage.py backup` into an empty database and slide store."

    def add_arguments(self, parser) -> None:
        parser.add_argument("source", type=Path)
        parser.add_argument("--force", action="store_true", help="replace existing tables and files")

    def handle(self, *args, source: Path, force: bool, **options) -> None:
        try:
            manifest = restore(source, force=force)
        except (BackupError, FileNotFoundError) as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"Restored {manifest['counts']} from {source} (made {manifest['created']}).")
