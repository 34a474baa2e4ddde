"""Part-level report wording for the synthetic WSI corpus v2, and zero-shot prompts worded apart from it.

A part (one specimen, 1-5 slides) gets one report: header (part letter, organ, site with laterality,
procedure, number of slides), final diagnosis (the worst finding of its slides, with its grade), which
slides carry it, the extent, the margin where the procedure has one, and a microscopic line that names
the architecture and nuclear atypia of the grade. Six house styles (`TEMPLATES`); styles in
`HELD_OUT_TEMPLATES` are used only for the test and new-site splits, so a model cannot score by having
memorised the test wording.

`ZERO_SHOT_PROMPTS`: class descriptions for zero-shot classification, written in words no report
template uses (`prompt_overlaps_reports` checks that no prompt occurs inside any rendered report).
"""
from __future__ import annotations

import re

import numpy as np

from .catalog import DIAGNOSIS_BY_KEY, ORGANS

TEMPLATES: tuple[str, ...] = ("classic", "bulleted", "one-line", "synoptic", "narrative", "terse")
HELD_OUT_TEMPLATES: tuple[str, ...] = ("narrative", "terse")
TRAIN_TEMPLATES: tuple[str, ...] = tuple(t for t in TEMPLATES if t not in HELD_OUT_TEMPLATES)

# Architecture and nuclear atypia by grade index (0 = lowest), as the renderer draws them.
GRADE_MORPHOLOGY: dict[str, tuple[str, ...]] = {
    "colon_adenocarcinoma": ("well-formed glands (>95% gland formation), mild nuclear atypia",
                             "gland formation in 50-95% of the tumour, moderate nuclear atypia",
                             "mostly solid growth with <50% gland formation, marked nuclear atypia"),
    "colon_tubular_adenoma": ("crowded tubules with low-grade nuclear stratification",
                              "complex crowded tubules with loss of polarity and high-grade atypia"),
    "prostate_adenocarcinoma": ("discrete small acini", "small acini with some fused and cribriform glands",
                                "predominantly fused and cribriform glands", "fused and cribriform glands only",
                                "cribriform glands and solid sheets without lumens"),
    "breast_invasive_ductal_carcinoma": ("abundant tubule formation, mild nuclear pleomorphism",
                                         "moderate tubule formation, moderate nuclear pleomorphism",
                                         "little or no tubule formation, marked nuclear pleomorphism"),
    "lung_adenocarcinoma": ("lepidic growth along alveolar walls with mild atypia",
                            "acinar glands with moderate atypia", "solid sheets with marked atypia"),
    "lung_squamous_cell_carcinoma": ("nests with abundant keratin pearls, mild atypia",
                                     "nests with occasional keratinisation, moderate atypia",
                                     "nests with little keratinisation, marked atypia"),
    "stomach_signet_ring_carcinoma": ("discohesive signet ring cells, marked atypia",),
}

EXTRA_SYNONYMS: dict[str, tuple[str, ...]] = {
    "colon_adenocarcinoma": ("Adenocarcinoma, colorectal",),
    "prostate_adenocarcinoma": ("Prostatic adenocarcinoma, acinar",),
    "breast_invasive_ductal_carcinoma": ("Invasive breast carcinoma, NST",),
    "lung_adenocarcinoma": ("Adenocarcinoma of lung",),
    "lung_squamous_cell_carcinoma": ("Squamous carcinoma of lung",),
    "stomach_signet_ring_carcinoma": ("Signet-ring cell adenocarcinoma of stomach",),
    "colon_normal": ("Colonic mucosa, benign",),
    "stomach_normal": ("Benign stomach mucosa",),
    "prostate_benign": ("Benign prostate tissue",),
    "breast_fibroadenoma": ("Fibroadenoma",),
    "lung_normal": ("Benign lung tissue",),
    "colon_tubular_adenoma": ("Tubular adenoma of colon",),
}

