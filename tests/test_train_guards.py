"""Training against hostile folders and files (issue 24): data folders with link loops, links out of
them, pipes and millions of entries; stop in every phase; run folders that hold a finished run, a
killed run's leftovers or planted links; a full, limited or read-only disk; tampered resume states.
Each case checks the message a user sees."""
import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import run_command
from mscsa_lab.stopping import Cancelled
from mscsa_lab.train import TrainConfig, TrainingInputError, train
from mscsa_lab.train.data import scan_data, scan_images
from mscsa_lab.train.state import load_training_state
from mscsa_lab.train.writing import RunFolderError, prepare_run_folder, write_failure

ROOT = Path(__file__).resolve().parent.parent
DEMO = dict(backbone="resnet10t", backbone_kwargs={"channels": [32, 64, 128, 256]},
            mscsa=dict(pool_stride=8, squeeze_ratio=0.25, depth=1, num_heads=4, key_dim=16, mlp_ratio=2.0))


def tiny(**changes) -> TrainConfig:
    values = dict(data="synthetic", img_size=32, batch_size=8, epochs=2, synthetic_train=16, synthetic_val=4,
                  workers=0, **DEMO)
    values.update(changes)
    return TrainConfig(**values)


def image_folder(root: Path, classes=("cats", "dogs"), count: int = 3) -> Path:
    for index, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.new("RGB", (16, 16), (60 * index, 100, 20 * i)).save(root / name / f"{i}.png")
    return root


def _without_root_write_override() -> None:
    """Drop CAP_DAC_OVERRIDE from the capability bounding set, so the program this process executes (root
    or not) obeys a folder's write permissions as any user does."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(24, 1, 0, 0, 0) != 0:  # PR_CAPBSET_DROP, CAP_DAC_OVERRIDE
        raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def run_child(script: str, memory_gb: float = 6, timeout: float = 120, as_user: bool = False, **env):
    """``script`` in a fresh Python with its address space capped (and, ``as_user``, without root's power
    to write anywhere): a regression cannot take the machine's memory, and a hang is a failed test."""
    def limit():
        import resource

        cap = int(memory_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        if as_user and os.geteuid() == 0:
            _without_root_write_override()

    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
                   "PYTHONPATH": str(ROOT), "MPLCONFIGDIR": "/tmp", **env}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          timeout=timeout, env=environment, preexec_fn=limit, cwd="/")


# ---------------------------------------------------------------------- scanning
def test_link_loops_links_out_and_pipes_are_skipped_and_noted(tmp_path):
    data = image_folder(tmp_path / "data")
    outside = image_folder(tmp_path / "outside", ("elsewhere",))
    (data / "cats" / "loop").symlink_to(data)  # ln -s DATA DATA/cats/loop
    (data / "dogs" / "self").symlink_to(".")
    (data / "dogs" / "out").symlink_to(outside)
    (data / "cats" / "stolen.png").symlink_to(outside / "elsewhere" / "0.png")
    (data / "cats" / "inside.png").symlink_to(data / "dogs" / "0.png")  # a link that stays inside: followed
    os.mkfifo(data / "cats" / "pipe.png")
    started = time.perf_counter()
    source = scan_data(str(data), val_fraction=0.34)
    elapsed = time.perf_counter() - started
    print(f"scan of a folder with two link loops: {elapsed:.3f} s")
    assert elapsed < 5 and source.classes == ["cats", "dogs"]
    assert source.train_count + source.val_count == 7  # 3 + 3 images and the link that stays inside
    notes = " ".join(source.notes)
    assert "skipped 2 symbolic link(s) pointing outside the data folder" in notes and "stolen.png" in notes
    assert "skipped 2 folder(s) reached a second time through a link" in notes
    every = [source.train.dataset[i][0] for i in range(len(source.train.dataset))]
    assert all(image.size == (16, 16) for image in every)  # each read through load_image inside the folder
    flat = scan_images(str(data), val_fraction=0.3)
    assert flat.train_count + flat.val_count == 7 and len(flat.notes) == 2


