"""Users and their roles. One role per user; superusers additionally reach the Django admin."""
from django.contrib.auth.models import AbstractUser
from django.db import models


class Role(models.TextChoices):
    LAB_ADMIN = "lab_admin", "Lab admin"
    PATHOLOGIST = "pathologist", "Pathologist"
    EVALUATOR = "evaluator", "Evaluator"


class User(AbstractUser):
    role = models.CharField(max_length=20, choices=Role.choices, default=Role.PATHOLOGIST)
    # Printed after the name in an electronic signature (frozen into the signed record at sign-out).
    credentials = models.CharField(max_length=80, blank=True, help_text="e.g. 'MD, FRCPath'")

    @property
    def is_lab_admin(self) -> bool:
        return self.is_active and (self.role == Role.LAB_ADMIN or self.is_superuser)

    @property
    def is_pathologist(self) -> bool:
        return self.is_active and self.role == Role.PATHOLOGIST

    @property
    def is_evaluator(self) -> bool:
        return self.is_active and self.role == Role.EVALUATOR

    def __str__(self) -> str:
        return self.get_full_name() or self.username
