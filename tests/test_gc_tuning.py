"""The garbage collector tuned once start-up is over (`actors/gc_tuning.py`), in a fresh process as a server's."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

_PROBE = """
import gc, json
from actors import gc_tuning
before = (gc.get_freeze_count(), gc.get_threshold()[0])
gc_tuning.tune_after_start_up(busy={busy})
gc_tuning.tune_after_start_up(busy={busy})  # once per process
print(json.dumps([before, (gc.get_freeze_count(), gc.get_threshold()[0])]))
"""


@pytest.mark.parametrize(("busy", "young_threshold"), [(True, 10_000), (False, 700)])
def test_start_up_is_frozen_and_busy_processes_collect_young_objects_less_often(busy: bool,
                                                                               young_threshold: int) -> None:
    out = subprocess.run([sys.executable, "-c", _PROBE.format(busy=busy)], capture_output=True, text=True,
                         check=True).stdout
    (frozen_before, threshold_before), (frozen_after, threshold_after) = json.loads(out)
    assert (frozen_before, threshold_before) == (0, 700)  # CPython's defaults
    assert frozen_after > 1_000  # what the interpreter and the module loaded are out of the collector's scans
    assert threshold_after == young_threshold
