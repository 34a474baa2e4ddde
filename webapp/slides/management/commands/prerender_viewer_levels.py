"""Render the viewer's in-between Deep Zoom levels of stored slides (new slides get a background job)."""
from django.core.management.base import BaseCommand, CommandError

from webapp.jobs.runner import JobFailed
from webapp.slides.models import Slide
from webapp.slides.prerender import prerender_slide


class Command(BaseCommand):
    help = ("Render the Deep Zoom levels between each slide file's pyramid levels into its companion file "
            "(PATHALIGN_VIEWER_LEVELS), for slides stored before the background job existed. Idempotent.")

    def add_arguments(self, parser):
        parser.add_argument("slides", nargs="*", help="slide ids (default: every slide)")
        parser.add_argument("--force", action="store_true", help="render again even if a companion exists")

    def handle(self, *args, slides, force, **options):
        query = Slide.objects.filter(pk__in=slides) if slides else Slide.objects.all()
        failed = 0
        for slide in query.order_by("pk").iterator():
            try:
                result = prerender_slide(slide, force=force)
            except JobFailed as exc:
                failed += 1
                self.stderr.write(f"slide {slide.pk}: {exc}")
                continue
            self.stdout.write(f"slide {slide.pk}: {result['message']}")
        if failed:
            raise CommandError(f"{failed} slide(s) could not be rendered")
