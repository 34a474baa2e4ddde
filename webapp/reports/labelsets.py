"""Default label sets built from the synthetic corpus's catalog (organ, diagnosis category, triage).

Each label gets a few prompts, and the app scores a label by its best-matching prompt
(`PathAlign.classify(..., pooling="max")`): most labels here are unions of different diagnoses ("Likely
malignant" = every malignant one), whose averaged embedding (a CLIP-style ensemble, `pooling="mean"`)
matches none of them well.
"""
from __future__ import annotations

from django.db import transaction

from inference.synthetic.catalog import CATEGORIES, DIAGNOSES, ORGANS

from .models import Label, LabelSet

SNOMED = "http://snomed.info/sct"
# SNOMED CT body-structure concepts for the organ labels, and the one diagnosis category whose concept maps
# one to one ("Malignant neoplastic disease"); the other categories stay local codes (a lab can add them).
ORGAN_CODES = {"Colon": "71854001", "Stomach": "69695003", "Prostate": "41216001", "Breast": "76752008",
               "Lung": "39607008", "Skin": "39937001"}
CATEGORY_CODES = {"Malignant": "363346000"}


def default_label_sets() -> list[dict]:
    organ = {
        "name": "Organ", "description": "Which organ the tissue comes from.", "order": 0,
        "labels": [{"name": o.display, "prompts": [f"{o.display.lower()} tissue", f"{o.display.lower()} biopsy",
                                                   f"histology of the {o.display.lower()}"],
                    "code": ORGAN_CODES.get(o.display, "")}
                   for o in ORGANS.values()],
    }
    category = {
        "name": "Diagnosis category", "description": "The kind of diagnosis.", "order": 1,
        "labels": [{"name": c.capitalize(),
                    "prompts": [d.display for d in DIAGNOSES if d.category == c][:8] or [c],
                    "code": CATEGORY_CODES.get(c.capitalize(), "")}
                   for c in CATEGORIES],
    }
    malignant = [d.display for d in DIAGNOSES if d.category == "malignant"]
    benign = [d.display for d in DIAGNOSES if d.category != "malignant"]
    triage = {
        "name": "Triage", "description": "Raises likely malignant cases in the worklist.", "order": 2,
        "is_triage": True,
        "labels": [
            {"name": "Likely malignant", "alert": True, "prompts": ["invasive carcinoma", *malignant]},
            {"name": "Likely benign", "prompts": ["benign tissue, negative for malignancy", *benign]},
        ],
    }
    return [organ, category, triage]


def ensure_default_label_sets() -> int:
    """Create the default label sets that do not exist yet (by name); returns how many were created."""
    created = 0
    with transaction.atomic():
        for spec in default_label_sets():
            if LabelSet.objects.filter(name=spec["name"]).exists():
                continue
            label_set = LabelSet.objects.create(
                name=spec["name"], description=spec["description"], order=spec["order"],
                is_triage=spec.get("is_triage", False),
            )
            for order, label in enumerate(spec["labels"]):
                code = label.get("code", "")
                Label.objects.create(label_set=label_set, name=label["name"], prompts=label["prompts"],
                                     alert=label.get("alert", False), order=order,
                                     code_system=SNOMED if code else "", code=code)
            created += 1
    return created