def test_a_link_swapped_in_after_the_scan_is_refused_when_read(tmp_path):
    data = image_folder(tmp_path / "data")
    outside = image_folder(tmp_path / "outside", ("x",))
    source = scan_data(str(data), split="all")
    victim = data / "cats" / "0.png"
    victim.unlink()
    victim.symlink_to(outside / "x" / "0.png")
    index = source.train.dataset.files.index(str(victim))
    with pytest.raises(TrainingInputError, match="0.png.* cannot be read .*points outside"):
        source.train.dataset[index]


def test_scan_caps_and_stop_end_a_scan_with_a_clear_message(tmp_path):
    data = tmp_path / "many"
    for name in ("a", "b"):
        (data / name).mkdir(parents=True)
        for i in range(300):
            (data / name / f"{i}.png").touch()
    with pytest.raises(TrainingInputError, match=r"holds more than 100 files and folders .*--scan-max-files"):
        scan_data(str(data), max_files=100)
    with pytest.raises(TrainingInputError, match=r"took more than 1e-09 s .*--scan-max-s"):
        scan_images(str(data), max_seconds=1e-9)
    calls = []
    with pytest.raises(Cancelled, match="stopped while scanning the data folder .* nothing was trained"):
        scan_data(str(data), stop=lambda: calls.append(1) or len(calls) >= 2)
    assert len(calls) == 2  # checked every few hundred entries: it ended at the second look
    with pytest.raises(TrainingInputError, match="holds more than 100 files"):
        train(tiny(data=str(data), scan_max_files=100, out=str(tmp_path / "run")))
    assert not (tmp_path / "run" / "model.json").exists()


@pytest.mark.slow
def test_a_symlink_loop_scan_in_a_memory_capped_child(tmp_path):
    """The case that used to grow past 10 GB: inside a 6 GB address space, it ends within seconds."""
    data = image_folder(tmp_path / "data")
    (data / "cats" / "loop").symlink_to("..")
    (data / "dogs" / "loop").symlink_to("../..")
    ran = run_child(f"""
        import time
        from mscsa_lab.train.data import scan_data, scan_images
        started = time.perf_counter()
        source = scan_data({str(data)!r})
        images = scan_images({str(data)!r})
        print("images", source.train_count + source.val_count, images.train_count + images.val_count)
        print("seconds", round(time.perf_counter() - started, 3))
    """, timeout=120)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert "images 6 6" in ran.stdout
    print(ran.stdout)


# ---------------------------------------------------------------------- stop in every phase
def test_stop_before_training_ends_the_run_with_nothing_written(tmp_path):
    stop = threading.Event()
    stop.set()
    with pytest.raises(Cancelled, match="stopped before scanning the data"):
        train(tiny(out=str(tmp_path / "run")), stop=stop)
    assert not (tmp_path / "run" / "model.json").exists() and not (tmp_path / "run" / "last").exists()
    phases = []

    def stop_at(event):
        if event.kind == "phase":
            phases.append(event.message)
            if event.message == "building the model":
                stop.set()

    stop.clear()
    with pytest.raises(Cancelled, match="stopped before training"):
        train(tiny(), stop=stop, callbacks=[stop_at])
    assert phases == ["scanning the data (synthetic)", "building the model"]


def _cpu_seconds() -> float:
    usage = os.times()
    return usage.user + usage.system


def test_stop_during_a_long_evaluation_ends_it_within_a_batch_and_the_cpu_goes_idle(tmp_path):
    """An evaluation of 20000 held-out images (minutes): Stop ends it at once, the run is written without
    held-out metrics, and the process uses no CPU afterwards."""
    stop = threading.Event()
    marks = {}

    def on_event(event):
        if event.kind == "phase" and event.message.startswith("evaluating") and "asked" not in marks:
            marks["asked"] = time.perf_counter()
            threading.Timer(0.5, stop.set).start()

    worker = threading.Thread(target=lambda: marks.update(result=train(
        tiny(epochs=1, synthetic_val=20_000, out=str(tmp_path / "run")), stop=stop, callbacks=[on_event])))
    worker.start()
    worker.join(timeout=300)
    assert not worker.is_alive()
    ended = time.perf_counter() - marks["asked"] - 0.5
    before = _cpu_seconds()
    time.sleep(1.0)
    busy = _cpu_seconds() - before
    print(f"stop during evaluation: ended {ended:.2f} s after the stop, {busy:.2f} CPU s in the next second")
    assert ended < 10 and busy < 0.3
    result = marks["result"]
    assert result.status == "completed" and result.metrics == {}
    assert any("evaluation after step 2 was stopped" in note for note in result.notes)
    meta = json.loads((tmp_path / "run" / "model.json").read_text())
    assert meta["metrics"] == {} and (tmp_path / "run" / "last" / "state.pt").is_file()


