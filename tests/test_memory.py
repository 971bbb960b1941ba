"""Per-component memory (parameters, outputs, activations, saved for backward) and memory traffic."""
import math

import pandas as pd
import pytest
import torch

from mscsa_lab import create_mscsa_model
from mscsa_lab.analysis.cost import meta_model
from mscsa_lab.errors import UserError
from mscsa_lab.analysis.memory import MIB, memory_profile
from mscsa_lab.analysis.merge import merge_with_latency, merge_with_profile
from mscsa_lab.analysis.traffic import traffic_profile
from mscsa_lab.analysis.profiler import profile_model
from mscsa_lab.bench.latency import component_latency
from mscsa_lab.bench.settings import BenchmarkSettings

SIZE = (64, 64)  # ResNet-18's stride-32 map is 2x2 here: MSCSA grid 2x2, key scales 2x2, 1x1, 1x1


@pytest.fixture(scope="module")
def model():
    return create_mscsa_model("resnet18")


@pytest.fixture(scope="module")
def profiler_report(model):
    return profile_model(model, SIZE, batch=2)


@pytest.fixture(scope="module")
def inference_1(model):
    return memory_profile(model, SIZE, batch_size=1)


@pytest.fixture(scope="module")
def inference_2(model):
    return memory_profile(model, SIZE, batch_size=2)


@pytest.fixture(scope="module")
def training_2(model):
    return memory_profile(model, SIZE, batch_size=2, training=True, optimizer="adamw")


@pytest.fixture(scope="module")
def traffic_2(model, profiler_report):
    return traffic_profile(model, SIZE, batch_size=2, flops_report=profiler_report)


def test_rows_line_up_with_the_profiler(model, profiler_report, inference_1):
    assert [(r.name, r.level, r.group) for r in inference_1.rows] == [
        (r.name, r.level, r.group) for r in profiler_report.rows
    ]
    assert [r.params for r in inference_1.rows] == [r.params for r in profiler_report.rows]
    total = sum(p.numel() for p in model.parameters())
    assert sum(r.params for r in inference_1.rows if r.level == 0) == total == inference_1.totals.params
    assert inference_1.totals.param_bytes == 4 * total
    frame = inference_1.to_frame()
    assert frame["Component"].tolist() == [r.name for r in profiler_report.rows] + ["total"]
    assert "Saved for backward MiB" not in frame.columns  # an inference profile


def test_outputs_by_hand_and_exactly_proportional_to_batch(inference_1, inference_2):
    # Q projection: ConvBN(C -> n*d) on the 2x2 MSCSA map, C = round(5/8 * (64+128+256+512)) = 600.
    query_output = 2 * (8 * 24) * 2 * 2 * 4  # batch 2, float32
    assert inference_2.row("Q projection").output_bytes == query_output
    assert inference_2.row("classification head").output_bytes == 2 * 1000 * 4
    for one, two in zip(inference_1.rows, inference_2.rows):
        if math.isnan(one.output_bytes):
            assert one.name in ("stem and other", "pooling", "attention matmuls")  # the residual rows
            continue
        assert two.output_bytes == 2 * one.output_bytes > 0, one.name
        assert two.activation_bytes == 2 * one.activation_bytes, one.name
    assert inference_2.totals.activation_bytes == 2 * inference_1.totals.activation_bytes


def test_activations_add_up_over_the_partition(inference_2):
    rows = inference_2.rows
    level0 = sum(r.activation_bytes for r in rows if r.level == 0)
    # Leaves outside every named part: the stage-map taps (nn.Identity: their outputs are the four
    # backbone maps) and the block's DropPath, called on each of its 4 residual branches (2x600x2x2).
    stage_maps = inference_2.row("backbone").output_bytes
    drop_path = 4 * (2 * 600 * 2 * 2 * 4)
    assert level0 + stage_maps + drop_path == inference_2.totals.activation_bytes
    stem = inference_2.row("stem and other").activation_bytes
    # conv1 (64 ch, 32x32), bn1, ReLU and the 3x3 max-pool (16x16), batch 2, float32.
    assert stem == 2 * 64 * 4 * (3 * 32 * 32 + 16 * 16)


def test_saved_for_backward_matches_the_autograd_graph(model, training_2, inference_2):
    """The pack hook's total equals an independent count: every tensor reachable from the output's
    grad_fn graph through its _saved_* attributes, each storage once, parameters and buffers excluded."""
    torch.manual_seed(0)
    working = __import__("copy").deepcopy(model).train()
    output = working(torch.randn(2, 3, *SIZE))
    excluded = {t.untyped_storage()._cdata for t in (*working.parameters(), *working.buffers())}
    storages, seen, pending = {}, set(), [output.grad_fn]
    while pending:
        node = pending.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for attribute in dir(node):
            if attribute.startswith("_saved_"):
                value = getattr(node, attribute)
                for tensor in value if isinstance(value, (tuple, list)) else [value]:
                    if isinstance(tensor, torch.Tensor) and tensor.untyped_storage()._cdata not in excluded:
                        storages[tensor.untyped_storage()._cdata] = tensor.untyped_storage().nbytes()
        pending += [child for child, _ in node.next_functions]
    totals = training_2.totals
    assert totals.saved_bytes == sum(storages.values()) > 0
    # Training keeps far more than inference ever holds at once, and its peak is higher.
    assert totals.saved_bytes > 2 * inference_2.totals.largest_call_bytes
    assert totals.peak_training_bytes > inference_2.totals.peak_inference_bytes + totals.saved_bytes
    assert totals.gradient_bytes == totals.param_bytes and totals.optimizer_state_bytes == 2 * totals.param_bytes


