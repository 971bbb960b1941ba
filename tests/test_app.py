"""Each tab's functions through gradio_client against the launched app. Every route returns the tab's status
line first, then its results."""
from pathlib import Path

import json

import pandas as pd
import pytest
from gradio_client import Client, handle_file

from mscsa_lab.io.export import read_table
from mscsa_lab.workflows.limits import ResourceLimits
from webapp.forms import build_spec

pytestmark = [pytest.mark.slow, pytest.mark.integration]

SAMPLE = Path(__file__).resolve().parent.parent / "assets" / "samples" / "star_large.png"


# This module's app times FPS for 6 s per model in a comparison (the app's --max-fps-seconds): the tests check the
# figures and their intervals, not their precision, and the default 30 s per model took most of this module's time.
APP_LIMITS = ResourceLimits(max_fps_seconds=6)


@pytest.fixture(scope="module")
def client(app_url):
    return Client(app_url, verbose=False)


BUILD_DEFAULTS = dict(profile="pvt_v2_b1", backbone="", task="classification", height=224, width=224, depth="",
                      num_heads="", key_dim="", mlp_ratio="", squeeze="", use_pcp=True, use_intra_ffn=True,
                      use_msp=True, downsample="dwconv", num_classes="1000", pretrained=False, weights=None)


def call_build(client, **changes):
    """The Build route's results after its status line: (summary, stages, scales, params, diagram, files)."""
    args = {**BUILD_DEFAULTS, **changes}
    status, *results = client.predict(*args.values(), api_name="/build")
    assert status.startswith("Built ")
    return results


def test_build_tab_shows_architecture(client):
    text, stages, scales, params, diagram, files = call_build(client)
    assert "pvt_v2_b1 + MSCSA" in text and "640 channels" in text and "74 key/value tokens" in text
    assert "19.7 M parameters" in text  # readable, not 19656000
    assert [row[3] for row in stages["data"]] == ["40", "80", "200", "320"]
    assert [row[2] for row in scales["data"]] == ["49", "16", "9"]
    assert any(str(cell).endswith(" M") for row in params["data"] for cell in row)  # 13.5 M, not 13496000
    svg = next(Path(f) for f in files if f.endswith(".svg"))
    assert svg.name.startswith("diagram_pvt_v2_b1_cls_224x224_")
    text_svg = svg.read_text()
    assert "640 ch" in text_svg and "7x7 = 49 tokens" in text_svg and "MSCSA block 1 of 1" in text_svg


def test_build_tab_custom_backbone_and_bad_input(client):
    text, stages = call_build(client, backbone="resnet18", squeeze="1/2", height=197, width=263)[:2]
    assert "resnet18 (squeeze 1/2) + MSCSA" in text and [row[3] for row in stages["data"]] == ["32", "64", "128", "256"]
    with pytest.raises(Exception, match="depth=99 is out of range"):
        call_build(client, depth="99")
    with pytest.raises(Exception, match="num_heads must be a number, got 'eight'"):
        call_build(client, num_heads="eight")
    with pytest.raises(Exception, match="unknown timm backbone 'not_a_net'"):
        call_build(client, backbone="not_a_net")
    with pytest.raises(Exception, match="input height=5"):
        call_build(client, height=5)
    assert "pvt_v2_b1" in call_build(client)[0]  # the app is still alive


def test_profile_tab_uses_the_built_model_and_offers_every_format(client):
    call_build(client, profile="pvt_v2_b0")
    status, title, table, plot, files, notes = client.predict("mac", 1, False, 1, False, api_name="/profile")
    assert status.startswith("Profiled pvt_v2_b0 + MSCSA in ")
    assert "pvt_v2_b0 + MSCSA (classification, 224x224)" in title
    components = [row[0].strip("\u2003") for row in table["data"]]  # sub-components are indented
    assert table["data"][0][0] == "backbone" and any(row[0].startswith("\u2003") for row in table["data"])
    assert "CSA 1 (block 1)" in components and "attention matmuls" in components
    assert sorted(Path(f).name.split(".", 1)[1] for f in files) == ["csv", "csv.meta.json", "json", "md", "png", "svg",
                                                                      "tex"]
    assert all(Path(f).name.startswith("profile_pvt_v2_b0_cls_224x224_") for f in files)
    csv = next(f for f in files if f.endswith(".csv"))
    sidecar = next(f for f in files if f.endswith(".csv.meta.json"))
    assert json.loads(Path(sidecar).read_text())["metadata"]["model"] == "pvt_v2_b0 + MSCSA"
    plain = pd.read_csv(csv)  # no comment lines: plain pandas reads the table as it is
    assert "CSA 1 (block 1)" in plain["Component"].tolist() and plain["FLOPs (G)"].dtype.kind == "f"
    assert "Operators fvcore does not count" in notes


