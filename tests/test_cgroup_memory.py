"""Free memory as this process's own cgroups allow it (``analysis.cost.available_memory_bytes``),
read from cgroup trees written in a temporary folder the way the kernel lays them out: v2, v1, the
hybrid layout, nested limits where a parent is tighter than the child and the reverse, and a
container that sees its own cgroup at the mount's root."""
import math
from pathlib import Path

import pytest

from mscsa_lab.analysis.cost import _cgroup_free_bytes, available_memory_bytes

GiB = 2**30


def write_tree(root: Path, files: dict[str, str]) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content + "\n")


def proc_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "proc-self-cgroup"
    path.write_text(text)
    return path


def v2_tree(root: Path, levels: dict[str, tuple[str, int, int]]) -> None:
    """``levels``: cgroup path -> (memory.max, memory.current, inactive_file)."""
    write_tree(root, {"cgroup.controllers": "cpu memory", "memory.stat": "anon 0"})
    for path, (limit, usage, inactive) in levels.items():
        prefix = f"{path}/" if path else ""
        write_tree(root, {f"{prefix}memory.max": limit, f"{prefix}memory.current": str(usage),
                          f"{prefix}memory.stat": f"anon {usage}\ninactive_file {inactive}\nactive_file 0"})


def test_v2_nested_child_tighter(tmp_path):
    """A job capped at 5 GiB (4 GiB used) inside a slice capped at 16 GiB: 1 GiB is free, not 13."""
    v2_tree(tmp_path / "cg", {"box.slice": (str(16 * GiB), 3 * GiB, 0), "box.slice/job": (str(5 * GiB), 4 * GiB, 0),
                              "box.slice/job/worker": ("max", 4 * GiB, 0)})
    proc = proc_file(tmp_path, "0::/box.slice/job/worker\n")
    assert _cgroup_free_bytes(tmp_path / "cg", proc) == pytest.approx(1 * GiB)
    assert available_memory_bytes("cpu", tmp_path / "cg", proc) <= 1 * GiB


def test_v2_nested_parent_tighter_and_cache_counts_as_free(tmp_path):
    v2_tree(tmp_path / "cg", {"a": (str(2 * GiB), int(1.5 * GiB), GiB // 4), "a/b": (str(8 * GiB), GiB, 0)})
    proc = proc_file(tmp_path, "0::/a/b\n")
    assert _cgroup_free_bytes(tmp_path / "cg", proc) == pytest.approx(0.75 * GiB)  # 2 - 1.5 + 0.25 of cache


def test_v2_memory_high_is_a_limit_too(tmp_path):
    v2_tree(tmp_path / "cg", {"a": ("max", GiB, 0)})
    write_tree(tmp_path / "cg", {"a/memory.high": str(3 * GiB)})
    assert _cgroup_free_bytes(tmp_path / "cg", proc_file(tmp_path, "0::/a\n")) == pytest.approx(2 * GiB)


def test_v1_nested(tmp_path):
    unlimited = "9223372036854771712"
    base = tmp_path / "cg" / "memory"
    write_tree(base, {"memory.limit_in_bytes": unlimited, "memory.usage_in_bytes": str(20 * GiB),
                      "memory.stat": "total_inactive_file 0",
                      "jobs/memory.limit_in_bytes": str(6 * GiB), "jobs/memory.usage_in_bytes": str(5 * GiB),
                      "jobs/memory.stat": f"cache 0\ntotal_inactive_file {GiB // 2}",
                      "jobs/42/memory.limit_in_bytes": unlimited, "jobs/42/memory.usage_in_bytes": str(4 * GiB)})
    proc = proc_file(tmp_path, "12:pids:/jobs/42\n4:memory:/jobs/42\n1:name=systemd:/\n0::/\n")
    assert _cgroup_free_bytes(tmp_path / "cg", proc) == pytest.approx(1.5 * GiB)


def test_hybrid_layout_uses_the_v1_memory_controller(tmp_path):
    """v1 controllers plus a v2 mount without the memory controller (this machine's layout)."""
    base = tmp_path / "cg"
    write_tree(base, {"memory/memory.limit_in_bytes": str(10 * GiB), "memory/memory.usage_in_bytes": str(GiB),
                      "memory/job/memory.limit_in_bytes": str(3 * GiB),
                      "memory/job/memory.usage_in_bytes": str(2 * GiB),
                      "unified/cgroup.controllers": "cpu io", "unified/job/cgroup.procs": "1"})
    proc = proc_file(tmp_path, "4:memory:/job\n0::/job\n")
    assert _cgroup_free_bytes(base, proc) == pytest.approx(1 * GiB)


def test_container_sees_its_own_cgroup_at_the_root(tmp_path):
    """/proc/self/cgroup names the host's path, absent inside the container: the mount's root is
    the container's own cgroup, and its limit applies."""
    v2_tree(tmp_path / "cg", {"": (str(4 * GiB), 3 * GiB, 0)})
    proc = proc_file(tmp_path, "0::/system.slice/docker-abc.scope\n")
    assert _cgroup_free_bytes(tmp_path / "cg", proc) == pytest.approx(1 * GiB)
    namespaced = proc_file(tmp_path, "0::/../../outside\n")
    assert _cgroup_free_bytes(tmp_path / "cg", namespaced) == pytest.approx(1 * GiB)


def test_no_limit_anywhere_is_infinite(tmp_path):
    v2_tree(tmp_path / "cg", {"a": ("max", GiB, 0)})
    assert _cgroup_free_bytes(tmp_path / "cg", proc_file(tmp_path, "0::/a\n")) == math.inf
    assert _cgroup_free_bytes(tmp_path / "missing", tmp_path / "no-proc-file") == math.inf
    garbage = tmp_path / "junk"
    write_tree(garbage, {"cgroup.controllers": "memory", "a/memory.max": "lots", "a/memory.current": "??"})
    assert _cgroup_free_bytes(garbage, proc_file(tmp_path, "0::/a\n")) == math.inf
    real = available_memory_bytes("cpu")
    assert 0 < real < math.inf  # MemAvailable at least: a finite reading on Linux