def test_saved_bytes_partition_each_csa(training_2):
    rows = training_2.rows
    start = next(i for i, r in enumerate(rows) if r.name == "CSA 1 (block 1)")
    parts = []
    for row in rows[start + 1:]:
        if row.level == 0:
            break
        if row.level == 1:
            parts.append(row)
    assert all(r.saved_bytes >= 0 for r in parts)
    assert sum(r.saved_bytes for r in parts) == rows[start].saved_bytes > 0
    assert next(r for r in parts if r.name == "attention matmuls").saved_bytes > 0  # SDPA keeps its output
    level0 = sum(r.saved_bytes for r in rows if r.level == 0)
    assert level0 == training_2.totals.saved_bytes  # nothing is saved outside the named parts


def test_optimizer_state_and_frozen_parameters(model):
    frozen = __import__("copy").deepcopy(model)
    for parameter in frozen.backbone.parameters():
        parameter.requires_grad_(False)
    profile = memory_profile(frozen, SIZE, batch_size=2, training=True, optimizer="sgd")
    backbone = profile.row("backbone")
    assert backbone.trainable_param_bytes == 0 < backbone.param_bytes
    trainable = sum(4 * p.numel() for p in frozen.parameters() if p.requires_grad)
    assert profile.totals.gradient_bytes == profile.totals.optimizer_state_bytes == trainable
    frame = profile.to_frame().set_index("Component")
    assert frame.loc["backbone", "Gradients MiB"] == 0 and frame.loc["FFN (block 1)", "Gradients MiB"] > 0
    with pytest.raises(ValueError, match="optimizer"):
        memory_profile(model, SIZE, optimizer="lion")


def test_bfloat16_halves_parameters_and_outputs(model, inference_1):
    half = memory_profile(model, SIZE, batch_size=1, dtype=torch.bfloat16)
    assert half.totals.param_bytes * 2 == inference_1.totals.param_bytes
    assert half.totals.activation_bytes * 2 == inference_1.totals.activation_bytes
    for full, halved in zip(inference_1.rows, half.rows):
        assert halved.param_bytes * 2 == full.param_bytes and halved.params == full.params
    assert half.metadata["dtype"] == "bfloat16"
    assert next(model.parameters()).dtype == torch.float32  # the caller's model is untouched


def test_meta_model_gives_the_same_bytes(training_2):
    """ResNet-18 + MSCSA runs the same kernels on meta and CPU (the CSA's SDPA takes the math path on
    both: its values are wider than its keys), so even the saved bytes agree exactly."""
    profile = memory_profile(meta_model("resnet18"), SIZE, batch_size=2, training=True)
    assert profile.computed_on == "meta"
    for on_cpu, on_meta in zip(training_2.rows, profile.rows):
        assert (on_meta.params, on_meta.activation_bytes, on_meta.saved_bytes) == (
            on_cpu.params, on_cpu.activation_bytes, on_cpu.saved_bytes), on_cpu.name
    assert profile.totals.peak_training_bytes == training_2.totals.peak_training_bytes


def test_cuda_is_never_touched_without_a_gpu(model, inference_1):
    totals = inference_1.to_table()
    assert inference_1.measured_on is None and math.isnan(inference_1.totals.measured_peak_inference_bytes)
    assert "Nothing measured" in totals.notes[-1]
    frame = inference_1.totals_frame().set_index("Quantity")
    assert math.isnan(frame.loc["peak, inference", "Measured MiB"])
    assert frame.loc["peak, inference", "Computed MiB"] * MIB == inference_1.totals.peak_inference_bytes
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA"):
            memory_profile(model, SIZE, device="cuda")


