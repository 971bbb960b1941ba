"""The app, driven through gradio_client against a launched server (no browser here)."""
import socket

import pytest
from gradio_client import Client

import app as mscsa_app


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def client():
    demo = mscsa_app.make_app()
    demo.queue().launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        yield Client(demo.local_url, verbose=False)
    finally:
        demo.close()


BUILD_DEFAULTS = dict(profile="pvt_v2_b1", backbone="", task="classification", height=224, width=224, depth=None,
                      num_heads=None, key_dim=None, mlp_ratio=None, squeeze="", use_pcp=True, use_intra_ffn=True,
                      use_msp=True, downsample="dwconv")


def call_build(client, **changes):
    args = {**BUILD_DEFAULTS, **changes}
    return client.predict(*args.values(), api_name="/build")


def test_build_tab_shows_architecture(client):
    text, stages, scales, params = call_build(client)
    assert "pvt_v2_b1 + MSCSA" in text and "640 channels" in text and "74 key/value tokens" in text
    assert [row[3] for row in stages["data"]] == [40, 80, 200, 320]
    assert [row[2] for row in scales["data"]] == [49, 16, 9]


def test_build_tab_custom_backbone_and_bad_input(client):
    text, stages, _, _ = call_build(client, backbone="resnet18", squeeze="1/2", height=197, width=263)
    assert "resnet18 + MSCSA" in text and [row[3] for row in stages["data"]] == [32, 64, 128, 256]
    with pytest.raises(Exception, match="depth=99 is out of range"):
        call_build(client, depth=99)
    with pytest.raises(Exception, match="unknown timm backbone 'not_a_net'"):
        call_build(client, backbone="not_a_net")
    # The app is still alive after the errors.
    assert "pvt_v2_b1" in call_build(client)[0]


def test_listens_on_localhost_by_default(monkeypatch):
    seen = {}

    class FakeBlocks:
        def queue(self, **kwargs):
            return self

        def launch(self, **kwargs):
            seen.update(kwargs)

    monkeypatch.setattr(mscsa_app, "make_app", lambda: FakeBlocks())
    mscsa_app.main([])
    assert seen["server_name"] == "127.0.0.1" and seen["share"] is False
    with pytest.warns(UserWarning, match="listening beyond this machine"):
        mscsa_app.main(["--host", "0.0.0.0"])
    assert seen["server_name"] == "0.0.0.0"
