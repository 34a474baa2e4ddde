import os

from django.core.wsgi import get_wsgi_application

from webapp.celery import SETTINGS_FROM_ENVIRONMENT

# Production settings unless the environment names others: a server that imports this is a deployment.
if not SETTINGS_FROM_ENVIRONMENT:
    os.environ["DJANGO_SETTINGS_MODULE"] = "webapp.settings_production"
# Django's full request cycle for every request (bench/load.py serves it to measure what the fast path saves).
django_application = get_wsgi_application()

from webapp.slides.fast_tiles import TileFastPath  # noqa: E402 - needs the app registry set up above

# Deep Zoom tiles of a session with a valid grant skip the request cycle (webapp/slides/fast_tiles.py).
application = TileFastPath(django_application)
