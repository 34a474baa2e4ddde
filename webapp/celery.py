"""The Celery application. Queues: "default" for light work, "gpu" for model inference (one worker per GPU)."""
import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")

app = Celery("pathalign")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
