"""Imported by every Python process of a lent-GPU run (run.sh puts this folder first on PYTHONPATH): when
MIMO_DEADLINE (epoch seconds) is set, every thread's traceback is written to stderr MIMO_DUMP_BEFORE_S seconds
(default 15) before that deadline, so a part stopped at its time limit names the frame it hung in — in each of its
processes (DeepSpeed ranks, pytest-xdist workers, step.py workers), each of which starts its own timer here.
The SIGABRT that `timeout -s ABRT` sends at the limit itself dumps again (PYTHONFAULTHANDLER=1)."""

import faulthandler
import os
import sys
import time

_deadline = os.environ.get("MIMO_DEADLINE")
if _deadline:
    _left = float(_deadline) - float(os.environ.get("MIMO_DUMP_BEFORE_S", "15")) - time.time()
    if _left > 0:
        faulthandler.dump_traceback_later(_left, exit=False, file=sys.stderr)
