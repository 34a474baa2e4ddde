"""The Celery application. Queues: "default" for light work, "gpu" for model inference (one worker per GPU)."""
import os

from celery import Celery

# Whether the environment chose the settings (webapp.wsgi/asgi default to production when it did not: this
# module runs first, as the package's import, and its default is the development settings).
SETTINGS_FROM_ENVIRONMENT = bool(os.environ.get("DJANGO_SETTINGS_MODULE"))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")

app = Celery("pathalign")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
