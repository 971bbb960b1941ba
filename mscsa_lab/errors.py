"""What a user can fix, told apart from a bug.

Every error whose message is written for the user (a bad name, an impossible configuration, a
corrupt file, a request too large for this machine) derives from ``UserError``; the command line
prints its message and exits 2, the app shows it in the tab's status line. Anything else is a bug:
``report_internal_error`` logs it with its trace and returns a short reference, and the user sees
"internal error (reference ...)" rather than a message that was never meant as advice.

The concrete classes keep their old standard bases too (``ConfigError`` is still a ``ValueError``,
an unknown timm keyword still a ``TypeError``), so code that caught those keeps working.
"""
from __future__ import annotations

import logging
import secrets
import time
import traceback
from typing import Any

__all__ = ["UserError", "report_internal_error", "internal_error_message", "LOGGER_NAME"]

LOGGER_NAME = "mscsa_lab"


class UserError(Exception):
    """An error the user can fix; ``str(error)`` says what went wrong and what to do."""


def report_internal_error(error: BaseException, where: str = "", logger: logging.Logger | None = None,
                          stream: Any = None) -> str:
    """Record ``error`` with its full trace and return a reference the user can quote (``E1130-1742-3fa9``):
    written to ``stream`` (the command line's stderr) when given, else logged (the app's log)."""
    reference = time.strftime("E%m%d-%H%M-") + secrets.token_hex(2)
    trace = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    heading = f"internal error {reference}{f' in {where}' if where else ''}:"
    if stream is not None:
        stream.write(f"{heading}\n{trace}")
        stream.flush()
    else:
        (logger or logging.getLogger(LOGGER_NAME)).error("%s\n%s", heading, trace)
    return reference


def internal_error_message(reference: str) -> str:
    """What the user sees for a bug: no advice, just the reference to report."""
    return (f"internal error (reference {reference}): this is a bug in MSCSA Lab, not a problem with your input. "
            "The details are in the server's log (or on stderr for the command line); please report the reference.")
