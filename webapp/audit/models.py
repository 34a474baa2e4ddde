"""The append-only audit log: who did what to which case's data, when and from where."""
from django.conf import settings
from django.db import models


class AuditEvent(models.Model):
    at = models.DateTimeField(auto_now_add=True, db_index=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.DO_NOTHING,
                             related_name="+", db_constraint=False)  # never updated: append-only
    username = models.CharField(max_length=150, blank=True, help_text="Kept even if the user is renamed.")
    ip_address = models.GenericIPAddressField(null=True, blank=True)
    session = models.CharField(max_length=64, blank=True, help_text="A hash of the session, not its key.")
    action = models.CharField(max_length=40, db_index=True)
    # Plain ids rather than foreign keys: the log outlives what it describes and never cascades.
    case_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    object_type = models.CharField(max_length=40, blank=True)
    object_id = models.CharField(max_length=64, blank=True)
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    details = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-at", "-id"]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M} {self.username} {self.action}"
