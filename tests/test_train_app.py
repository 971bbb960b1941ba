"""The Train tab's surfaces besides a run itself: the augmentation fields, run names, the tokens note, and
the curves of saved runs, drawn from their history.csv files (library and app API, across a reload)."""
import os
from pathlib import Path

import pytest

from mscsa_lab.io.curves import CurvesError, plot_run_curves, read_history
from mscsa_lab.models.config import ConfigError
from mscsa_lab.train.outputs import history_text
from webapp.context import AppContext
from webapp.tabs.train import augmentation_fields, curve_runs, run_curves, run_out, tokens_note


def write_run_history(folder: Path, steps: int, val_every: int, start_loss: float, distilled: bool = False,
                      unfinished: bool = False) -> Path:
    """A run folder with the history.csv the engine writes (its own writer), one row per step."""
    rows = []
    for step in range(1, steps + 1):
        row = {"step": step, "epoch": 1 + (step - 1) // val_every, "train_loss": start_loss / step,
               "train_top1": min(100.0, 10.0 * step), "lr": 1e-3, "images_per_s": 50.0, "elapsed_s": step * 0.5}
        if step % val_every == 0:
            key, loss = ("val_agreement", "val_kl") if distilled else ("val_top1", "val_loss")
            row.update({key: min(100.0, 8.0 * step), loss: start_loss / (step + 1)})
        rows.append(row)
    target = folder / "last" if unfinished else folder
    target.mkdir(parents=True, exist_ok=True)
    (target / "history.csv").write_text(history_text(rows))
    return folder


def test_augmentation_fields_run_names_and_the_tokens_note(tmp_path):
    assert augmentation_fields("0.3", "1", "", "", 0.25) == {"scale": (0.3, 1.0), "hflip": 0.25}
    assert augmentation_fields("", "", "0.75", "1.33", None) == {"ratio": (0.75, 1.33)}
    with pytest.raises(ConfigError, match="crop scale: give both the lowest and the highest value"):
        augmentation_fields("0.3", "", "", "", 0.5)
    with pytest.raises(ConfigError, match="aspect ratio max"):
        augmentation_fields("", "", "0.5", "wide", 0.5)

    context = AppContext(runs_dir=tmp_path / "runs")
    context.runs_dir.mkdir()
    name, out = run_out(context, "", default="explain-resnet50")
    assert name.startswith("explain-resnet50-") and out.parent == context.runs_dir
    (context.runs_dir / "done").mkdir()
    (context.runs_dir / "done" / "model.json").write_text("{}")
    with pytest.raises(ConfigError, match="a run named 'done' exists .*tick 'Resume'"):
        run_out(context, "done")
    (tmp_path / "elsewhere").mkdir()
    (context.runs_dir / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ConfigError, match="is a link out of the runs folder"):
        run_out(context, "link")
    with pytest.raises(ConfigError, match="use letters, digits"):
        run_out(context, "../x")

    note = tokens_note(dict(backbone="resnet18", img_size=448))
    assert note == "Tokens: at 448x448 MSCSA's keys and values have X0 196 (14x14), X1 49 (7x7), X2 25 (5x5) " \
                   "tokens per scale."
    assert "at 224x224" in tokens_note(dict(backbone="resnet10t"))  # the backbone's own size


def test_curves_of_two_runs_are_drawn_from_their_history_files(tmp_path):
    labelled = read_history(write_run_history(tmp_path / "labelled", 30, 10, 2.0))
    distilled = read_history(write_run_history(tmp_path / "distilled", 20, 5, 1.0, distilled=True, unfinished=True))
    assert list(labelled["step"]) == list(range(1, 31)) and labelled["val_top1"].notna().sum() == 3
    figure = plot_run_curves({"labelled": labelled, "distilled": distilled})
    loss_axis, accuracy_axis = figure.axes
    lines = {line.get_label(): line for line in loss_axis.lines + accuracy_axis.lines}
    assert set(lines) == {"labelled train", "labelled held-out", "distilled train", "distilled held-out KL",
                          "distilled held-out agreement"}
    assert list(lines["labelled held-out"].get_xdata()) == [10, 20, 30]  # from the labelled run's val_top1 rows
    assert list(lines["distilled held-out agreement"].get_ydata()) == [40.0, 80.0, 100.0, 100.0]
    assert lines["labelled train"].get_color() != lines["distilled train"].get_color()
    assert "labelled, distilled" in figure._suptitle.get_text()

    (tmp_path / "empty").mkdir()
    with pytest.raises(CurvesError, match="has no history.csv yet"):
        read_history(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "history.csv").write_text("epoch,loss\n1,2\n")
    with pytest.raises(CurvesError, match="has no 'step' column"):
        read_history(tmp_path / "bad")
    (tmp_path / "pipe").mkdir()
    os.mkfifo(tmp_path / "pipe" / "history.csv")
    with pytest.raises(CurvesError, match="no history.csv yet|not a regular file"):
        read_history(tmp_path / "pipe")
    with pytest.raises(CurvesError, match="choose one or more runs"):
        plot_run_curves({})


def test_the_tab_lists_runs_with_a_history_and_refuses_names_outside(tmp_path):
    context = AppContext(runs_dir=tmp_path / "runs")
    write_run_history(context.runs_dir / "a", 5, 5, 1.0)
    write_run_history(context.runs_dir / "b", 5, 5, 1.0, unfinished=True)
    (context.runs_dir / "c").mkdir()
    write_run_history(tmp_path / "outside", 5, 5, 1.0)
    (context.runs_dir / "link").symlink_to(tmp_path / "outside")
    assert sorted(curve_runs(context)) == ["a", "b"]
    summary, figure = run_curves(context, ["a", "b"])
    assert "**a**: 5 logged steps, last at step 5" in summary and figure is not None
    for bad in (["link"], ["../outside"], []):
        with pytest.raises(ConfigError):
            run_curves(context, bad)


@pytest.mark.slow
@pytest.mark.integration
def test_curves_through_the_app_survive_a_reload(app_context, app_url):
    from gradio_client import Client

    write_run_history(app_context.runs_dir / "first", 12, 4, 2.0)
    write_run_history(app_context.runs_dir / "second", 8, 4, 1.0, distilled=True)
    status, plot = Client(app_url, verbose=False).predict(["first", "second"], api_name="/run_curves")
    assert "**first**: 12 logged steps, last at step 12" in status and "**second**: 8 logged steps" in status
    assert plot is not None
    again = Client(app_url, verbose=False).predict(["second", "first"], api_name="/run_curves")  # a new page
    assert "**second**: 8 logged steps" in again[0] and again[1] is not None
    with pytest.raises(Exception, match="no run '../first'|use letters|no run"):
        Client(app_url, verbose=False).predict(["../first"], api_name="/run_curves")