# Zero-shot class descriptions: morphology in words, never a report's diagnosis phrase.
ZERO_SHOT_PROMPTS: dict[str, tuple[str, ...]] = {
    "colon_normal": ("H&E section of large-bowel lining with orderly test-tube crypts full of goblet cells",
                     "non-neoplastic large intestinal mucosa"),
    "colon_tubular_adenoma": ("large-bowel polyp made of crowded tubules with pencil-shaped stratified nuclei",
                              "dysplastic tubular glands of the large intestine, not invasive"),
    "colon_adenocarcinoma": ("cancer of the large bowel: angulated malignant glands invading desmoplastic stroma",
                             "invasive gland-forming malignancy of the large intestine"),
    "stomach_normal": ("non-neoplastic gastric lining with packed oxyntic glands",
                       "healthy stomach glands without inflammation"),
    "stomach_signet_ring_carcinoma": ("stomach cancer of single discohesive cells with mucin vacuoles pushing "
                                      "the nucleus aside", "diffuse-type gastric malignancy, poorly cohesive cells"),
    "prostate_benign": ("non-neoplastic prostate glands with two cell layers and papillary infoldings",
                        "benign-appearing prostatic acini in fibromuscular stroma"),
    "prostate_adenocarcinoma": ("prostate cancer: small crowded acini lacking basal cells, large nucleoli",
                                "malignant prostatic glands infiltrating stroma"),
    "breast_fibroadenoma": ("circumscribed benign breast lesion of loose stroma and slit-like ducts",
                            "non-malignant fibroepithelial breast tissue"),
    "breast_invasive_ductal_carcinoma": ("breast cancer: nests and cords of atypical cells infiltrating fat",
                                         "invasive malignant epithelium in breast stroma"),
    "lung_normal": ("non-neoplastic lung with thin alveolar septa",
                    "healthy alveolated pulmonary tissue"),
    "lung_adenocarcinoma": ("lung cancer forming glands or lining alveolar walls with atypical cells",
                            "gland-forming pulmonary malignancy"),
    "lung_squamous_cell_carcinoma": ("lung cancer of keratinising polygonal cells in nests with keratin whorls",
                                     "pulmonary malignancy with squamous differentiation"),
}


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(0, len(options)))]


def dx_name(rng: np.random.Generator, key: str) -> str:
    dx = DIAGNOSIS_BY_KEY[key]
    return _pick(rng, (*dx.names, *EXTRA_SYNONYMS.get(key, ())))


def _slide_list(part: str, idx: list[int]) -> str:
    names = [f"{part}{i + 1}" for i in idx]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def write_part_report(part: dict, template: str, rng: np.random.Generator) -> tuple[str, str]:
    """(report, final diagnosis line) for a part dict (see corpus_v2.plan_parts)."""
    organ = ORGANS[part["organ"]]
    letter, n = part["part"], len(part["slides"])
    key = part["diagnosis"]
    dx = DIAGNOSIS_BY_KEY[key]
    name = dx_name(rng, key)
    grade = dx.grade_phrases[part["grade_index"]] if dx.grades and part["grade_index"] >= 0 else ""
    morph = GRADE_MORPHOLOGY.get(key, ())
    morph_text = morph[min(part["grade_index"], len(morph) - 1)] if morph and part["grade_index"] >= 0 else ""
    involved = [i for i, s in enumerate(part["slides"]) if s["diagnosis"] == key and s["lesion_share"] > 0]
    lesion = dx.category not in ("normal", "benign") or part["has_lesion"]
    where = _slide_list(letter, involved) if involved and lesion else ""
    extent = part.get("extent", "")
    margin = part.get("margin")  # None, or {"involved": bool, "distance_mm": float}
    header = f"{letter}. {organ.display}, {part['site']}, {part['procedure']}"
    final = name + (f", {grade}" if grade else "")
    bits: list[str] = []
    if where and n > 1:
        bits.append(f"present in slide{'s' if len(involved) > 1 else ''} {where} of {n}")
    if extent:
        bits.append(extent)
    if margin is not None:
        bits.append("carcinoma extends to the inked margin" if margin["involved"]
                    else f"margins negative, closest {margin['distance_mm']:.1f} mm")
    if template == "classic":
        lines = ["FINAL DIAGNOSIS:", f"{header}:", f"   {final}."] + [f"   {b[0].upper() + b[1:]}." for b in bits]
        if morph_text:
            lines += ["", "MICROSCOPIC DESCRIPTION:", f"The lesion shows {morph_text}."]
    elif template == "bulleted":
        lines = ["Diagnosis", f"{header} ({n} slide{'s' if n > 1 else ''}):", f"- {final}"] + [f"- {b}" for b in bits]
        if morph_text:
            lines.append(f"- Microscopy: {morph_text}")
    elif template == "one-line":
        lines = [f"{header.upper()}: {final}" + "".join(f"; {b}" for b in bits) + "."]
    elif template == "synoptic":
        lines = [f"SPECIMEN: {header}", f"DIAGNOSIS: {final}"]
        if grade:
            lines.append(f"GRADE: {grade}")
        if where:
            lines.append(f"SLIDES INVOLVED: {where} ({len(involved)}/{n})")
        if extent:
            lines.append(f"EXTENT: {extent}")
        if margin is not None:
            clear = f"clear, {margin['distance_mm']:.1f} mm"
            lines.append(f"MARGIN: {'involved' if margin['involved'] else clear}")
        if morph_text:
            lines.append(f"HISTOLOGY: {morph_text}")
    elif template == "narrative":
        s = f"Part {letter} is a {part['procedure']} of the {organ.display.lower()} ({part['site']}). "
        s += f"Sections ({n}) show {final[0].lower() + final[1:]}"
        s += (f", with {morph_text}" if morph_text else "") + ". "
        s += " ".join(b[0].upper() + b[1:] + "." for b in bits)
        lines = [s.strip()]
    else:  # terse
        lines = [f"{letter}) {organ.display} {part['site']} ({part['procedure']}): {final}"
                 + (f" [{', '.join(bits)}]" if bits else "")]
    text = "\n".join(lines)
    return text, final


