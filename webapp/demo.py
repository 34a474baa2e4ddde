"""Demo data for `make run`: accounts (one per role), cases with synthetic slides, and whatever each app
adds in its own `demo.py` (a `seed(context)` function), run in INSTALLED_APPS order.

Idempotent: a second run finds the data and changes nothing. Passwords are printed once, on first run,
and kept in var/demo-credentials.txt (readable by the owner only) so they can be looked up again.
"""
from __future__ import annotations

import importlib
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from django.apps import apps
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.module_loading import module_has_submodule

from inference.synthetic.corpus import generate_corpus, load_manifest
from webapp.accounts.models import User
from webapp.cases.models import Case, CaseStatus, Part, Priority
from webapp.slides.ingest import ingest_slide

DEMO_USERS = [
    # username, role, first, last, superuser
    ("labadmin", "lab_admin", "Lara", "Admin", True),
    ("dr_lee", "pathologist", "Grace", "Lee", False),
    ("dr_patel", "pathologist", "Ravi", "Patel", False),
    ("eval_kim", "evaluator", "Min", "Kim", False),
]
DEMO_CASES = 12  # open cases on the worklists
ARCHIVE_CASES = 12  # already signed out: the retrieval draft and "similar signed-out cases" draw on them


@dataclass
class DemoContext:
    users: dict = field(default_factory=dict)
    cases: list = field(default_factory=list)
    archive: list = field(default_factory=list)  # (case, manifest record) pairs to be signed out
    manifest: list = field(default_factory=list)
    log: Callable[[str], None] = print


def credentials_file() -> Path:
    return Path(settings.VAR_DIR) / "demo-credentials.txt"


def seed_users(context: DemoContext) -> None:
    created = []
    for username, role, first, last, superuser in DEMO_USERS:
        user = User.objects.filter(username=username).first()
        if user is None:
            password = secrets.token_urlsafe(12)
            user = User.objects.create_user(username=username, password=password, role=role, first_name=first,
                                            last_name=last, is_superuser=superuser, is_staff=superuser)
            created.append((username, role, password))
        context.users[username] = user
    if created:
        lines = [f"{username:10} {role:12} {password}" for username, role, password in created]
        path = credentials_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        # 0600 from its creation (not chmodded afterwards: the passwords must never be readable by others)
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "a") as handle:
            handle.write("\n".join(lines) + "\n")
        path.chmod(0o600)  # a file an older version made under the umask
        context.log(f"Demo accounts (shown once; also in {path}):\n  " + "\n  ".join(lines))


def demo_corpus_dir() -> Path:
    return Path(settings.VAR_DIR) / "demo-corpus"


def seed_cases(context: DemoContext) -> None:
    """Accession demo cases with synthetic slides: open ones for both pathologists (one unassigned) and an
    archive of older cases that the reports app signs out with the synthetic report text."""
    corpus = demo_corpus_dir()
    if not (corpus / "manifest.jsonl").exists():
        context.log(f"Generating {DEMO_CASES + ARCHIVE_CASES} synthetic demo slides ...")
        generate_corpus(corpus, DEMO_CASES + ARCHIVE_CASES, seed=2026, size=(3072, 2304))
    context.manifest = load_manifest(corpus)
    pathologists = [context.users["dr_lee"], context.users["dr_patel"]]
    priorities = [Priority.ROUTINE, Priority.URGENT, Priority.ROUTINE, Priority.STAT]
    open_records = context.manifest[:DEMO_CASES]
    for index, record in enumerate(open_records):
        assignee = None if index == len(open_records) - 1 else pathologists[index % 2]
        case = _demo_case(context, f"S26-{index + 1:05d}", record, f"DEMO-{index + 1:04d}", assignee,
                          priorities[index % len(priorities)], days_ago=index % 5)
        context.cases.append(case)
    for index, record in enumerate(context.manifest[DEMO_CASES:]):
        case = _demo_case(context, f"S26-{index + 101:05d}", record, f"DEMO-{index + 101:04d}",
                          pathologists[index % 2], Priority.ROUTINE, days_ago=20 + index)
        context.archive.append((case, record))
    context.log(f"{len(context.cases)} open and {len(context.archive)} archived demo cases ready.")


def _demo_case(context: DemoContext, accession: str, record: dict, pseudonym: str, assignee, priority,
               days_ago: int) -> Case:
    case = Case.objects.filter(accession_number=accession).first()
    if case is not None:
        return case
    with transaction.atomic():
        case = Case.objects.create(
            accession_number=accession,
            patient_pseudonym=pseudonym,
            clinical_history=record.get("clinical_history", ""),
            priority=priority,
            received_date=timezone.localdate() - timedelta(days=days_ago),
            assigned_to=assignee,
            status=CaseStatus.ASSIGNED if assignee else CaseStatus.ACCESSIONED,
            created_by=context.users["labadmin"],
        )
        labels = record["labels"]
        part = Part.objects.create(case=case, label=record.get("part", "A") or "A",
                                   site=_site_line(labels), procedure=labels.get("procedure", ""))
        ingest_slide(Path(record["slide_path"]), part=part, original_filename=Path(record["slide"]).name,
                     stain="H&E", block_label="1", user=context.users["labadmin"], move=False)
    return case


def _site_line(labels: dict) -> str:
    """'Colon, sigmoid': organ and site as a requisition names them (the corpus keeps them apart)."""
    from inference.synthetic.catalog import ORGANS

    organ = ORGANS.get(labels.get("organ", ""))
    site = labels.get("site", "")
    return f"{organ.display}, {site}" if organ and site else (organ.display if organ else site)


def seed_all(log: Callable[[str], None] = print) -> DemoContext:
    context = DemoContext(log=log)
    seed_users(context)
    seed_cases(context)
    for config in apps.get_app_configs():
        if config.name.startswith("webapp.") and module_has_submodule(config.module, "demo"):
            importlib.import_module(f"{config.name}.demo").seed(context)
    return context
