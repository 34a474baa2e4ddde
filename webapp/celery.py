"""The Celery application. Queues: "default" for light work, "gpu" for model inference (one worker per GPU)."""
import os

from celery import Celery
from celery.signals import worker_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")

app = Celery("pathalign")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_init.connect
def _make_data_directories(**_) -> None:
    from django.conf import settings

    from webapp.settings import make_data_directories

    make_data_directories(settings)  # a worker starting on a fresh machine writes models and slides there
