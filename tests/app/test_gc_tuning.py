"""The collector's settings after start-up (``app.runtime.tune_gc``)."""

from __future__ import annotations

import gc

from infergate.app.runtime import GC_GEN0_THRESHOLD, tune_gc


def test_tune_gc_freezes_what_start_up_made_and_raises_the_young_threshold() -> None:
    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == (GC_GEN0_THRESHOLD, before[1], before[2])
        assert gc.get_freeze_count() > 0
        assert gc.isenabled()  # cycles are still collected
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
