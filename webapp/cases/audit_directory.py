"""Cases as the audit pages see them (`webapp.audit.case_directory`), registered from CasesConfig.ready()."""
from __future__ import annotations

from collections.abc import Collection

from webapp.accounts.models import User

from . import access
from .models import Case


class CaseDirectoryForAudit:
    def accessions(self, case_ids: Collection[int]) -> dict[int, str]:
        ids = {case_id for case_id in case_ids if case_id}
        return dict(Case.objects.filter(pk__in=ids).values_list("pk", "accession_number")) if ids else {}

    def find(self, user: User, accession: str) -> int | None:
        return access.visible_cases(user).filter(accession_number=accession).values_list("pk", flat=True).first()

    def get(self, user: User, case_id: int) -> Case:
        return access.get_case_for_user(user, case_id)
