"""Report text handling shared by drafting, evidence and rating studies.

- `diagnosis_lines`: only the final-diagnosis lines of a report (no history, gross, microscopic, comment,
  signature; no other case's part header), which is all a retrieval draft may take from another case.
- `without_case_specifics`: the one clean-up before a text is shown to someone who is not on its case (a
  rater, another pathologist): history dropped, layout unified, then de-identified (webapp.cases.deid).
- `own_part_header` / `with_own_header`: a draft always states its own part's label, site and procedure.
"""
from __future__ import annotations

import re
from collections.abc import Iterable

from webapp.cases.deid import deidentify

from .services import part_heading

# A section heading at the start of a line: "History:", "CLINICAL DATA:", "Clinical information: 61F, ...".
_HEADING = re.compile(r"^\s*([A-Za-z][A-Za-z ]{1,40}):[ \t]*(.*)$")
HISTORY_HEADINGS = {"history", "clinical history", "clinical information", "clinical data", "clinical details",
                    "clinical notes", "indication", "indications"}
DIAGNOSIS_HEADINGS = {"final diagnosis", "diagnosis", "diagnoses", "final pathologic diagnosis",
                      "final pathological diagnosis", "final diagnoses"}
OTHER_HEADINGS = HISTORY_HEADINGS | {"gross", "gross description", "macroscopic", "macroscopic description",
                                     "microscopic", "microscopic description", "comment", "comments", "note",
                                     "notes", "addendum", "specimen", "specimens"}
# Another case's part header: "A. Colon, sigmoid, biopsy:" (possibly upper case, possibly followed by text).
_PART_HEADER = re.compile(r"^\s*[A-Z]{1,2}\.\s+[^:\n]{1,200}:[ \t]*")
_SIGNATURE = re.compile(r"^\s*(electronically\s+)?signed(\s+out)?\s+by\b.*$", re.IGNORECASE | re.MULTILINE)


def _sections(text: str) -> list[tuple[str, list[str]]]:
    """[(heading or '', lines)] with only the known report headings starting a new section."""
    out: list[tuple[str, list[str]]] = [("", [])]
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        match = _HEADING.match(line)
        name = match.group(1).strip().lower() if match else ""
        if match and name in DIAGNOSIS_HEADINGS | OTHER_HEADINGS:
            out.append((name, [match.group(2)] if match.group(2).strip() else []))
        else:
            out[-1][1].append(line)
    return out


def diagnosis_lines(text: str) -> str:
    """The final-diagnosis lines of a report, without the part header of the case they come from. A text
    with no headings at all is taken as a diagnosis (what a pathologist types into a part's box)."""
    sections = _sections(text)
    chosen = [lines for name, lines in sections if name in DIAGNOSIS_HEADINGS]
    if not chosen and len(sections) == 1:
        chosen = [sections[0][1]]
    kept = []
    for lines in chosen:
        for line in lines:
            line = _PART_HEADER.sub("", line).strip()
            line = re.sub(r"^[-*\u2022]\s*", "", line)
            if line and not _SIGNATURE.match(line):
                kept.append(line)
    return "\n".join(kept)


def without_case_specifics(text: str, known: Iterable[str] = ()) -> str:
    """The same clean-up for every source, so layout does not give a source away and no identifier slips
    through: no signature lines, no history section (a signed report has one, a draft may not; a study
    shows the case's history separately when it includes it), unified blank lines, then de-identified."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _SIGNATURE.sub("", text)
    kept, skipping = [], False
    for line in text.split("\n"):
        heading = _HEADING.match(line)
        if heading and heading.group(1).strip().lower() in DIAGNOSIS_HEADINGS | OTHER_HEADINGS:
            skipping = heading.group(1).strip().lower() in HISTORY_HEADINGS
        if not skipping:
            kept.append(line.rstrip())
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(kept))
    return deidentify(text.strip(), known)


def own_part_header(part) -> str:
    """'B. Colon, sigmoid, biopsy:': the header a draft for this part starts with (the section's heading)."""
    return f"{part_heading(part)}:"


def with_own_header(text: str, part) -> str:
    """A generated draft under its own part's header: a header the model wrote (perhaps another part's
    label, site or side) is replaced, never kept."""
    lines = text.strip().split("\n")
    if lines and _PART_HEADER.match(lines[0]):
        rest = _PART_HEADER.sub("", lines[0]).strip()
        lines = ([rest] if rest else []) + lines[1:]
    body = "\n".join(lines).strip()
    return f"{own_part_header(part)}\n{body}" if body else own_part_header(part)


_SIDES = {"left": re.compile(r"\bleft\b", re.IGNORECASE), "right": re.compile(r"\bright\b", re.IGNORECASE)}


def side_of(text: str) -> str:
    found = {side for side, pattern in _SIDES.items() if pattern.search(text or "")}
    return found.pop() if len(found) == 1 else ""


# What a draft says about malignancy, in words: "reads benign" when it states a benign or normal finding and
# names no malignancy; a negated mention ("negative for carcinoma") is not a malignancy named.
_NEGATED = re.compile(r"\b(?:negative for|no evidence of|no|without|free of)\s+(?:residual\s+|invasive\s+)?"
                      r"(?:malignancy|carcinoma|tumou?r|neoplasm|dysplasia)\b", re.IGNORECASE)
_MALIGNANT = re.compile(r"\b(?:\w*carcinoma|malignan\w*|sarcoma|lymphoma|melanoma)\b", re.IGNORECASE)
_BENIGN = re.compile(r"\b(?:benign|normal|unremarkable|no diagnostic abnormality|without diagnostic abnormality|"
                     r"no significant (?:pathology|abnormality)|negative for (?:malignancy|carcinoma)|"
                     r"no evidence of (?:malignancy|carcinoma))\b", re.IGNORECASE)


def names_malignancy(text: str) -> bool:
    return bool(_MALIGNANT.search(_NEGATED.sub(" ", text or "")))


def reads_benign(text: str) -> bool:
    return bool(_BENIGN.search(text or "")) and not names_malignancy(text)
