"""How a tab runs an action: errors a user can fix become the tab's status line (and a notice), bugs are
logged with their trace and shown as "internal error" with a reference, long work runs in a thread that a
cancelled request stops.

Every tab wires its button the same way (``wire``): (1) the results are cleared and the status says what
is running; (2) the action runs (the API route, e.g. ``/build``); on success it returns the status line
and the results; on failure it raises ``gr.Error`` (API clients see an exception, the page a notice) after
remembering the message; (3) on failure the status line shows that message, and keeps it until the
tab's next action.
"""
from __future__ import annotations

import inspect
import logging
import threading
import time
from typing import Any, Callable, Iterator, Sequence

import gradio as gr

from mscsa_lab.errors import UserError, internal_error_message, report_internal_error
from webapp.context import AppContext

__all__ = ["tab_action", "wire", "cancellable", "failure_text", "failure_status", "LOGGER"]

LOGGER = logging.getLogger("mscsa_lab.app")


def failure_text(error: BaseException, where: str) -> str:
    """The message for a failed action: the user's own words for what they can fix, a reference for a bug."""
    if isinstance(error, gr.Error):
        return str(error.message)
    if isinstance(error, UserError):
        return str(error)
    return internal_error_message(report_internal_error(error, where, LOGGER))


def _signature_with_request(fn: Callable, arg_names: Sequence[str] | None = None) -> inspect.Signature:
    """``fn``'s signature (or, for ``fn(*values)``, one parameter per name in ``arg_names``) with a last
    ``request`` parameter, which Gradio fills with the request (it reads the signature and annotations)."""
    signature = inspect.signature(fn)
    if arg_names is not None:
        parameters = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in arg_names]
    else:
        parameters = [p for p in signature.parameters.values() if p.name != "request"]
        if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters):
            raise TypeError(f"{fn.__name__}(*values) needs arg_names: Gradio passes the request by position")
    parameters.append(inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None))
    return signature.replace(parameters=parameters)


def tab_action(context: AppContext, tab: str, fn: Callable, arg_names: Sequence[str] | None = None) -> Callable:
    """``fn`` as a Gradio handler of ``tab``: a failure is remembered for the tab's status line and raised as
    ``gr.Error`` with the message the user should see. Generators (streaming actions) stay generators.
    ``arg_names``: the inputs' names, for an ``fn(*values)``."""

    def fail(error: BaseException, request: Any) -> gr.Error:
        message = failure_text(error, f"the {tab} tab")
        context.remember(getattr(request, "session_hash", "") or "", tab, message)
        return gr.Error(message, duration=10)  # a notice; the tab's status line keeps the message

    signature = _signature_with_request(fn, arg_names)
    count = len(signature.parameters)

    def split(values: tuple) -> tuple[tuple, Any]:
        """Gradio passes the request last (the signature says so); a caller from Python may not."""
        if len(values) == count:
            return values[:-1], values[-1]
        return values, None

    if inspect.isgeneratorfunction(fn):
        def handler(*values: Any) -> Iterator[Any]:
            values, request = split(values)
            context.sweep_uploads()
            context.begin()
            try:
                context.require_uploads(values)
                yield from fn(*values)
            except Exception as error:  # noqa: BLE001 - every failure gets its message
                raise fail(error, request) from None
            finally:
                context.end()
    else:
        def handler(*values: Any) -> Any:
            values, request = split(values)
            context.sweep_uploads()
            context.begin()
            try:
                context.require_uploads(values)
                return fn(*values)
            except Exception as error:  # noqa: BLE001
                raise fail(error, request) from None
            finally:
                context.end()

    handler.__name__ = getattr(fn, "__name__", "action")
    handler.__doc__ = fn.__doc__
    handler.__signature__ = signature  # type: ignore[attr-defined]
    handler.__annotations__ = {"request": gr.Request}
    return handler


def wire(context: AppContext, tab: str, trigger: Any, fn: Callable, inputs: Sequence[Any], status: Any,
         results: Sequence[Any], running: str, api_name: str | None = None, extra_outputs: Sequence[Any] = (),
         arg_names: Sequence[str] | None = None, **options: Any) -> Any:
    """Connect ``trigger`` (e.g. ``button.click``) to ``fn``, which returns (status text, *results,
    *extra_outputs). Returns the action's event (for ``.success`` chains)."""
    results = list(results)
    clear = trigger(lambda: (f"*{running}...*", *([None] * len(results))), None, [status, *results], queue=False)

    event = clear.then(tab_action(context, tab, fn, arg_names), list(inputs), [status, *results, *extra_outputs],
                       api_name=api_name, **options)
    event.failure(failure_status(context, tab), None, [status], queue=False)
    return event


def failure_status(context: AppContext, tab: str) -> Callable:
    """A handler for ``event.failure``: the tab's status line shows the message the failed action left."""

    def show(request: gr.Request) -> str:
        message = context.recall(request.session_hash or "", tab)
        return f"**Failed:** {message}" if message else "**Failed** (see the notice)."

    return show


def cancellable(work: Callable[[threading.Event, Callable[[float, str], None]], Any], progress: gr.Progress,
                poll_s: float = 0.5, orphan_s: float = 15.0) -> Iterator[Any]:
    """Run ``work(stop, report)`` in a thread and yield None while it runs, then its result.

    A cancelled request (the page's Stop, a closed tab, a client's cancel) closes this generator, whose
    ``finally`` sets ``stop``: the work sees it within one step and ends, so cancelled work does not keep
    the CPU busy beside the next request. Errors are raised here, in the request.

    Gradio can only close a generator it has registered, which happens at its first yield: so nothing
    starts before that yield. And a cancel that still slips past (the generator left suspended, never
    closed) is caught by a watchdog: when nobody has asked for the next update for ``orphan_s`` seconds,
    the request is gone and ``stop`` is set."""
    stop, box = threading.Event(), {}
    state = {"fraction": 0.0, "message": "starting", "polled": time.monotonic()}

    def report(fraction: float, message: str) -> None:
        state.update(fraction=fraction, message=message)

    def run() -> None:
        try:
            box["result"] = work(stop, report)
        except BaseException as error:  # noqa: BLE001 - raised in the request below
            box["error"] = error

    def watch() -> None:
        while thread.is_alive() and not stop.wait(poll_s):
            if time.monotonic() - state["polled"] > orphan_s:
                stop.set()

    thread = threading.Thread(target=run, name="mscsa-cancellable", daemon=True)
    try:
        yield None  # registered with Gradio from here on, so a cancel can close it
        state["polled"] = time.monotonic()
        thread.start()
        threading.Thread(target=watch, name="mscsa-cancellable-watchdog", daemon=True).start()
        while thread.is_alive():
            thread.join(poll_s)
            progress(state["fraction"], desc=state["message"])
            yield None
            state["polled"] = time.monotonic()
        if "error" in box:
            raise box["error"]
        yield box["result"]
    finally:
        stop.set()