# ---------------------------------------------------------------------- the run folder
def test_a_finished_run_is_kept_unless_resume_or_overwrite(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.json").write_text("{}")
    (run / "model.safetensors").write_bytes(b"weights")
    with pytest.raises(RunFolderError, match=r"holds a finished run .*--resume .*--overwrite"):
        prepare_run_folder(run)
    assert (run / "model.safetensors").read_bytes() == b"weights"
    notes = []
    assert prepare_run_folder(run, overwrite=True, notes=notes) == run.resolve()
    assert not (run / "model.json").exists() and "replaced a finished run" in notes[0]
    with pytest.raises(TrainingInputError, match="resume continues the run in out, overwrite replaces it"):
        TrainConfig(backbone="resnet10t", out=str(run), resume=True, overwrite=True).validate()
    (run / "file").write_text("x")
    with pytest.raises(RunFolderError, match="is a file"):
        prepare_run_folder(run / "file")


def test_the_cli_refuses_to_replace_a_finished_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.json").write_text("{}")
    refused = run_command("train", "--data", "synthetic", "--backbone", "resnet10t", "--out", str(run))
    assert refused.returncode == 2 and "holds a finished run" in refused.stderr and "--overwrite" in refused.stderr
    assert "Traceback" not in refused.stderr and (run / "model.json").read_text() == "{}"


def test_leftovers_of_a_killed_run_are_removed_and_reported(tmp_path):
    run = tmp_path / "run"
    dead = run / ".last.tmp-999999999"
    dead.mkdir(parents=True)
    (dead / "model.safetensors").write_bytes(b"x" * 4096)
    (run / ".model.safetensors.tmp-999999999").write_bytes(b"y" * 100)
    live = run / f".last.tmp-{os.getppid()}"  # a process that is still running: perhaps writing it now
    live.mkdir()
    notes = []
    prepare_run_folder(run, notes=notes)
    assert not dead.exists() and not (run / ".model.safetensors.tmp-999999999").exists() and live.exists()
    assert ".last.tmp-999999999 (4.00 KiB)" in notes[0] and "interrupted run" in notes[0]


@pytest.mark.slow
def test_links_planted_in_a_run_folder_are_replaced_not_written_through(tmp_path):
    run, outside = tmp_path / "run", tmp_path / "outside"
    run.mkdir()
    outside.mkdir()
    (outside / "precious.csv").write_text("keep me")
    (run / "history.csv").symlink_to(outside / "precious.csv")
    (run / ".last.tmp-999999999").symlink_to(outside)
    result = train(tiny(epochs=1, out=str(run)))
    assert result.status == "completed"
    assert (outside / "precious.csv").read_text() == "keep me" and sorted(p.name for p in outside.iterdir()) == [
        "precious.csv"]
    assert not (run / "history.csv").is_symlink() and (run / "history.csv").read_text().startswith("step,")


def test_full_disk_messages_name_the_path_and_the_space():
    message = str(write_failure(OSError(errno.ENOSPC, "No space left on device"), Path("/tmp/runs/x/last"),
                                needed=300 * 2**20))
    assert message.startswith("cannot write '/tmp/runs/x/last': the disk is full (")
    assert "free there; this write needs about 300 MiB" in message and "--out" in message
    message = str(write_failure(RuntimeError("Error while serializing: I/O error: (os error 28)"), Path("/r/m")))
    assert "the disk is full" in message
    assert "read-only" in str(write_failure(OSError(errno.EROFS, "Read-only file system"), Path("/r")))


@pytest.mark.slow
@pytest.mark.integration
def test_a_file_size_limit_mid_run_and_a_read_only_folder_give_a_message_not_a_trace(tmp_path):
    script = """
        import resource, signal, sys
        from mscsa_lab.errors import UserError
        from mscsa_lab.train import TrainConfig, train
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        if {limit}:
            resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
        config = TrainConfig(data="synthetic", backbone="resnet10t", backbone_kwargs={{"channels": [32, 64, 128, 256]}},
                             img_size=32, batch_size=8, epochs=1, synthetic_train=16, synthetic_val=4, workers=0,
                             out={out!r})
        try:
            train(config)
        except UserError as error:
            print("MESSAGE", error)
            sys.exit(2)
    """
    limited = run_child(script.format(limit=200_000, out=str(tmp_path / "limited")), timeout=300)
    assert limited.returncode == 2, limited.stderr[-2000:]
    assert "cannot write" in limited.stdout and "last/model.safetensors" in limited.stdout
    assert "file size limit" in limited.stdout and "this write needs about" in limited.stdout
    assert "Traceback" not in limited.stdout + limited.stderr
    assert not [p for p in (tmp_path / "limited").iterdir() if p.name.startswith(".last")]  # no half state left

    (tmp_path / "runs").mkdir()
    os.chmod(tmp_path / "runs", 0o555)
    try:
        locked = run_child(script.format(limit=0, out=str(tmp_path / "runs" / "x")), timeout=300, as_user=True)
    finally:
        os.chmod(tmp_path / "runs", 0o755)
    print(limited.stdout, locked.stdout)
    assert locked.returncode == 2, locked.stderr[-2000:]
    assert "cannot write" in locked.stdout and "runs/x" in locked.stdout and "permission denied" in locked.stdout


# ---------------------------------------------------------------------- tampered resume states
@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory) -> Path:
    """A run stopped after its first epoch (its last/ state is what a resume reads)."""
    folder = tmp_path_factory.mktemp("stopped") / "run"
    stop = threading.Event()
    train(tiny(out=str(folder)), stop=stop, callbacks=[lambda e: stop.set() if e.kind == "epoch" else None])
    return folder