def test_arithmetic_intensity_by_hand(traffic_2):
    batch, channels, heads_dim, grid = 2, 600, 8 * 24, 2 * 2
    flops = batch * grid * channels * heads_dim + 2 * batch * heads_dim * grid  # 1x1 conv + BN (fvcore: 2/elem)
    moved = 4 * (batch * channels * grid + batch * heads_dim * grid + heads_dim * channels + 2 * heads_dim)
    row = next(r for r in traffic_2.rows if r.name == "Q projection")
    assert (row.flops, row.boundary_bytes) == (flops, moved)
    frame = traffic_2.to_frame()
    first = frame[frame["Component"] == "Q projection"].iloc[0]
    assert first["Intensity (FLOPs/byte)"] == pytest.approx(flops / moved, rel=1e-12)
    assert first["Bytes moved MiB"] * MIB == pytest.approx(moved)
    # Eager: the conv reads x and its weight and writes y; BN (eval) reads y, its weight, bias and
    # running statistics and writes its output: y goes through memory twice more than in one kernel.
    output = batch * heads_dim * grid * 4
    assert row.eager_bytes == moved - 2 * heads_dim * 4 + 2 * output + 4 * heads_dim * 4
    doubled = traffic_2.to_frame("2x")
    assert doubled["Intensity (FLOPs/byte)"].iloc[0] == pytest.approx(2 * frame["Intensity (FLOPs/byte)"].iloc[0])
    matmuls = frame[frame["Component"] == "attention matmuls"].iloc[0]
    assert matmuls["Eager bytes moved MiB"] > 0 and math.isnan(matmuls["Bytes moved MiB"])


def test_traffic_partitions_like_the_profiler(model, traffic_2, profiler_report):
    # FLOPs counted at another batch are scaled to this one (they are linear in the batch)
    traffic_1 = traffic_profile(model, SIZE, batch_size=1, flops_report=profiler_report)
    assert [2 * r.flops for r in traffic_1.rows] == pytest.approx([r.flops for r in traffic_2.rows], nan_ok=True)
    rows = traffic_2.rows
    residual = {"stem and other", "pooling", "attention matmuls"}
    assert [r.name for r in rows if math.isnan(r.boundary_bytes)] == [
        r.name for r in rows if r.name in residual]
    start = next(i for i, r in enumerate(rows) if r.name == "CSA 2 (block 1)")
    parts = [r for r in rows[start + 1:start + 9] if r.level == 1]
    assert len(parts) == 5 and all(r.eager_bytes > 0 for r in parts)
    assert sum(r.eager_bytes for r in parts) == rows[start].eager_bytes
    level0 = sum(r.eager_bytes for r in rows if r.level == 0)
    assert 0 < level0 <= traffic_2.total_eager_bytes
    # The whole model as one kernel: the image in, the logits out, every parameter once.
    image, logits = 2 * 3 * 64 * 64 * 4, 2 * 1000 * 4
    assert traffic_2.total_boundary_bytes == image + logits + 4 * sum(p.numel() for p in model.parameters())


def test_tables_write_csv_that_pandas_reads(tmp_path, training_2, traffic_2):
    for table, name in ((training_2.to_table(), "memory.csv"), (training_2.totals_table(), "totals.csv"),
                        (traffic_2.to_table(), "traffic.csv")):
        path = table.write(tmp_path / name)
        back = pd.read_csv(path)
        assert list(back.columns) == list(table.frame.columns)
        assert back["Component" if "Component" in back else "Quantity"].tolist() == (
            table.frame["Component" if "Component" in table.frame else "Quantity"].tolist())
        numeric = table.frame.select_dtypes("number").columns
        assert back[numeric].to_numpy() == pytest.approx(table.frame[numeric].to_numpy(), nan_ok=True)
    metadata = training_2.to_table().metadata
    assert metadata["batch"] == 2 and metadata["mode"] == "training" and metadata["input_size"] == "64x64"
    assert "MiB = 2**20 bytes" in training_2.to_table().notes[0]


def test_merges_beside_flops_and_latency(model, training_2, profiler_report, traffic_2):
    beside_flops = merge_with_profile(profiler_report.to_frame(), training_2.to_frame())
    assert len(beside_flops) == len(profiler_report.rows) + 1
    assert beside_flops["Saved for backward MiB"].tolist() == training_2.to_frame()["Saved for backward MiB"].tolist()
    assert "FLOPs (G)" in beside_flops and beside_flops["Params (M)"].notna().all()

    latency = component_latency(model, SIZE, BenchmarkSettings(device="cpu", batch=2, warmup=0, steps=1, repeats=1))
    merged = merge_with_latency(latency.frame, traffic_2.to_frame())
    assert merged["Component"].tolist() == latency.frame["Component"].tolist()
    traffic = traffic_2.to_frame()
    # The second CSA's Q projection gets the second CSA's figures (names repeat; order decides).
    second_q = merged[merged["Component"] == "Q projection"].iloc[1]
    assert second_q["Eager bytes moved MiB"] == traffic[traffic["Component"] == "Q projection"].iloc[1][
        "Eager bytes moved MiB"]
    assert math.isnan(merged.iloc[-1]["Eager bytes moved MiB"])  # the latency table's glue row
    stage = merged[merged["Component"] == "stage 1"].iloc[0]
    assert stage["Eager bandwidth (GiB/s)"] == pytest.approx(
        stage["Eager bytes moved MiB"] / 1024 / (stage["Time (ms)"] / 1000))
