"""The label space of the synthetic corpus: organs, diagnoses, categories, grades and findings.

The model side builds zero-shot prompts from this module, so names here are stable API:

- `ORGANS`: organ key -> `Organ` (display name, anatomic sites, procedures).
- `DIAGNOSES`: tuple of `Diagnosis` (key, organ, category, display name, synonyms, grades, findings).
- `DIAGNOSIS_BY_KEY`, `diagnosis_keys()`, `organ_keys()`.
- `CATEGORIES`: diagnosis categories ("normal", "benign", "inflammatory", "precancerous", "malignant").
- `LABEL_NAMES`: the keys of every manifest record's `labels` dict.
- `FINDINGS`: finding key -> display text; all findings listed there are visible in the pixels.
"""
from __future__ import annotations

from dataclasses import dataclass, field

CATEGORIES: tuple[str, ...] = ("normal", "benign", "inflammatory", "precancerous", "malignant")

# Every manifest record carries labels with exactly these keys.
LABEL_NAMES: tuple[str, ...] = (
    "organ", "site", "procedure", "diagnosis", "diagnosis_display", "category", "grade", "findings",
)

# Visible findings (rendered in the pixels); values in labels["findings"] are bools or levels.
FINDINGS: dict[str, str] = {
    "necrosis": "tumor necrosis",
    "inflammation": "inflammation (none/mild/moderate/severe)",
    "mucin": "mucin (intracellular or extracellular)",
    "mitoses": "mitotic activity (low/moderate/high)",
    "pigment": "melanin pigment",
    "keratin_pearls": "keratin pearls",
    "lymphoid_aggregates": "lymphoid aggregates",
    "corpora_amylacea": "corpora amylacea",
    "cribriform": "cribriform architecture",
    "pleomorphism": "nuclear pleomorphism (mild/moderate/marked)",
}

LEVELS: tuple[str, ...] = ("none", "mild", "moderate", "severe")


@dataclass(frozen=True)
class Organ:
    key: str
    display: str
    sites: tuple[str, ...]
    procedures: tuple[str, ...]


@dataclass(frozen=True)
class Diagnosis:
    key: str
    organ: str
    category: str
    display: str
    synonyms: tuple[str, ...]
    grades: tuple[str, ...] = ()
    # Grade wording as written in reports, same order as `grades`.
    grade_phrases: tuple[str, ...] = ()
    findings: tuple[str, ...] = field(default_factory=tuple)

    @property
    def names(self) -> tuple[str, ...]:
        """Display name first, then synonyms: every phrasing a report may use."""
        return (self.display, *self.synonyms)


ORGANS: dict[str, Organ] = {
    "colon": Organ("colon", "Colon", ("sigmoid", "descending", "transverse", "ascending", "cecum", "rectum"),
                   ("biopsy", "polypectomy", "resection")),
    "stomach": Organ("stomach", "Stomach", ("antrum", "body", "fundus", "cardia", "incisura"),
                     ("biopsy", "endoscopic biopsy")),
    "prostate": Organ("prostate", "Prostate", ("left base", "left mid", "left apex", "right base", "right mid",
                                               "right apex"), ("needle core biopsy", "core biopsy")),
    "breast": Organ("breast", "Breast", ("left, upper outer quadrant", "left, lower inner quadrant",
                                         "right, upper outer quadrant", "right, 10 o'clock", "left, 2 o'clock"),
                    ("ultrasound-guided core biopsy", "excision", "lumpectomy")),
    "lung": Organ("lung", "Lung", ("right upper lobe", "right lower lobe", "left upper lobe", "left lower lobe",
                                   "right middle lobe"), ("wedge resection", "core biopsy", "lobectomy")),
    "skin": Organ("skin", "Skin", ("left forearm", "back", "right cheek", "scalp", "left shoulder", "nose",
                                   "right shin"), ("shave biopsy", "punch biopsy", "excision")),
}

