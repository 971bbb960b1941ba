"""What an idle app gives back: the models its store kept, once no request has run for ``cache_idle_s``;
a request that begins in time keeps them."""
import time

from torch import nn

from webapp.context import AppContext


def _context(tmp_path, idle_s: float) -> AppContext:
    return AppContext(runs_dir=tmp_path / "runs", outputs_dir=tmp_path / "out", cache_idle_s=idle_s)


def test_an_idle_app_lets_its_cached_models_go(tmp_path):
    context = _context(tmp_path, 0.3)
    context.begin()
    context.store.get("model", lambda: nn.Linear(64, 64))
    context.end()
    assert len(context.store.cache) == 1  # kept for the next request
    deadline = time.monotonic() + 10
    while len(context.store.cache) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(context.store.cache) == 0


def test_a_request_in_time_keeps_them_and_zero_keeps_them_always(tmp_path):
    busy = _context(tmp_path, 0.5)
    busy.begin()
    busy.store.get("model", lambda: nn.Linear(8, 8))
    busy.end()
    time.sleep(0.2)
    busy.begin()  # the next request comes before the store was let go
    time.sleep(0.6)
    assert len(busy.store.cache) == 1
    busy.end()

    keeping = _context(tmp_path, 0)
    keeping.begin()
    keeping.store.get("model", lambda: nn.Linear(8, 8))
    keeping.end()
    time.sleep(0.5)
    assert len(keeping.store.cache) == 1


def test_an_upload_the_server_removed_gets_a_message_that_says_upload_it_again(tmp_path):
    import gradio as gr
    import pytest

    from webapp.actions import tab_action

    uploads = tmp_path / "uploads"
    (uploads / "abc").mkdir(parents=True)
    kept = uploads / "abc" / "cat.png"
    kept.write_bytes(b"x")
    context = AppContext(runs_dir=tmp_path / "runs", outputs_dir=tmp_path / "out", uploads_dir=uploads)
    handler = tab_action(context, "Saliency", lambda image, names: f"read {image}")
    assert handler(str(kept), ["a"]) == f"read {kept}"
    assert handler(str(tmp_path / "elsewhere.png"), ["a"]).startswith("read")  # not an upload: the action decides
    with pytest.raises(gr.Error, match="uploaded file 'star.png' is no longer on the server.*upload it again"):
        handler(str(uploads / "def" / "star.png"), ["a"])
    with pytest.raises(gr.Error, match="no longer on the server"):
        handler([str(kept), str(uploads / "gone.jpg")], ["a"])  # a list of files (a folder upload)
