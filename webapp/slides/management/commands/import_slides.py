"""Import slides a scanner wrote: from the drop folder by name, or given files into a named case part."""
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from webapp.cases.models import Part
from webapp.slides import dropbox
from webapp.slides.ingest import SlideRejected, ingest_slide


class Command(BaseCommand):
    help = (
        "Without arguments: import every drop-folder file named like S26-00042_A_1_HE.svs. "
        "With paths and --case/--part: import those files (copied; the originals stay) into that part."
    )

    def add_arguments(self, parser):
        parser.add_argument("paths", nargs="*", type=Path)
        parser.add_argument("--case", help="Accession number, e.g. S26-00042")
        parser.add_argument("--part", help="Part label, e.g. A")
        parser.add_argument("--stain", default="H&E")
        parser.add_argument("--block", default="")

    def handle(self, *args, paths, case, part, stain, block, **options):
        if not paths:
            imported, failed = dropbox.import_matched()
            for slide in imported:
                self.stdout.write(f"imported {slide}")
            for name, reason in failed:
                self.stderr.write(f"refused {name}: {reason}")
            self.stdout.write(f"{len(imported)} imported, {len(failed)} refused")
            if failed:
                raise CommandError(f"{len(failed)} file(s) refused")
            return
        if not (case and part):
            raise CommandError("--case and --part are required when paths are given")
        try:
            target = Part.objects.get(case__accession_number=case, label=part)
        except Part.DoesNotExist:
            raise CommandError(f"no part {part} on case {case}") from None
        refused = 0
        for path in paths:
            try:
                slide = ingest_slide(path, part=target, original_filename=path.name, stain=stain,
                                     block_label=block, move=False)
                self.stdout.write(f"imported {slide} from {path}")
            except (SlideRejected, OSError) as exc:
                refused += 1
                self.stderr.write(f"refused {path}: {exc}")
        if refused:
            raise CommandError(f"{refused} file(s) refused")