DIAGNOSES: tuple[Diagnosis, ...] = (
    Diagnosis("colon_normal", "colon", "normal", "Benign colonic mucosa",
              ("Colonic mucosa with no diagnostic abnormality", "Unremarkable colonic mucosa",
               "Normal colonic mucosa"), findings=("inflammation", "lymphoid_aggregates")),
    Diagnosis("colon_tubular_adenoma", "colon", "precancerous", "Tubular adenoma",
              ("Tubular adenoma with low-grade dysplasia", "Adenomatous polyp, tubular type",
               "Colonic adenoma, tubular"),
              grades=("low-grade dysplasia", "high-grade dysplasia"),
              grade_phrases=("low-grade dysplasia", "focal high-grade dysplasia"),
              findings=("mitoses",)),
    Diagnosis("colon_adenocarcinoma", "colon", "malignant", "Invasive adenocarcinoma",
              ("Adenocarcinoma of the colon", "Invasive colorectal adenocarcinoma",
               "Colonic adenocarcinoma, invasive"),
              grades=("G1", "G2", "G3"),
              grade_phrases=("well differentiated (G1)", "moderately differentiated (G2)",
                             "poorly differentiated (G3)"),
              findings=("necrosis", "cribriform", "mitoses", "pleomorphism", "mucin")),
    Diagnosis("stomach_chronic_gastritis", "stomach", "inflammatory", "Chronic active gastritis",
              ("Helicobacter-associated chronic active gastritis", "Chronic active gastritis, H. pylori type",
               "Active chronic gastritis"),
              grades=("mild", "moderate", "severe"),
              grade_phrases=("mild activity", "moderate activity", "marked activity"),
              findings=("inflammation", "lymphoid_aggregates")),
    Diagnosis("stomach_signet_ring_carcinoma", "stomach", "malignant", "Signet ring cell carcinoma",
              ("Poorly cohesive carcinoma, signet ring cell type", "Diffuse-type gastric adenocarcinoma",
               "Gastric adenocarcinoma with signet ring cell features"),
              grades=("G3",), grade_phrases=("poorly differentiated (G3)",),
              findings=("mucin", "pleomorphism")),
    Diagnosis("stomach_normal", "stomach", "normal", "Benign gastric mucosa",
              ("Unremarkable gastric mucosa", "Gastric oxyntic mucosa without diagnostic abnormality",
               "Normal gastric mucosa"), findings=()),
    Diagnosis("prostate_benign", "prostate", "benign", "Benign prostatic tissue",
              ("Benign prostatic glands and stroma", "Benign prostatic hyperplasia",
               "Prostatic tissue, negative for carcinoma"), findings=("corpora_amylacea", "inflammation")),
    Diagnosis("prostate_adenocarcinoma", "prostate", "malignant", "Prostatic adenocarcinoma",
              ("Adenocarcinoma of the prostate, acinar type", "Prostatic acinar adenocarcinoma",
               "Acinar adenocarcinoma"),
              grades=("Gleason 3+3=6", "Gleason 3+4=7", "Gleason 4+3=7", "Gleason 4+4=8", "Gleason 4+5=9"),
              grade_phrases=("Gleason score 3+3=6 (Grade Group 1)", "Gleason score 3+4=7 (Grade Group 2)",
                             "Gleason score 4+3=7 (Grade Group 3)", "Gleason score 4+4=8 (Grade Group 4)",
                             "Gleason score 4+5=9 (Grade Group 5)"),
              findings=("cribriform", "pleomorphism", "mitoses")),
    Diagnosis("breast_fibroadenoma", "breast", "benign", "Fibroadenoma",
              ("Fibroadenoma of the breast", "Benign fibroepithelial lesion consistent with fibroadenoma",
               "Fibroadenoma, intracanalicular pattern"), findings=()),
    Diagnosis("breast_invasive_ductal_carcinoma", "breast", "malignant", "Invasive ductal carcinoma",
              ("Invasive carcinoma of no special type", "Invasive mammary carcinoma, ductal type",
               "Infiltrating ductal carcinoma"),
              grades=("Nottingham grade 1", "Nottingham grade 2", "Nottingham grade 3"),
              grade_phrases=("Nottingham grade 1 of 3 (score 5)", "Nottingham grade 2 of 3 (score 7)",
                             "Nottingham grade 3 of 3 (score 9)"),
              findings=("necrosis", "mitoses", "pleomorphism")),
    Diagnosis("lung_adenocarcinoma", "lung", "malignant", "Lung adenocarcinoma",
              ("Invasive adenocarcinoma of the lung", "Pulmonary adenocarcinoma",
               "Non-small cell carcinoma, adenocarcinoma type"),
              grades=("G1", "G2", "G3"),
              grade_phrases=("lepidic predominant, well differentiated (G1)",
                             "acinar predominant, moderately differentiated (G2)",
                             "solid predominant, poorly differentiated (G3)"),
              findings=("mucin", "mitoses", "pleomorphism")),
    Diagnosis("lung_squamous_cell_carcinoma", "lung", "malignant", "Squamous cell carcinoma",
              ("Keratinizing squamous cell carcinoma of the lung", "Non-small cell carcinoma, squamous type",
               "Pulmonary squamous cell carcinoma"),
              grades=("G1", "G2", "G3"),
              grade_phrases=("well differentiated (G1)", "moderately differentiated (G2)",
                             "poorly differentiated (G3)"),
              findings=("keratin_pearls", "necrosis", "mitoses", "pleomorphism")),
    Diagnosis("lung_normal", "lung", "normal", "Benign lung parenchyma",
              ("Unremarkable lung parenchyma", "Lung parenchyma without diagnostic abnormality",
               "Benign pulmonary parenchyma"), findings=("inflammation",)),
    Diagnosis("skin_basal_cell_carcinoma", "skin", "malignant", "Basal cell carcinoma",
              ("Basal cell carcinoma, nodular type", "Nodular basal cell carcinoma", "BCC, nodular"),
              findings=("mitoses",)),
    Diagnosis("skin_melanoma", "skin", "malignant", "Invasive melanoma",
              ("Malignant melanoma, invasive", "Invasive malignant melanoma", "Melanoma, superficial spreading type"),
              findings=("pigment", "mitoses", "pleomorphism")),
    Diagnosis("skin_nevus", "skin", "benign", "Intradermal melanocytic nevus",
              ("Benign intradermal nevus", "Melanocytic nevus, intradermal type", "Benign melanocytic nevus"),
              findings=("pigment",)),
)

DIAGNOSIS_BY_KEY: dict[str, Diagnosis] = {d.key: d for d in DIAGNOSES}


def diagnosis_keys(organ: str | None = None) -> list[str]:
    """Diagnosis keys in catalogue order, optionally for one organ."""
    return [d.key for d in DIAGNOSES if organ is None or d.organ == organ]


def organ_keys() -> list[str]:
    return list(ORGANS)
