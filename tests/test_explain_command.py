"""``mscsa-lab explain``: a folder with a corrupt file among good ones gives the good ones' maps, a message
for the bad one and exit status 1; the JSON holds deletion and insertion areas beside the random and centre
baselines; mistakes in the request exit with 2 before any image is read; --help loads no torch."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mscsa_lab.cli import main as cli_main

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "assets" / "samples"


@pytest.fixture
def folder(tmp_path):
    """Two good pictures, a PNG whose data is cut off, a file that is not an image, and a notes file."""
    images = tmp_path / "images"
    images.mkdir()
    for name in ("star_small.png", "circle_large.png"):
        (images / name).write_bytes((SAMPLES / name).read_bytes())
    (images / "broken.png").write_bytes((SAMPLES / "square_large.png").read_bytes()[:200])
    (images / "fake.jpg").write_bytes(b"not a jpeg at all")
    (images / "notes.txt").write_text("not an image, skipped by its suffix")
    return images


def test_a_corrupt_file_among_good_ones_is_reported_and_the_others_are_explained(folder, tmp_path, capsys):
    out = tmp_path / "maps"
    code = cli_main(["explain", str(folder), "--model", "demo", "--method", "norm", "--kind", "key",
                     "--input-size", "64", "--no-faithfulness", "--quiet", "-o", str(out)])
    captured = capsys.readouterr()
    assert code == 1
    assert "explained 2 of 4 images" in captured.out and "circle_large.png: circle" in captured.out
    assert "error: broken.png: the image file is corrupt or truncated" in captured.err
    assert "error: fake.jpg: this file is not an image" in captured.err and "notes.txt" not in captured.err
    for stem in ("star_small", "circle_large"):
        assert (out / f"{stem}_grid.png").stat().st_size > 5_000 and (out / f"{stem}_maps.npz").is_file()
        record = json.loads((out / f"{stem}.json").read_text())
        assert record["input_size"] == [64, 64] and record["top"][0]["name"] in ("star", "circle")
        assert "deletion" not in record  # --no-faithfulness
    assert not (out / "broken.json").exists()
    assert {p.name for p in out.glob("fig1b_key.*")} == {"fig1b_key.png", "fig1b_key.svg", "fig1b_key.pdf"}
    summary = json.loads((out / "summary.json").read_text())
    assert [Path(i["source"]).name for i in summary["images"] if i["error"]] == ["broken.png", "fake.jpg"]


@pytest.mark.slow
def test_explain_json_has_deletion_and_insertion_beside_the_baselines(folder, tmp_path, capsys):
    out = tmp_path / "maps"
    (folder / "broken.png").unlink()
    (folder / "fake.jpg").unlink()
    assert cli_main(["explain", str(folder / "star_small.png"), "--model", "demo", "--target", "star",
                     "--steps", "4", "--quiet", "-o", str(out)]) == 0
    assert "mean deletion area (key): X0" in capsys.readouterr().out
    record = json.loads((out / "star_small.json").read_text())
    assert record["target"] == {"index": 4, "label": "star"}
    for curve in ("deletion", "insertion"):
        for kind in ("key", "value"):
            areas = record[curve][kind]
            assert set(areas) == {"X0", "X1", "X2", "combined", "random", "centre"}
            assert all(0.0 <= value <= 1.0 for value in areas.values())
    details = record["faithfulness"]["key"]
    assert details["fractions"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert set(details["beats_random"]) == {"X0", "X1", "X2", "combined"}
    assert len(details["deletion_curves"]["random"]) == 5


def test_mistakes_in_the_request_exit_2_before_any_image_is_read(folder, tmp_path, capsys):
    out = tmp_path / "never"
    cases = [
        (["--model", "demo", "--target", "hexagon"], "target class 'hexagon' is not one of this model's 5 class names"),
        (["--model", "demo", "--block", "3"], "block=3 does not exist"),
        (["--model", "demo", "--checkpoint", str(folder / "star_small.png")], "--checkpoint applies to --model NAME"),
        (["--run", str(folder)], "is not a trained run"),
        (["--model", "not_a_net_at_all"], "not_a_net_at_all"),
    ]
    for flags, message in cases:
        assert cli_main(["explain", str(folder), *flags, "--quiet", "-o", str(out)]) == 2, flags
        assert message in capsys.readouterr().err, flags
    assert not out.exists()
    assert cli_main(["explain", str(tmp_path / "missing"), "--model", "demo", "--quiet", "-o", str(out)]) == 1
    assert "does not exist" in capsys.readouterr().err
    for flags in (["--model", "demo", "--run", "x"], ["--model", "demo", "--kind", "query"],
                  ["--model", "demo", "--steps", "1"], ["--model", "demo", "--method", "shap"]):
        with pytest.raises(SystemExit) as stopped:
            cli_main(["explain", str(folder), *flags, "-o", str(out)])
        assert stopped.value.code == 2
        assert "usage: mscsa-lab explain" in capsys.readouterr().err


def test_the_commands_method_names_are_the_librarys():
    from mscsa_lab.cli import explaining
    from mscsa_lab.explain.methods import KINDS, METHODS

    assert explaining.METHODS == METHODS and explaining.KINDS == KINDS


@pytest.mark.slow
@pytest.mark.integration
def test_the_console_command_in_a_subprocess(folder, tmp_path):
    """As a user runs it: progress on stderr, exit 1 for the corrupt file; --help loads no torch."""
    out = tmp_path / "maps"
    result = subprocess.run([sys.executable, "-m", "mscsa_lab", "explain", str(folder), "--model", "demo",
                             "--method", "gradcam", "--kind", "value", "--input-size", "64", "--no-faithfulness",
                             "-o", str(out)], capture_output=True, text=True, timeout=600, cwd=ROOT,
                            env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 1, result.stderr[-2000:]
    assert "explain: 100%" in result.stderr and "4/4" in result.stderr  # tqdm's bar
    assert "error: broken.png: the image file is corrupt" in result.stderr
    assert (out / "star_small_grid.png").is_file() and (out / "fig1b_value.pdf").is_file()
    script = ("import sys\nfrom mscsa_lab.cli import main\n"
              "try:\n    main(['explain', '--help'])\nexcept SystemExit:\n    pass\n"
              "print(sorted(m for m in ('torch', 'timm', 'gradio') if m in sys.modules))")
    helped = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert "--no-faithfulness" in helped.stdout and helped.stdout.strip().endswith("[]"), helped.stderr[-2000:]
