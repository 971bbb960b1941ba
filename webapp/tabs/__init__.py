"""One module per tab of the app, each a ``render(context, shared)`` that lays out the tab's components and
wires them to ``mscsa_lab.workflows`` actions through ``webapp.actions``; ``shared`` holds what tabs pass
to each other (the Build tab's model, the pinned configurations, the Saliency tab's model choice)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Shared", "profile_choices", "show_frame"]


@dataclass
class Shared:
    """Components one tab makes and others use."""

    model: Any = None  # gr.State: the Build tab's ModelSpec (None before a build)
    pinned: Any = None  # gr.State: ModelSpecs pinned for Compare
    build_fields: dict[str, Any] = field(default_factory=dict)  # the Build form's inputs, by field name
    build_event: dict[str, Any] = field(default_factory=dict)  # how to run a build (the budget's Apply)
    saliency_source: Any = None  # the Saliency tab's model dropdown (the Train tab adds runs to it)


def profile_choices(available_only: bool = False) -> list[tuple[str, str]]:
    from mscsa_lab.presets import list_profiles

    return [(p.title + ("" if p.available else " (not available yet)"), p.name)
            for p in list_profiles() if p.available or not available_only]


def show_frame(table: Any, digits: int = 3):
    """A result table as the page shows it: numbers by the one rule."""
    from mscsa_lab.io.numbers import readable_frame

    if table is None:
        return None
    frame = getattr(table, "frame", table)
    return readable_frame(frame, digits)
