"""The one progress callback shape of the model library.

Every library function that reports progress (`extract_slide_features`, `encode_grid`,
`extract_corpus_features`, `PathAlign.extract`, ...) takes ``progress: Progress | None`` and calls it as
``progress(done, total)`` with two ints, ``0 <= done <= total``, ``done`` never decreasing, the last call
being ``(total, total)``. When there is nothing to do the one call is ``(0, 0)``: guard the division.

    def show(done: int, total: int) -> None:
        print(f"{done}/{total}")

    model.extract("slide.svs", progress=show)
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def __call__(self, done: int, total: int) -> None: ...