def test_profile_tab_memory_beside_flops(client):
    call_build(client, backbone="resnet18", height=64, width=64)
    status, title, table, plot, files, notes = client.predict("mac", 0, True, 4, True, api_name="/profile")
    assert "memory at batch 4 (training step, AdamW)" in title
    row = dict(zip(table["headers"], next(r for r in table["data"] if r[0] == "backbone")))
    assert float(row["Activations MiB"]) > 0 and float(row["Training MiB"]) > 0  # the compact view keeps memory
    every = pd.read_csv(next(f for f in files if f.endswith(".csv")))  # the files hold every column
    backbone = every[every["Component"] == "backbone"].iloc[0]
    assert backbone["Training MiB"] > backbone["Param MiB"] > 0 and "Optimizer state MiB" in every.columns
    assert "peak, training step" in notes
    with pytest.raises(Exception, match="memory batch must be a whole number from 1 to 256"):
        client.predict("mac", 0, True, 100000, True, api_name="/profile")


def test_budget_helper(client):
    status, message, settings, candidates = client.predict("pvt_v2_b0", 10, 224, 224, "classification", api_name="/budget")
    assert status.startswith("Searched ")
    assert "chose squeeze ratio" in message and '"squeeze_ratio"' in settings
    chosen = json.loads(settings)
    profile, backbone, depth, heads, key_dim, mlp, squeeze, note = client.predict("pvt_v2_b0", settings,
                                                                                  api_name="/budget_apply")
    assert (profile, backbone, depth, heads) == ("pvt_v2_b0", "", str(chosen["depth"]), str(chosen["num_heads"]))
    from fractions import Fraction
    assert Fraction(squeeze) == Fraction(chosen["squeeze_ratio"]).limit_denominator(64) and "Applied" in note
    with pytest.raises(Exception, match="no settings to apply"):
        client.predict("pvt_v2_b0", "", api_name="/budget_apply")
    with pytest.raises(Exception, match=r"cap 0% is out of range: give a percentage"):
        client.predict("pvt_v2_b0", 0, 224, 224, "classification", api_name="/budget")


def test_benchmark_tab_on_the_cpu(client):
    status, note, table, plot, latency, latency_plot, files = client.predict(
        ["resnet18"], "cpu", "fp32", 1, False, 1, 2, 64, "resnet18", False, 5, api_name="/benchmark")
    assert status.startswith("Benchmarked 1 model(s) in ")
    assert "Throughput with and without MSCSA (classification, 64x64" in note and "batch 1" in note
    row = dict(zip(table["headers"], table["data"][0]))
    # rounds go on until the ratio's interval is tight or the cap is hit; an unstable row is said, not hidden
    if "not stable" in row["Check"]:
        assert "Warnings" in note
    else:
        assert "met the target" in note
    assert row["Model"] == "ResNet-18" and float(row["FPS"]) > 0 and float(row["+MSCSA fast FPS"]) > 0
    assert float(row["dFPS low (%)"]) <= float(row["dFPS (%)"]) <= float(row["dFPS high (%)"])
    latency_rows = {r[0].strip("\u2003"): dict(zip(latency["headers"], r)) for r in latency["data"]}
    assert "squeeze convs" in latency_rows and float(latency_rows["squeeze convs"]["Intensity (FLOPs/byte)"]) > 0
    names = {Path(f).name for f in files}
    assert any(n.startswith("fps_resnet18_cls_64x64_") and n.endswith(".csv") for n in names)
    assert any(n.startswith("fps_resnet18_cls_64x64_") and n.endswith("_latency.csv") for n in names)
    with pytest.raises(Exception, match="pick at least one backbone"):
        client.predict([], "cpu", "fp32", 1, False, 1, 1, 64, "", False, 5, api_name="/benchmark")
    # a timm name typed in, and the Build tab's own (custom) model
    call_build(client, backbone="resnet10t", depth="2", height=64, width=64)
    note, table = client.predict(["resnet18"], "cpu", "fp32", 1, False, 1, 2, 64, "", True, 1,  # rows only: 1 s each
                                 api_name="/benchmark")[1:3]
    assert [r[0] for r in table["data"]] == ["ResNet-18", "resnet10t (depth 2)"]


