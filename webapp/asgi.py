import os

from django.core.asgi import get_asgi_application

from webapp.celery import SETTINGS_FROM_ENVIRONMENT

# Production settings unless the environment names others: a server that imports this is a deployment.
if not SETTINGS_FROM_ENVIRONMENT:
    os.environ["DJANGO_SETTINGS_MODULE"] = "webapp.settings_production"
application = get_asgi_application()
