"""The audit pages' window onto cases: a registry that the cases app fills from its AppConfig.ready().

The audit log sits on the ground floor and stores plain case ids; the pages over it show accession numbers,
turn a typed accession number into a case id and open a case's access report. Cases live a floor above, so
they offer that here instead of audit importing them:

    from webapp.audit.case_directory import register_case_directory
    register_case_directory(CaseDirectoryForAudit())

Both lookups that take a user answer only with cases that user may see.
"""
from __future__ import annotations

import threading
from collections.abc import Collection
from typing import TYPE_CHECKING, Protocol

from django.core.exceptions import ImproperlyConfigured

if TYPE_CHECKING:  # annotations only: this module must import before the models are ready (AppConfig.ready)
    from webapp.accounts.models import User


class AuditedCase(Protocol):
    """What an access report shows of its case. It is also the report's logged object (type name, pk)."""

    pk: int
    accession_number: str


class CaseDirectory(Protocol):
    def accessions(self, case_ids: Collection[int]) -> dict[int, str]:
        """Case id -> accession number, for the ids that name a case (others are left out)."""

    def find(self, user: User, accession: str) -> int | None:
        """The id of the case with this (normalised) accession number that `user` may see, else None."""

    def get(self, user: User, case_id: int) -> AuditedCase:
        """The case `user` may see, or Http404 (an outsider learns nothing about its existence)."""


_directory: CaseDirectory | None = None
_lock = threading.Lock()


def register_case_directory(directory: CaseDirectory) -> None:
    """Register (or replace) the directory the audit pages use."""
    global _directory
    with _lock:
        _directory = directory


def case_directory() -> CaseDirectory:
    with _lock:
        directory = _directory
    if directory is None:
        raise ImproperlyConfigured("No case directory is registered for the audit pages: the cases app does "
                                   "that in CasesConfig.ready() (is webapp.cases in INSTALLED_APPS?).")
    return directory
