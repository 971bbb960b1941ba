"""How work is asked to stop: a flag (a ``threading.Event`` or a callable) that training,
ablation studies and benchmarks check between steps, so a Stop button, Ctrl-C or a cancelled web
request ends the work within one step instead of letting it run on unseen."""
from __future__ import annotations

import threading
from typing import Callable, Union

from mscsa_lab.errors import UserError

__all__ = ["StopFlag", "should_stop", "Cancelled"]

StopFlag = Union[threading.Event, Callable[[], bool], None]


class Cancelled(UserError, RuntimeError):
    """The work was asked to stop before it had a result."""


def should_stop(stop: StopFlag) -> bool:
    if stop is None:
        return False
    if isinstance(stop, threading.Event):
        return stop.is_set()
    return bool(stop())
