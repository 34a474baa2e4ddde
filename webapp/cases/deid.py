"""De-identification of report text: the one function that retrieval drafts, evidence snippets and rating
studies use before another patient's text is shown to anyone.

Built on scrubadub (a maintained PII filter: e-mail, phone, URL, credential, credit-card and SSN detectors)
plus detectors for what a pathology report carries: titled names and signature lines ("Dr. Chen",
"Electronically signed by ..."), dates in the usual formats, accession numbers, pseudonyms and MRN-like
identifiers, ages over 89 (HIPAA Safe Harbor), and every identifier the lab already knows: the staff's
names (the signers and referring doctors a report may name) and the case's own accession and pseudonym.
A name that appears in none of these and carries no title is the residual risk, which is why retrieval
drafts are composed from the diagnosis lines only (webapp.reports.text.diagnosis_lines) before this runs.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

# What each kind of identifier becomes in the text.
PLACEHOLDERS = {"name": "[name]", "date": "[date]", "identifier": "[id]", "age": "[age over 89]",
                "signature": "", "email": "[email]", "phone": "[phone]", "url": "[url]"}

_MONTHS = (r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|Sep(?:t(?:ember)?)?|"
           r"Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)\.?")
_NAME = r"(?:[A-Z]\.\s*){0,2}[A-Z][a-zA-Z'\-]+(?:\s+[A-Z]\.)?(?:\s+[A-Z][a-zA-Z'\-]+){0,2}"

# kind -> pattern, for the pathology detectors added to scrubadub's own.
PATTERNS: dict[str, re.Pattern] = {
    "signature": re.compile(r"^[ \t]*(?:electronically\s+)?(?:signed|verified|reviewed)(?:\s+out)?\s+by\b.*$|"
                            r"^[ \t]*(?:pathologist|attending|resident|fellow)\s*:.*$", re.IGNORECASE | re.MULTILINE),
    "name": re.compile(rf"\b(?:Drs?|Mrs?|Ms|Miss|Prof|Professor|Doctor)\.?\s+{_NAME}"),
    "date": re.compile(
        r"\b\d{4}[-/.]\d{1,2}[-/.]\d{1,2}\b"  # 2026-03-04
        r"|\b\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}\b"  # 03/04/2026, 3.4.26
        rf"|\b\d{{1,2}}(?:st|nd|rd|th)?\s+{_MONTHS},?\s+\d{{2,4}}\b"  # 4 March 2026
        rf"|\b{_MONTHS}\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{2,4}}\b"  # March 4, 2026
        rf"|\b{_MONTHS}\s+\d{{4}}\b",  # March 2026
        re.IGNORECASE),
    "identifier": re.compile(
        r"\b[A-Z]{1,3}\d{2}-\d{3,6}\b"  # accession numbers (S26-00042)
        r"|\b(?:PSN|MRN|NHS|UR|ID|PID|HN)[-#:\s]*[A-Z0-9][A-Z0-9\-]{2,}\b"  # pseudonyms, record numbers
        r"|\b(?:MRN|medical record(?: number)?|record no\.?|patient id)\s*[:#]?\s*\w+"
        r"|\b\d{6,}\b",  # any long number (MRN-like)
        re.IGNORECASE),
    "age": re.compile(r"\b(?:9\d|1[0-4]\d)(?:\s*-?\s*(?:year|yr)s?[- ]old|\s*y/?o\b|\s*[MF]\b)", re.IGNORECASE),
}


@lru_cache(maxsize=1)
def _detector_classes() -> list:
    """scrubadub's detector classes for PATTERNS. Imported on first use: scrubadub pulls in NLTK and
    scikit-learn (about 2 s and 100 MB), which no page that shows no other patient's text should pay."""
    from scrubadub.detectors import RegexDetector
    from scrubadub.filth import Filth

    classes = []
    for kind, pattern in PATTERNS.items():
        filth = type(f"{kind.capitalize()}Filth", (Filth,), {"type": kind})
        classes.append(type(f"{kind.capitalize()}Detector", (RegexDetector,),
                            {"name": f"pathology_{kind}", "filth_cls": filth, "regex": pattern}))
    return classes


def _scrubber(known: Iterable[str]):
    import scrubadub
    from scrubadub.detectors import UserSuppliedFilthDetector

    scrubber = scrubadub.Scrubber()  # e-mail, phone, URL, credential, credit card, SSN
    for detector in _detector_classes():
        scrubber.add_detector(detector())
    items = [{"match": k, "filth_type": "name", "ignore_case": True, "ignore_partial_word_matches": True}
             for k in sorted({k.strip() for k in known if k and len(k.strip()) >= 3}, key=len, reverse=True)]
    if items:
        scrubber.add_detector(UserSuppliedFilthDetector(items, name="known_identifiers"))
    return scrubber


def deidentify(text: str, known: Iterable[str] = ()) -> str:
    """`text` with every identifier found replaced by a placeholder ([name], [date], [id], ...); signature
    lines removed. `known`: identifiers the caller knows of (names, pseudonyms, accession numbers)."""
    if not text:
        return ""
    scrubber = _scrubber(known)
    filths = sorted(scrubber.iter_filth(text), key=lambda f: f.beg)
    out, last = [], 0
    for filth in filths:
        if filth.beg < last:  # overlapping finds: the earlier span already covers it
            last = max(last, filth.end)
            continue
        out.append(text[last:filth.beg])
        out.append(_placeholder(filth))
        last = filth.end
    out.append(text[last:])
    cleaned = "".join(out)
    cleaned = re.sub(r"[ \t]+\n", "\n", cleaned)
    return re.sub(r"\n{3,}", "\n\n", cleaned).strip()


def _placeholder(filth) -> str:
    # Overlapping finds arrive merged; a signature line wins (it is dropped whole), then the first kind.
    kinds = [getattr(f, "type", "") for f in getattr(filth, "filths", [filth])]
    if "signature" in kinds:
        return ""
    for kind in kinds:
        if kind in PLACEHOLDERS:
            return PLACEHOLDERS[kind]
    return "[redacted]"


def staff_names() -> list[str]:
    """Every name of every user account: the people a report may name (signers, colleagues)."""
    from webapp.accounts.models import User  # accounts sits below cases

    names: set[str] = set()
    for first, last, username in User.objects.values_list("first_name", "last_name", "username"):
        for value in (first, last, f"{first} {last}".strip(), username):
            if value and len(value) >= 3:
                names.add(value)
    return sorted(names)


def case_identifiers(case) -> list[str]:
    return [case.accession_number, case.patient_pseudonym]