def tampered(stopped_run: Path, tmp_path: Path, change) -> Path:
    folder = tmp_path / "copy"
    shutil.copytree(stopped_run, folder)
    path = folder / "last" / "state.pt"
    state = torch.load(path, weights_only=True)
    change(state)
    torch.save(state, path)
    return folder


def _set(state, *keys_and_value):
    *keys, value = keys_and_value
    target = state
    for key in keys[:-1]:
        target = target[key]
    target[keys[-1]] = value


STATE_CASES = [
    (("epoch", 10**12), "its epoch is 1000000000000, outside 0..2 (the run's 2 epochs)"),
    (("global_step", -5), "its global_step is -5, outside 0..4 (the run's 4 steps)"),
    (("global_step", "3"), "its global_step is '3', not a whole number"),
    (("samples_in_epoch", 10**13), "its samples_in_epoch is 10000000000000, outside"),
    (("world_size", 0), "its world_size is 0, outside 1..65536"),
    (("config", [1]), "its config is [1], not a table of settings"),
    (("config", "epochs", -1), "its settings are wrong (epochs must be at least 1"),
    (("classes", 5), "its classes are 5, not a list of class names"),
    (("history", [{"epoch": float("nan")}]), "its history is not a list of rows of numbers"),
    (("rng", 0, "torch", torch.zeros(3, dtype=torch.uint8)), "random number generator state 0 for torch is a tensor"),
    (("rng", 0, "numpy", "pos", 10**6), "for NumPy is not a Mersenne Twister state"),
    (("rng", 0, "python", "state", torch.full((625,), 2**40)), "for Python is not a Mersenne Twister state"),
    (("optimizer", 7), "its optimizer state is 7, not a table"),
]