def normalise(text: str) -> str:
    return " " + re.sub(r"[^a-z0-9]+", " ", text.lower()).strip() + " "


def prompt_overlaps_reports(reports: list[str]) -> list[str]:
    """The zero-shot prompts that occur (normalised) inside any of `reports`; [] is what we want."""
    bodies = [normalise(r) for r in reports]
    bad = []
    for prompts in ZERO_SHOT_PROMPTS.values():
        for p in prompts:
            if any(normalise(p) in b for b in bodies):
                bad.append(p)
    return bad


_INVOLVED_BIT = re.compile(r"present in slides? [A-Z]\d+(?:(?:, | and )[A-Z]\d+)* of \d+")


def report_body(report: str, record: dict) -> str:
    """A part report without what its slides cannot show: the part header (letter, organ, site with
    laterality, procedure, slide count) and which of the part's slides carry the finding.

    A model trained on whole reports learns to write a site and side it never saw (the specimen label is
    not a tissue patch): the app writes each draft's header from its own part instead (webapp/reports/text.py
    ``with_own_header``). ``record``: a corpus-v2 manifest record (part letter, organ, site, procedure,
    template). The header is removed exactly as `write_part_report` wrote it; what remains is the diagnosis,
    grade, extent, margin and microscopic description."""
    organ = ORGANS[record["organ"]]
    letter, site, procedure = record["part"], record["site"], record["procedure"]
    n = int(record.get("n_slides_in_part", 1))
    header = f"{letter}. {organ.display}, {site}, {procedure}"
    template = record.get("template", "")
    lines = report.split("\n")
    if template == "classic":
        lines = [ln for ln in lines if ln.strip() != f"{header}:"]
    elif template == "bulleted":
        lines = [ln for ln in lines if ln.strip() not in ("Diagnosis", f"{header} ({n} slide{'s' if n > 1 else ''}):")]
    elif template == "one-line":
        lines = [ln.removeprefix(f"{header.upper()}: ") for ln in lines]
    elif template == "synoptic":
        lines = [ln for ln in lines if ln.strip() != f"SPECIMEN: {header}" and not ln.startswith("SLIDES INVOLVED:")]
    elif template == "narrative":
        lines = [ln.removeprefix(f"Part {letter} is a {procedure} of the {organ.display.lower()} ({site}). ")
                 for ln in lines]
    elif template == "terse":
        lines = [ln.removeprefix(f"{letter}) {organ.display} {site} ({procedure}): ") for ln in lines]
    lines = [ln for ln in lines if not re.fullmatch(r"\s*(?:- )?" + _INVOLVED_BIT.pattern + r"\.?\s*", ln, re.I)]
    text = "\n".join(lines).strip()
    bit = _INVOLVED_BIT.pattern
    text = re.sub(r"; " + bit + r"(?=[;.])", "", text, flags=re.I)  # one-line: "...; present in slides C1 of 3; ..."
    text = re.sub(r"(?<=\.) " + bit + r"\.", "", text, flags=re.I)  # narrative: ". Present in slides C1 of 3."
    text = re.sub(r" ?\[" + bit + r"\]", "", text, flags=re.I)  # terse: "[present in slides C1 of 3]"
    text = re.sub(r"\[" + bit + r", ", "[", text, flags=re.I)  # terse: "[present in slides C1 of 3, focus ...]"
    return re.sub(r"[ \t]+\n", "\n", text).strip()
