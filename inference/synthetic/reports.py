"""Surgical-pathology report texts for synthetic cases, varied the way real sign-out reports vary.

A report has a part label and final diagnosis (always), and optionally a microscopic description, a
comment, a clinical history and a gross description, in one of several house styles. The final diagnosis
and microscopic description describe what is visible in the slide; the clinical history, gross
measurements and ancillary studies (immunostains) are NOT visible in the pixels, as in real reports.

Public: `CaseText` (the pieces), `write_report(case, rng) -> CaseText`, `clinical_history(organ, age, sex, rng)`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .catalog import DIAGNOSIS_BY_KEY, ORGANS

HISTORIES: dict[str, tuple[str, ...]] = {
    "colon": ("rectal bleeding", "screening colonoscopy", "positive FIT test", "change in bowel habits",
              "iron-deficiency anemia", "polyp seen at colonoscopy", "family history of colon cancer",
              "surveillance after prior polypectomy"),
    "stomach": ("epigastric pain", "dyspepsia", "reflux symptoms not responding to PPI", "weight loss",
                "anemia, rule out gastric lesion", "nodular mucosa at endoscopy", "early satiety"),
    "prostate": ("elevated PSA ({psa} ng/mL)", "rising PSA, now {psa} ng/mL", "abnormal digital rectal exam",
                 "PI-RADS {pirads} lesion on MRI", "active surveillance, repeat biopsy"),
    "breast": ("palpable mass", "BI-RADS {birads} mass on screening mammogram", "new density on mammogram",
               "mass on ultrasound, {size} cm", "nipple discharge"),
    "lung": ("{packs} pack-year smoker with spiculated nodule", "incidental nodule on CT chest",
             "cough and hemoptysis", "enlarging ground-glass nodule", "PET-avid mass, {size} cm"),
    "skin": ("changing pigmented lesion", "pearly papule, rule out BCC", "enlarging mole", "non-healing lesion",
             "lesion of concern to the patient", "rule out melanoma", "irritated lesion"),
}

MICRO: dict[str, tuple[str, ...]] = {
    "colon_normal": ("Sections show colonic mucosa with regular, evenly spaced crypts rich in goblet cells.",
                     "The crypt architecture is preserved; the lamina propria shows normal cellularity.",
                     "Colonic mucosa with round, regularly spaced crypts and basally located nuclei."),
    "colon_tubular_adenoma": ("Sections show crowded, elongated tubular glands lined by cells with pencillate, "
                              "hyperchromatic, stratified nuclei and reduced goblet cells.",
                              "There is an adenomatous proliferation of tubular glands with nuclear "
                              "elongation and stratification.",),
    "colon_adenocarcinoma": ("Sections show irregular, angulated malignant glands infiltrating a desmoplastic "
                             "stroma. The tumor cells have enlarged, pleomorphic, vesicular nuclei.",
                             "Infiltrating glands of variable size and shape with a desmoplastic reaction.",),
    "stomach_chronic_gastritis": ("The lamina propria is expanded by a dense lymphoplasmacytic infiltrate "
                                  "with neutrophils infiltrating the foveolar epithelium.",
                                  "Gastric mucosa with a band-like chronic inflammatory infiltrate and "
                                  "active neutrophilic inflammation.",),
    "stomach_signet_ring_carcinoma": ("Sections show discohesive tumor cells infiltrating the lamina propria "
                                      "singly; many contain a large mucin vacuole displacing a crescentic "
                                      "nucleus.", "Diffusely infiltrating signet ring cells between "
                                      "residual gastric glands.",),
    "stomach_normal": ("Oxyntic mucosa with tightly packed glands composed of parietal and chief cells.",
                       "Gastric body-type mucosa without inflammation or metaplasia.",),
    "prostate_benign": ("Sections show benign prostatic glands with papillary infoldings, pale cytoplasm "
                        "and an intact basal cell layer, in fibromuscular stroma.",
                        "Large benign glands with two cell layers; no atypia.",),
    "prostate_adenocarcinoma": ("Sections show small, crowded, infiltrative glands lined by a single cell "
                                "layer with enlarged nuclei and prominent nucleoli.",
                                "Infiltrating small acini with nucleomegaly and prominent nucleoli; basal "
                                "cells are absent.",),
    "breast_fibroadenoma": ("A circumscribed fibroepithelial lesion with loose, paucicellular stroma "
                            "compressing ducts into slit-like spaces.",
                            "Proliferation of bland stroma and compressed, elongated ducts with two cell "
                            "layers.",),
    "breast_invasive_ductal_carcinoma": ("Sections show nests, cords and tubules of atypical cells "
                                         "infiltrating a desmoplastic stroma and adipose tissue.",
                                         "Infiltrating carcinoma forming nests and occasional tubules.",),
    "lung_adenocarcinoma": ("Sections show atypical pneumocyte-like cells growing along alveolar walls and "
                            "forming acini within a fibrotic stroma.",
                            "Malignant glandular proliferation with lepidic and acinar components.",),
    "lung_squamous_cell_carcinoma": ("Sections show nests of large polygonal cells with abundant "
                                     "eosinophilic cytoplasm, keratinization and keratin pearl formation.",
                                     "Infiltrating nests of keratinizing malignant squamous cells.",),
    "lung_normal": ("Sections show lung parenchyma with thin alveolar septa and scattered alveolar "
                    "macrophages.", "Alveolated lung tissue without significant pathologic change.",),
    "skin_basal_cell_carcinoma": ("Sections show nests of basaloid cells with peripheral palisading and "
                                  "stromal retraction clefts in the dermis.",
                                  "Nodular aggregates of basaloid cells with palisading, clefting and "
                                  "mucinous stroma.",),
    "skin_melanoma": ("Sections show sheets and nests of atypical epithelioid melanocytes with prominent "
                      "nucleoli, melanin pigment and pagetoid spread into the epidermis.",
                      "Malignant melanocytic proliferation with dermal invasion, atypia and mitoses.",),
    "skin_nevus": ("Sections show nests of small, uniform melanocytes in the dermis with maturation with "
                   "depth; no atypia or mitoses.", "Intradermal nests of bland nevus cells that mature "
                   "with descent.",),
}

FINDING_SENTENCES: dict[str, tuple[str, ...]] = {
    "necrosis": ("Tumor necrosis is present.", "Foci of necrosis are identified.", "Necrosis: present."),
    "cribriform": ("Cribriform architecture is present.", "A cribriform growth pattern is seen."),
    "mucin": ("Mucin is present.", "Extracellular mucin is identified.", "Mucinous features are noted."),
    "keratin_pearls": ("Keratin pearls are present.", "Keratinization with pearl formation is seen."),
    "lymphoid_aggregates": ("Lymphoid aggregates are present.", "Prominent lymphoid aggregates."),
    "corpora_amylacea": ("Corpora amylacea are present.",),
    "pigment": ("Melanin pigment is {level}.", "{Level} melanin pigmentation."),
    "inflammation": ("{Level} chronic inflammation.", "Chronic inflammation: {level}."),
    "mitoses": ("Mitotic activity is {level}.", "Mitoses: {level}."),
    "pleomorphism": ("Nuclear pleomorphism is {level}.", "{Level} nuclear pleomorphism."),
}

NEGATIVES: dict[str, tuple[str, ...]] = {
    "benign": ("Negative for dysplasia and malignancy.", "No evidence of malignancy.", ""),
    "normal": ("Negative for dysplasia and malignancy.", "No diagnostic abnormality.", ""),
    "inflammatory": ("Negative for intestinal metaplasia and dysplasia.", "No dysplasia or malignancy.", ""),
    "precancerous": ("Negative for invasive carcinoma.", "No invasive malignancy identified.", ""),
    "malignant": ("", "", ""),
}

COMMENTS: dict[str, tuple[str, ...]] = {
    "prostate_adenocarcinoma": ("Immunostains for p63 and high-molecular-weight keratin show loss of basal "
                                "cells, with AMACR positivity, supporting the diagnosis.",
                                "Tumor involves approximately {pct}% of the core."),
    "lung_adenocarcinoma": ("The tumor cells are positive for TTF-1 and napsin A and negative for p40.",
                            "Molecular testing (EGFR, ALK, ROS1, PD-L1) has been requested."),
    "lung_squamous_cell_carcinoma": ("The tumor cells are positive for p40 and negative for TTF-1.",
                                     "PD-L1 testing has been requested."),
    "breast_invasive_ductal_carcinoma": ("ER, PR and HER2 studies will be reported in an addendum.",
                                         "Tumor size on imaging: {size} cm."),
    "stomach_chronic_gastritis": ("Helicobacter pylori organisms are identified on immunostain.",
                                  "An immunostain for H. pylori is positive."),
    "stomach_signet_ring_carcinoma": ("A cytokeratin immunostain highlights the infiltrating single cells.",
                                      "Findings discussed with the endoscopist on the day of sign-out."),
    "skin_melanoma": ("Breslow thickness at least {depth} mm in this specimen; margins are involved.",
                      "SOX10 and PRAME immunostains support the diagnosis."),
    "skin_basal_cell_carcinoma": ("The peripheral margin is involved.", "Margins appear clear."),
    "colon_tubular_adenoma": ("Recommend surveillance per guidelines.",),
    "colon_adenocarcinoma": ("Mismatch repair immunostains are pending.", "Findings called to Dr. {doc}."),
}

DOCTORS = ("Alvarez", "Chen", "Okafor", "Nguyen", "Schmidt", "Patel", "Rossi", "Kim", "Haddad", "Larsen")


@dataclass
class CaseText:
    report: str
    clinical_history: str
    part: str
    final_diagnosis: str


def _pick(rng: np.random.Generator, options) -> str:
    return options[int(rng.integers(0, len(options)))]


def clinical_history(organ: str, age: int, sex: str, rng: np.random.Generator) -> str:
    """A short history line: chosen independently of the diagnosis (it is not in the pixels)."""
    what = _pick(rng, HISTORIES[organ]).format(
        psa=round(float(rng.uniform(4, 25)), 1), pirads=int(rng.integers(3, 6)), birads=int(rng.integers(4, 6)),
        size=round(float(rng.uniform(0.8, 4.5)), 1), packs=int(rng.integers(10, 60)))
    person = {"M": _pick(rng, ("man", "male", "M")), "F": _pick(rng, ("woman", "female", "F"))}[sex]
    return f"{age}-year-old {person} with {what}" if person not in ("M", "F") else f"{age}{person}, {what}"


def _level_text(level: str) -> str:
    return {"none": "absent", "mild": "mild", "moderate": "moderate", "severe": "marked", "low": "low",
            "high": "brisk", "marked": "marked"}.get(level, level)


def write_report(case: dict, rng: np.random.Generator) -> CaseText:
    """Render the report for a case dict with keys diagnosis, grade_index, findings, organ, site,
    procedure, part, age, sex, case_id, n_fragments."""
    dx = DIAGNOSIS_BY_KEY[case["diagnosis"]]
    organ = ORGANS[dx.organ]
    style = int(rng.integers(0, 4))
    part = case["part"]
    site, procedure = case["site"], case["procedure"]
    header = f"{part}. {organ.display}, {site}, {procedure}:"
    if style == 3:
        header = header.upper()

    name = dx.display if rng.random() < 0.5 else _pick(rng, dx.synonyms)
    lines = [name]
    if dx.grades and case["grade_index"] >= 0:
        phrase = dx.grade_phrases[case["grade_index"]]
        if dx.key == "colon_tubular_adenoma":
            lines = [f"{_pick(rng, ('Tubular adenoma', 'Adenomatous polyp, tubular type'))} with {phrase}"]
        else:
            lines.append(phrase[0].upper() + phrase[1:])
    findings = case["findings"]
    fsent = []
    for key, value in findings.items():
        if key not in FINDING_SENTENCES or value in (False, None, "none") or rng.random() < 0.25:
            continue
        sent = _pick(rng, FINDING_SENTENCES[key])
        level = _level_text(str(value))
        fsent.append(sent.format(level=level, Level=level[0].upper() + level[1:]))
    neg = _pick(rng, NEGATIVES[dx.category])
    if neg:
        fsent.append(neg)
    final_diagnosis = "; ".join(lines)

    bullet = _pick(rng, ("- ", "  - ", "* ", "   "))
    if style in (0, 3):
        dx_block = [header] + [f"{bullet}{s.rstrip('.')}." for s in lines + fsent]
    elif style == 1:
        dx_block = [header, "   " + ", ".join(s.rstrip(".") for s in lines) + "."] + [f"   {s}" for s in fsent]
    else:
        dx_block = [f"{header} " + ", ".join(s.rstrip(".") for s in lines) + ". " + " ".join(fsent)]
    dx_block = [s.rstrip() for s in dx_block]

    history = clinical_history(dx.organ, case["age"], case["sex"], rng)
    n = case.get("n_fragments", 1)
    gross = (f"Received in formalin labeled with the patient's name and \"{site}\" "
             f"{'is one' if n == 1 else f'are {n}'} {_pick(rng, ('tan-pink', 'tan', 'gray-white', 'pink'))} "
             f"{'fragment' if n == 1 else 'fragments'} measuring {rng.uniform(0.1, 1.5):.1f} cm "
             f"{'in aggregate' if n > 1 else 'in greatest dimension'}. Entirely submitted in cassette {part}1.")
    micro = _pick(rng, MICRO[dx.key])
    comment = ""
    if dx.key in COMMENTS and rng.random() < 0.6:
        comment = _pick(rng, COMMENTS[dx.key]).format(
            pct=int(rng.integers(5, 90)), size=round(float(rng.uniform(0.8, 3.5)), 1),
            depth=round(float(rng.uniform(0.6, 3.0)), 1), doc=_pick(rng, DOCTORS))

    sections: list[tuple[str, str]] = []
    titles = [("FINAL DIAGNOSIS", "CLINICAL HISTORY", "GROSS DESCRIPTION", "MICROSCOPIC DESCRIPTION", "COMMENT"),
              ("Diagnosis", "History", "Gross", "Microscopic", "Comment"),
              ("DIAGNOSIS", "Clinical information", "Gross description", "Microscopic", "Note"),
              ("FINAL PATHOLOGIC DIAGNOSIS", "CLINICAL DATA", "GROSS", "MICROSCOPIC", "COMMENT")][style]
    if style == 1 or rng.random() < 0.3:
        sections.append((titles[1], history))
    sections.append((titles[0], "\n".join(dx_block)))
    if comment:
        sections.append((titles[4], comment))
    if rng.random() < 0.55:
        sections.append((titles[3], micro))
    if style != 1 and not any(t == titles[1] for t, _ in sections):
        sections.append((titles[1], history))
    if rng.random() < 0.5:
        sections.append((titles[2], gross))
    if style == 2:
        body = "\n\n".join(f"{t}: {txt}" if "\n" not in txt else f"{t}:\n{txt}" for t, txt in sections)
    else:
        body = "\n\n".join(f"{t}:\n{txt}" for t, txt in sections)
    return CaseText(report=body.strip() + "\n", clinical_history=history, part=part,
                    final_diagnosis=final_diagnosis)
