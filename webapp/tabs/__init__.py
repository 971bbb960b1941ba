"""One module per tab of the app, each a ``render(context, shared)`` that lays out the tab's components and
wires them to ``mscsa_lab.workflows`` actions through ``webapp.actions``; ``shared`` holds what tabs pass
to each other (the Build tab's model, the pinned configurations, the Saliency tab's model choice)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Shared", "profile_choices", "show_frame", "TableView", "result_frame"]


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


def show_frame(table: Any, wide: bool = False, digits: int = 3):
    """A result table as the page shows it: its compact columns (every column with ``wide``), numbers by the
    one rule, sub-components indented under their part. A plain DataFrame is shown whole."""
    from mscsa_lab.io.numbers import readable_frame
    from mscsa_lab.io.terminal import compact_columns

    if table is None:
        return None
    frame = getattr(table, "frame", table)
    if hasattr(table, "frame") and not wide:
        frame = frame[compact_columns(table)]
    shown = readable_frame(frame, digits)
    levels = getattr(table, "frame", frame).get("Level")
    if levels is not None and "Component" in shown.columns:
        shown["Component"] = ["\u2003" * int(level) + str(name) for level, name in zip(levels, shown["Component"])]
    if not wide and "Level" in shown.columns and "Component" in shown.columns:
        shown = shown.drop(columns=[c for c in ("Level", "Group") if c in shown.columns])
    return shown


def result_frame(label: str, elem_id: str, **options: Any):
    """A table for results: empty until an action fills it, and then without made-up "1 2 3" headers."""
    import gradio as gr

    return gr.Dataframe(label=label, elem_id=elem_id, wrap=True, headers=[""], col_count=(1, "dynamic"),
                        row_count=(0, "dynamic"), **options)


class TableView:
    """A result table with an "All columns" switch: the page shows the compact columns first, every column on
    demand, from the table the last action kept (``state``). Its action returns (shown frame, table)."""

    def __init__(self, label: str, elem_id: str) -> None:
        import gradio as gr

        self.wide = gr.Checkbox(False, label="All columns", elem_id=f"{elem_id}-wide", container=False)
        self.frame = result_frame(label, elem_id)
        self.state = gr.State(None)
        self.wide.change(lambda table, wide: show_frame(table, bool(wide)), [self.state, self.wide], [self.frame],
                         queue=False)

    @property
    def outputs(self) -> list:
        return [self.frame, self.state]

    def follow(self, event: Any) -> None:
        """After ``event`` succeeds, show its table as the switch says (the action shows the compact view)."""
        event.success(lambda table, wide: show_frame(table, bool(wide)), [self.state, self.wide], [self.frame],
                      queue=False)
