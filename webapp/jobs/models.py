"""The job table and the workers' heartbeats: long work with a state, a progress figure and an error text.

The tables keep the names they had when jobs lived in the analysis app (`analysis_job`,
`analysis_workerheartbeat`): moving the models moved no data.
"""
from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import models
from django.utils import timezone


class JobState(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


ACTIVE_STATES = (JobState.QUEUED, JobState.RUNNING)


class Job(models.Model):
    """A unit of long work with a state, a progress figure (0..1) and an error text.

    `kind` names a handler registered with `webapp.jobs.runner.job_handler`; the Celery task only runs it.
    """

    kind = models.CharField(max_length=40)
    queue = models.CharField(max_length=20, default="default")
    state = models.CharField(max_length=10, choices=JobState.choices, default=JobState.QUEUED)
    progress = models.FloatField(default=0.0)
    message = models.CharField(max_length=200, blank=True, help_text="What the job is doing now.")
    error = models.TextField(blank=True)
    params = models.JSONField(default=dict, blank=True)
    result = models.JSONField(default=dict, blank=True)
    # What the job is about, so pages can show a case's or a slide's jobs (the rows are named by string:
    # the job table is on the ground floor and imports no app above it).
    slide = models.ForeignKey(
        "slides.Slide", null=True, blank=True, on_delete=models.CASCADE, related_name="jobs"
    )
    case = models.ForeignKey("cases.Case", null=True, blank=True, on_delete=models.CASCADE, related_name="jobs")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    attempts = models.PositiveSmallIntegerField(default=0)
    worker = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    # When the broker last accepted this job's message; null while the broker was unreachable.
    dispatched_at = models.DateTimeField(null=True, blank=True)
    # Higher first: a STAT case's jobs jump the queue (runner.run_job takes them before the job it was sent).
    priority = models.PositiveSmallIntegerField(default=0)
    # What happened to the job beyond its current message: requeues after a lost worker, retries after an
    # error ([{"at": iso time, "event": ..., "text": ...}]); the message line is overwritten, this is not.
    history = models.JSONField(default=list, blank=True)

    class Meta:
        db_table = "analysis_job"
        ordering = ["-created_at"]
        indexes = [
            # The sweeper and the dashboards look at unfinished jobs only.
            models.Index(
                fields=["state", "heartbeat_at"],
                name="job_active_idx",
                condition=models.Q(state__in=["queued", "running"]),
            ),
            models.Index(fields=["slide", "kind"], name="analysis_jo_slide_i_0f9cef_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} #{self.pk} ({self.state})"

    @property
    def is_active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def duration(self) -> timedelta | None:
        if not self.started_at:
            return None
        return (self.finished_at or timezone.now()) - self.started_at


class WorkerHeartbeat(models.Model):
    """Each Celery worker writes its row every few seconds; /healthz and the admin pages read them."""

    hostname = models.CharField(max_length=200, unique=True)
    queues = models.CharField(max_length=200, blank=True)
    pid = models.IntegerField(default=0)
    started_at = models.DateTimeField(default=timezone.now)
    last_seen = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "analysis_workerheartbeat"

    def __str__(self) -> str:
        return self.hostname
