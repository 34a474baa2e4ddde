"""Imported by a test worker (`start_worker(include="tests.worker_hooks.slow_steps")`): every slide's patch
features take 4 s more, so a test can kill the worker while a job is mid-way. Test-only; production code
has no such hook."""
from __future__ import annotations

import logging
import time

from webapp.analysis import runtime

PAUSE_SECONDS = 4.0
_real_slide_features = runtime.slide_features


def _slow_slide_features(*args, **kwargs):
    logging.getLogger(__name__).info("test pause before patch features (%.1fs)", PAUSE_SECONDS)
    time.sleep(PAUSE_SECONDS)
    features = _real_slide_features(*args, **kwargs)
    time.sleep(PAUSE_SECONDS)
    return features


runtime.slide_features = _slow_slide_features
