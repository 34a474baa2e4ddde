"""Demo data for `make run`: accounts (one per role), cases with synthetic slides, and whatever each app
adds in its own `demo.py` (a `seed(context)` function), run in INSTALLED_APPS order.

The slides are corpus v2's (inference/synthetic/corpus_v2.py): 10 x 5 mm of tissue field each at 1 um/px
(about 600 tissue patches at the bundle's tiling, as a small biopsy gives), parts of one to five slides whose
finding may be on one slide only, focal lesions of under 1 % and 1-5 % of the tissue as well as diffuse
disease and normal tissue, each slide with its lesion mask beside it (var/demo-corpus-v2/slides/).

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

from inference.synthetic.corpus_v2 import generate_corpus_v2, load_manifest
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
DEMO_CASES = 10  # open cases (parts) on the worklists
ARCHIVE_CASES = 10  # already signed out: the retrieval draft and "similar signed-out cases" draw on them
# 10 mm of field a slide (the minimum) by 5 mm, at the demo bundle's 1 um/px; ~4 s a slide to render.
# The organs are those the v2 demo bundle (inference/demo_bundle_v2) was trained on; the v1 bundle knows them too.
DEMO_CORPUS = {"seed": 2026, "size": (10_000, 5_000), "mpp": 1.0, "multi_share": 0.3,
               "organs": ("colon", "prostate", "lung")}
FOCAL = ("<1%", "1-5%")
OPEN_FOCAL_CASES = 4  # focal-lesion parts put first on the worklists: the heatmap should find the focus


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
    return Path(settings.VAR_DIR) / "demo-corpus-v2"


def demo_parts() -> list[list[dict]]:
    """The demo corpus's parts (each the manifest records of its slides, in slide order), rendered once."""
    corpus = demo_corpus_dir()
    if not (corpus / "manifest.jsonl").exists():
        generate_corpus_v2(corpus, DEMO_CASES + ARCHIVE_CASES, seed=DEMO_CORPUS["seed"], size=DEMO_CORPUS["size"],
                           mpp=DEMO_CORPUS["mpp"], multi_share=DEMO_CORPUS["multi_share"],
                           organs=DEMO_CORPUS["organs"])
    parts: dict[str, list[dict]] = {}
    for record in load_manifest(corpus):
        parts.setdefault(record["part_id"], []).append(record)
    return [sorted(records, key=lambda r: r["slide_index"]) for records in parts.values()]


def open_and_archive(parts: list[list[dict]]) -> tuple[list[list[dict]], list[list[dict]]]:
    """Open cases: up to OPEN_FOCAL_CASES parts with a focal lesion first, then the others in corpus order;
    the rest is the archive."""
    focal = [p for p in parts if any(r["stratum"] in FOCAL for r in p)][:OPEN_FOCAL_CASES]
    rest = [p for p in parts if p not in focal]
    chosen = (focal + rest)[:DEMO_CASES]
    return chosen, [p for p in parts if p not in chosen]


def seed_cases(context: DemoContext) -> None:
    """Accession demo cases with synthetic slides: open ones for both pathologists (one unassigned) and an
    archive of older cases that the reports app signs out with the synthetic report text."""
    if not (demo_corpus_dir() / "manifest.jsonl").exists():
        context.log(f"Generating {DEMO_CASES + ARCHIVE_CASES} synthetic demo parts (10 x 5 mm slides, about a "
                    "minute) ...")
    open_parts, archive_parts = open_and_archive(demo_parts())
    # One record per case (its first slide's: the part-level report, labels and site are the part's).
    context.manifest = [p[0] for p in open_parts + archive_parts]
    pathologists = [context.users["dr_lee"], context.users["dr_patel"]]
    priorities = [Priority.ROUTINE, Priority.URGENT, Priority.ROUTINE, Priority.STAT]
    for index, records in enumerate(open_parts):
        assignee = None if index == len(open_parts) - 1 else pathologists[index % 2]
        case = _demo_case(context, f"S26-{index + 1:05d}", records, f"DEMO-{index + 1:04d}", assignee,
                          priorities[(index // 2) % len(priorities)], days_ago=index % 5)
        context.cases.append(case)
    for index, records in enumerate(archive_parts):
        case = _demo_case(context, f"S26-{index + 101:05d}", records, f"DEMO-{index + 101:04d}",
                          pathologists[index % 2], Priority.ROUTINE, days_ago=20 + index)
        context.archive.append((case, records[0]))
    slides = sum(len(p) for p in open_parts + archive_parts)
    focal = sum(1 for p in open_parts if any(r["stratum"] in FOCAL for r in p))
    context.log(f"{len(context.cases)} open ({focal} with a focal lesion) and {len(context.archive)} archived demo "
                f"cases ready, {slides} slides of {DEMO_CORPUS['size'][0] * DEMO_CORPUS['mpp'] / 1000:g} x "
                f"{DEMO_CORPUS['size'][1] * DEMO_CORPUS['mpp'] / 1000:g} mm.")


def _demo_case(context: DemoContext, accession: str, records: list[dict], pseudonym: str, assignee, priority,
               days_ago: int) -> Case:
    case = Case.objects.filter(accession_number=accession).first()
    if case is not None:
        return case
    first = records[0]
    with transaction.atomic():
        case = Case.objects.create(
            accession_number=accession,
            patient_pseudonym=pseudonym,
            clinical_history=first.get("clinical_history", ""),
            priority=priority,
            received_date=timezone.localdate() - timedelta(days=days_ago),
            assigned_to=assignee,
            status=CaseStatus.ASSIGNED if assignee else CaseStatus.ACCESSIONED,
            created_by=context.users["labadmin"],
        )
        labels = first["labels"]
        part = Part.objects.create(case=case, label=first.get("part", "A") or "A",
                                   site=_site_line(labels), procedure=labels.get("procedure", ""))
        for block, record in enumerate(records, start=1):
            ingest_slide(Path(record["slide_path"]), part=part, original_filename=Path(record["slide"]).name,
                         stain="H&E", block_label=str(block), user=context.users["labadmin"], move=False)
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
