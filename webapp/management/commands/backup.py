"""manage.py backup DIR: the database (pg_dump) and the slide store (tar), with a manifest of checksums."""
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from webapp.backup import BackupError, backup


class Command(BaseCommand):
    help = "Back up the database and the slide store into a new directory (see docs/operations.md)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("destination", type=Path)
        parser.add_argument("--no-slides", action="store_true",
                            help="database only (when the store is copied separately, e.g. with rsync)")

    def handle(self, *args, destination: Path, no_slides: bool, **options) -> None:
        try:
            manifest = backup(destination, slides=not no_slides)
        except BackupError as exc:
            raise CommandError(str(exc)) from None
        sizes = ", ".join(f"{name} {info['bytes'] / 1024**2:.1f} MiB" for name, info in manifest["files"].items())
        self.stdout.write(f"Backed up {manifest['counts']} to {destination} ({sizes}).")