def test_saliency_tab_with_the_demo_model(client):
    status, grid, prediction, mass, heads, maps, faith_chart, faith_text, view = client.predict(
        handle_file(str(SAMPLE)), "gradcam", ["key", "value"], 0, 1, "top-1", "pad", "demo", None, True,
        api_name="/saliency")
    assert status.startswith("Rendered gradcam maps for demo in ")
    assert Path(grid).stat().st_size > 10_000 and "Prediction: star" in prediction
    assert Path(maps).suffix == ".npz"
    assert "deletion" in faith_text and "random map (baseline)" in faith_text and faith_chart is not None
    status, grid, prediction, mass, heads, maps, *_ = client.predict(
        handle_file(str(SAMPLE)), "attention", ["key"], 0, 2, "top-1", "crop", "demo", None, False,
        api_name="/saliency")
    assert heads is not None and mass is not None


def test_saliency_tab_bad_inputs(client, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    with pytest.raises(Exception, match="corrupt or truncated|not an image"):
        client.predict(handle_file(str(broken)), "gradcam", ["key"], 0, 1, "top-1", "pad", "demo", None,
                       api_name="/saliency")
    with pytest.raises(Exception, match="block=4 does not exist"):
        client.predict(handle_file(str(SAMPLE)), "norm", ["key"], 4, 1, "top-1", "pad", "demo", None,
                       api_name="/saliency")
    with pytest.raises(Exception, match="target class 9 does not exist"):
        client.predict(handle_file(str(SAMPLE)), "gradcam", ["key"], 0, 1, "9", "pad", "demo", None,
                       api_name="/saliency")
    mismatched = tmp_path / "other.safetensors"
    from mscsa_lab import create_mscsa_model
    from mscsa_lab.io.checkpoints import save_checkpoint

    save_checkpoint(create_mscsa_model(backbone="resnet18", num_classes=3), mismatched)
    call_build(client, profile="pvt_v2_b0")
    with pytest.raises(Exception, match="does not fit this model"):
        client.predict(handle_file(str(SAMPLE)), "norm", ["key"], 0, 1, "top-1", "pad", "build",
                       handle_file(str(mismatched)), api_name="/saliency")


def test_compare_tab_downloads(client):
    status, title, table, plot, files, notes = client.predict(["pvt_v2_b0"], 224, 224, "classification", "mac", False,
                                                              False, api_name="/compare")
    assert status.startswith("Compared 1 model(s) in ")
    assert "Backbones with and without MSCSA (classification, 224x224)" in title
    row = dict(zip(table["headers"], table["data"][0]))
    assert row["Model"] == "PVTv2-B0" and row["Paper FLOPs (G)"] == "0.570"
    assert any(Path(f).name.startswith("compare_pvt_v2_b0_cls_224x224_") for f in files)
    for suffix in (".csv", ".md", ".tex", ".json"):
        path = next(f for f in files if f.endswith(suffix))
        assert read_table(path).frame["Model"].tolist() == ["PVTv2-B0"]


def test_pinned_configurations_side_by_side_with_fps(client):
    """Two configurations of one backbone pinned in Build, compared side by side with measured FPS."""
    for depth in ("1", "2"):
        call_build(client, backbone="resnet10t", depth=depth, height=64, width=64)
        note, status = client.predict(api_name="/pin")
    # depth 1 is resnet10t's default, so its label names no change
    assert "`resnet10t` (64x64" in note and "`resnet10t (depth 2)`" in note and status.startswith("Pinned ")
    status, title, table, plot, files, notes = client.predict([], 64, 64, "classification", "mac", True, True,
                                                              api_name="/compare")
    rows = {r[0]: dict(zip(table["headers"], r)) for r in table["data"]}
    assert list(rows) == ["resnet10t", "resnet10t (depth 2)"]
    assert float(rows["resnet10t (depth 2)"]["+MSCSA FLOPs (G)"]) > float(rows["resnet10t"]["+MSCSA FLOPs (G)"])
    for row in rows.values():
        assert float(row["FPS"]) > 0 and float(row["dFPS low (%)"]) <= float(row["dFPS high (%)"])
        assert float(row["FLOPs-proportional dFPS (%)"]) < 0
    assert "at most 6 s per model" in notes  # the server's time per model (--max-fps-seconds)
    with pytest.raises(Exception, match="is pinned already"):
        client.predict(api_name="/pin")


def test_listens_on_localhost_by_default(run_app_main):
    seen = run_app_main([])
    assert seen["server_name"] == "127.0.0.1" and seen["share"] is False and seen["max_file_size"] == "512mb"
    with pytest.warns(UserWarning, match="listening beyond this machine"):
        seen = run_app_main(["--host", "0.0.0.0"])
    assert seen["server_name"] == "0.0.0.0"


def test_forms_reject_fractions_and_blank_numbers(app_context):
    with pytest.raises(ValueError, match="depth must be a whole number"):
        build_spec(dict(profile="pvt_v2_b1", depth="1.5"))
    from webapp.tabs.benchmark import benchmark_request

    with pytest.raises(ValueError, match="batch is empty"):
        benchmark_request(app_context, ["resnet18"], "cpu", "fp32", None, False, 1, 1, 64, None, False, 5, None)


def test_output_folders_older_than_an_hour_are_removed(app_context):
    import os
    import time

    from webapp.context import OUTPUT_MAX_AGE_S

    old = app_context.output_dir("old")
    stale = time.time() - 2 * OUTPUT_MAX_AGE_S
    os.utime(old, (stale, stale))
    fresh = app_context.output_dir("new")
    assert fresh.is_dir() and not old.exists()


def test_ablation_study_from_the_train_tab(client):
    """The Train tab's ablation section: Table 5's four variants, one seed, a few steps; the table,
    its files (plain CSV with a metadata sidecar) and the paper's FLOPs column come back."""
    status, table, files = client.predict("demo", "5", "0", "synthetic", 2, 4, 64, False, api_name="/ablate")
    assert "finished" in status and "not a finding" in status
    frame = pd.DataFrame(table["data"], columns=table["headers"])
    assert list(frame["Variant"]) == ["dwconv", "avgpool", "cascade", "single"] and (frame["n"] == "1").all()
    assert "FPS ratio" not in frame.columns and "Paper FLOPs (M)" not in frame.columns  # demo is not TopFormer-T
    csv = next(Path(f) for f in files if str(f).endswith(".csv"))
    assert csv.name.startswith("ablation-table5_demo_")
    assert list(pd.read_csv(csv)["Variant"]) == list(frame["Variant"])
    sidecar = next(Path(f) for f in files if str(f).endswith(".csv.meta.json"))
    assert json.loads(sidecar.read_text())["metadata"]["seeds"] == [0]


def test_ablation_study_bad_inputs(client):
    for seeds, steps, message in (("0 zero", 2, "seeds must be whole numbers"), ("", 2, "seeds is empty"),
                                  ("0", 0, "max steps must be a whole number from 1")):
        with pytest.raises(Exception, match=message):
            client.predict("demo", "4", seeds, "synthetic", steps, 4, 64, False, api_name="/ablate")
    with pytest.raises(Exception, match="neither a Table 7 profile nor a timm model"):
        client.predict("no_such_backbone_xyz", "4", "0", "synthetic", 2, 4, 64, False, api_name="/ablate")
