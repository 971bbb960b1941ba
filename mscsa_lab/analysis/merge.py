"""Tables of the same model side by side, row for row: memory beside FLOPs (the Profile table), bytes moved
beside time (the latency table). Rows are matched by component name, level and occurrence, since every
table lists ``components.model_components`` in the same order."""
from __future__ import annotations

import pandas as pd

__all__ = ["merge_with_profile", "merge_with_latency"]

_KEY = ("Component", "Level")


def _with_occurrence(frame: pd.DataFrame) -> pd.DataFrame:
    """Component names repeat ("Q projection" in every CSA), so rows are matched by name, level and
    how many rows of that name came before: both frames list the components in model_components' order."""
    frame = frame.copy()
    frame["_occurrence"] = frame.groupby(list(_KEY)).cumcount()
    return frame


def _join(left: pd.DataFrame, right: pd.DataFrame) -> pd.DataFrame:
    for frame, label in ((left, "left"), (right, "right")):
        missing = [c for c in _KEY if c not in frame.columns]
        if missing:
            raise ValueError(f"the {label} frame has no {missing} column(s): pass the frames of the tables")
    extra = [c for c in right.columns if c not in left.columns]
    joined = _with_occurrence(left).merge(_with_occurrence(right)[[*_KEY, "_occurrence", *extra]],
                                          on=[*_KEY, "_occurrence"], how="left", validate="one_to_one")
    return joined.drop(columns="_occurrence")


def merge_with_profile(profile_frame: pd.DataFrame, memory_frame: pd.DataFrame) -> pd.DataFrame:
    """The profiler's frame (``ProfileReport.to_frame``) with the memory columns beside FLOPs, row for
    row; the profiler's rows and order are kept."""
    return _join(profile_frame, memory_frame)


def merge_with_latency(latency_frame: pd.DataFrame, traffic_frame: pd.DataFrame) -> pd.DataFrame:
    """The latency table's frame (``LatencyReport.frame``) with bytes moved and arithmetic intensity
    beside the time of each component, and the bandwidth the eager traffic implies (eager bytes / time).
    Both must come from the same model, input size and batch; the latency rows and order are kept (its
    glue row gets no traffic figures)."""
    joined = _join(latency_frame, traffic_frame)
    if "Time (ms)" in joined.columns and "Eager bytes moved MiB" in joined.columns:
        seconds = joined["Time (ms)"] / 1000.0
        joined["Eager bandwidth (GiB/s)"] = (joined["Eager bytes moved MiB"] / 1024.0 / seconds).where(seconds > 0)
    return joined
