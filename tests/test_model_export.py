"""Exporting a model (mscsa_lab.io.model_export): each format writes a file that loads back and gives
the PyTorch model's outputs; unsupported requests are refused with a message.

onnxruntime, onnx and onnxscript are declared in requirements-dev.txt, so the ONNX test compares
outputs through onnxruntime; where onnxruntime is missing it fails naming the package, instead of
passing on a file that was never run. Exports take seconds each: those tests are marked slow.
"""
import importlib.util

import pytest
import torch

from mscsa_lab.errors import UserError
from mscsa_lab.io.checkpoints import load_demo_model
from mscsa_lab.io.model_export import ExportError, export_model, export_onnx, onnxruntime_available
from mscsa_lab.models.config import MSCSAConfig
from mscsa_lab.models.mscsa_net import MSCSANet

SIZE = (96, 96)
TOLERANCE = 1e-4  # float32 reordering in another runtime; a wrong graph differs by far more


@pytest.fixture(scope="module")
def demo():
    model, _ = load_demo_model()  # a trained MSCSA model on resnet10t: BN statistics are not the identity
    return model


@pytest.mark.slow
@pytest.mark.parametrize("fmt,suffix,checker", [("torchscript", ".pt", "torch.jit.load"),
                                               ("exported", ".pt2", "torch.export.load")])
@pytest.mark.parametrize("fuse", [False, True])
def test_torch_formats_reload_and_match(demo, tmp_path, fmt, suffix, checker, fuse):
    before = {name: t.clone() for name, t in demo.state_dict().items()}
    report = export_model(demo, tmp_path / f"demo{suffix}", fmt, fuse=fuse, input_size=SIZE)
    assert report.path.is_file() and report.format == fmt and report.checked_with == checker
    assert report.max_difference is not None and report.max_difference < TOLERANCE
    assert report.input_shape == (1, 3, *SIZE)
    assert ("BatchNorms folded" in " ".join(report.notes)) == fuse
    # the caller's model is left as it was (fuse works on a copy)
    assert all(torch.equal(t, before[name]) for name, t in demo.state_dict().items())


@pytest.mark.slow
def test_onnx_is_compared_with_onnxruntime(demo, tmp_path):
    assert onnxruntime_available(), "onnxruntime is a dev requirement (requirements-dev.txt): pip install it"
    report = export_onnx(demo, tmp_path / "demo.onnx", fuse=True, input_size=SIZE)
    assert report.checked_with == "onnxruntime"
    assert report.max_difference is not None and report.max_difference < TOLERANCE
    import onnx

    graph = onnx.load(str(report.path)).graph
    assert [i.name for i in graph.input] == ["image"] and len(graph.output) == 1
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim] == [1, 3, *SIZE]


@pytest.mark.slow
def test_traced_torchscript_and_a_dense_model(tmp_path):
    dense = MSCSANet("resnet10t", MSCSAConfig(num_heads=2, key_dim=8, squeeze_ratio=0.25), task="dense")
    report = export_model(dense, tmp_path / "dense.pt", method="trace", input_size=(64, 64))
    assert report.max_difference is not None and report.max_difference < TOLERANCE
    assert any("traced" in note for note in report.notes)


def test_bad_requests_are_refused_with_what_to_do(demo, tmp_path):
    with pytest.raises(ExportError, match=r"cannot tell the format.*\.onnx, \.pt or \.pt2"):
        export_model(demo, tmp_path / "model.bin")
    with pytest.raises(ExportError, match="format='tflite' is unknown"):
        export_model(demo, tmp_path / "model.onnx", "tflite")
    with pytest.raises(ExportError, match="folder .* does not exist"):
        export_model(demo, tmp_path / "missing" / "model.pt")
    with pytest.raises(ExportError, match="is a folder"):
        export_model(demo, tmp_path, "torchscript")
    with pytest.raises(ExportError, match=r"torchscript export takes .*not \['opset_version'\]"):
        export_model(demo, tmp_path / "model.pt", opset_version=17)
    with pytest.raises(ExportError, match="input_size must be"):
        export_model(demo, tmp_path / "model.pt", input_size=(8, 8))
    with pytest.raises(ExportError, match="method='jit'"):
        export_model(demo, tmp_path / "model.pt", method="jit")
    with pytest.raises(ExportError, match="has no fuse"):
        export_model(torch.nn.Conv2d(3, 4, 3), tmp_path / "conv.pt", fuse=True)
    assert issubclass(ExportError, UserError)
    assert not list(tmp_path.iterdir())  # nothing was written


def test_onnx_packages_are_declared_for_development():
    requirements = (importlib.util.find_spec("mscsa_lab").origin or "").rsplit("mscsa_lab", 1)[0]
    text = open(requirements + "requirements-dev.txt").read()
    for package in ("onnx==", "onnxscript==", "onnxruntime=="):
        assert package in text, f"{package} missing from requirements-dev.txt"


# --------------------------------------------------------------------------- the export-model command
def test_export_model_command_refuses_bad_requests_before_building(tmp_path, capsys):
    from mscsa_lab.cli import main

    for argv, message in ((["export-model", "demo"], "nothing to export"),
                          (["export-model", "demo", "--onnx", str(tmp_path / "m.pt")], "a onnx file ends in .onnx"),
                          (["export-model", "demo", "--torchscript", str(tmp_path / "no" / "m.pt")], "does not exist"),
                          (["export-model", "no_such_net_xyz", "--onnx", str(tmp_path / "m.onnx")], "no_such_net_xyz"),
                          (["export-model", "--run", str(tmp_path), "--onnx", str(tmp_path / "m.onnx")],
                           "is not a trained run")):
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv
    assert not list(tmp_path.glob("m.*"))


@pytest.mark.slow
def test_export_model_command_writes_reloads_and_compares(tmp_path, capsys):
    """The command a user runs: two formats of the demo model, BN folded, the differences printed and written."""
    from mscsa_lab.cli import main
    from mscsa_lab.io.export import read_table

    script, program, report = tmp_path / "demo.pt", tmp_path / "demo.pt2", tmp_path / "report.csv"
    assert main(["export-model", "demo", "--torchscript", str(script), "--exported", str(program), "--fuse",
                 "--input-size", "64x64", "-o", str(report)]) == 0
    out = capsys.readouterr().out
    assert "demo exported (input 1x3x64x64, BN folded)" in out and "torch.jit.load" in out
    assert torch.jit.load(str(script))(torch.randn(1, 3, 64, 64)).shape == (1, 5)
    frame = read_table(report).frame
    assert list(frame["Format"]) == ["torchscript", "exported"]
    assert (frame["Max difference"] < TOLERANCE).all() and program.stat().st_size > 1e6