def sound_state() -> dict:
    """A state as save_training_state writes it (what check_state sees after reading it)."""
    from mscsa_lab.train.state import FORMAT, capture_rng

    return {"format": FORMAT, "config": tiny(out="run").to_dict(), "epoch": 1, "samples_in_epoch": 0, "global_step": 2,
            "total_steps": 4, "world_size": 1, "rng": [capture_rng()], "history": [{"epoch": 1, "val_top1": 50.0}],
            "classes": ["circle", "square"], "optimizer": {}, "scheduler": {}, "scaler": {}, "path": "runs/x/last"}


def test_tampered_fields_of_a_resume_state_are_refused_with_their_name():
    from mscsa_lab.train.resume import check_state

    assert check_state(sound_state(), "runs/x/last")["global_step"] == 2
    for change, expected in STATE_CASES:
        state = sound_state()
        _set(state, *change)
        with pytest.raises(TrainingInputError) as caught:
            check_state(state, "runs/x/last")
        message = str(caught.value)
        assert expected in message, (change[0], message)
        assert message.startswith("cannot resume from 'runs/x/last'") and "--overwrite" in message
        assert "weights_only" not in message and len(message) < 600


@pytest.mark.slow
def test_a_tampered_state_on_disk_is_refused_when_read(stopped_run, tmp_path):
    assert load_training_state(stopped_run)["global_step"] == 2
    for index, (change, expected) in enumerate(STATE_CASES[:2]):
        folder = tampered(stopped_run, tmp_path / str(index), lambda state: _set(state, *change))
        with pytest.raises(TrainingInputError, match=f"cannot resume from '{folder / 'last'}'") as caught:
            load_training_state(folder)
        assert expected in str(caught.value)


@pytest.mark.slow
def test_tampered_weights_optimizer_and_files_are_refused_before_training(stopped_run, tmp_path):
    def optimizer_lr(state):
        state["optimizer"]["param_groups"][0]["lr"] = float("nan")

    def optimizer_shape(state):
        first = next(iter(state["optimizer"]["state"].values()))
        first["exp_avg"] = torch.zeros(*first["exp_avg"].shape, 2)

    def optimizer_groups(state):
        state["optimizer"]["param_groups"].append(dict(state["optimizer"]["param_groups"][0]))

    def scheduler_field(state):
        state["scheduler"]["param_group_field"] = "momentum"

    for index, (change, expected) in enumerate([
            (optimizer_lr, "its optimizer's lr is nan, not a finite number"),
            (optimizer_shape, ", 2), the parameter ("),
            (optimizer_groups, "parameter groups, this run's"),
            (scheduler_field, "its scheduler's param_group_field is 'momentum', expected 'lr'")]):
        folder = tampered(stopped_run, tmp_path / str(index), change)
        with pytest.raises(TrainingInputError, match="cannot resume from") as caught:
            train(tiny(out=str(folder), resume=True))
        assert expected in str(caught.value), str(caught.value)
        assert (folder / "model.json").read_bytes() == (stopped_run / "model.json").read_bytes()

    folder = tmp_path / "weights"
    shutil.copytree(stopped_run, folder)
    from safetensors.torch import load_file, save_file

    weights = load_file(folder / "last" / "model.safetensors")
    weights = {k: (v[:1] if v.ndim else v) for k, v in weights.items()}
    save_file(weights, folder / "last" / "model.safetensors")
    with pytest.raises(TrainingInputError) as caught:
        train(tiny(out=str(folder), resume=True))
    message = str(caught.value)
    assert "last/model.safetensors does not fit this model" in message and " more)" in message and len(message) < 900

    folder = tmp_path / "pickle"
    shutil.copytree(stopped_run, folder)
    import pickle

    (folder / "last" / "state.pt").write_bytes(pickle.dumps(Path("/etc")))  # an object, not tensors
    with pytest.raises(TrainingInputError) as caught:
        train(tiny(out=str(folder), resume=True))
    assert "weights_only=False" not in str(caught.value) and "holds Python objects or code" in str(caught.value)

    folder = tmp_path / "history"
    shutil.copytree(stopped_run, folder)
    (folder / "last" / "history.csv").write_text("step,train_loss\n1,abc\n")
    with pytest.raises(TrainingInputError, match="its step history is not a table of numbers"):
        load_training_state(folder)
