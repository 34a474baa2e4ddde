from django.core.management.base import BaseCommand

from webapp.demo import seed_all


class Command(BaseCommand):
    help = "Create the demo accounts, cases, slides and everything else the demo shows (idempotent)."

    def handle(self, *args, **options):
        seed_all(log=lambda message: self.stdout.write(message))
