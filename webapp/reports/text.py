"""Report text clean-up shared by retrieval drafts and rating studies.

Another case's report must not carry that patient's history, signature or accession number into a new
draft or in front of a rater; layout differences must not give a text's source away.
"""
from __future__ import annotations

import re

# A section heading at the start of a line: "History:", "CLINICAL DATA:", "Clinical information: 61F, ...".
_HEADING = re.compile(r"^([A-Za-z][A-Za-z ]{1,40}):[ \t]*(.*)$")
HISTORY_HEADINGS = {"history", "clinical history", "clinical information", "clinical data", "clinical details",
                    "clinical notes", "indication", "indications"}
_SIGNATURE = re.compile(r"^\s*(electronically\s+)?signed(\s+out)?\s+by\b.*$", re.IGNORECASE | re.MULTILINE)
_ACCESSION = re.compile(r"\b[A-Z]{1,3}\d{2}-\d{5}\b")


def without_case_specifics(text: str) -> str:
    """The same clean-up for every source, so layout does not give a source away and no identifier slips
    through: no signature lines, no history section (a signed report has one, a draft may not; the study
    shows the case's history separately when it includes it), accession numbers masked, unified blank
    lines."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _SIGNATURE.sub("", text)
    kept, skipping = [], False
    for line in text.split("\n"):
        heading = _HEADING.match(line)
        if heading:
            skipping = heading.group(1).strip().lower() in HISTORY_HEADINGS
        if not skipping:
            kept.append(line.rstrip())
    text = _ACCESSION.sub("[accession]", "\n".join(kept))
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()
