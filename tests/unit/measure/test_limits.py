"""Container limits: cgroup v1 and v2 trees read from fake roots, faults as notes, and a really confined process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadertop.core.measure.limits import CgroupLimits, Limit, Limits, combine, parse_cpu_list, read_cgroups
from loadertop.core.policy.advice import MachineFacts, advise
from loadertop.core.policy.report import report_json
from loadertop.tui.widgets.header import limits_text
from tests.conftest import ROOT

GIB = 1024**3
MIB = 1024**2


def fake_root(tmp_path: Path, cgroup: str, mounts: list[tuple[str, str, str, str]], files: dict[str, str]) -> Path:
    """A fake ``/``: ``proc/self/cgroup`` holding ``cgroup``, ``proc/self/mountinfo`` with ``mounts``
    (fstype, superoptions, mount root, mount point) and the cgroup ``files`` (path -> text)."""
    proc = tmp_path / "proc" / "self"
    proc.mkdir(parents=True)
    (proc / "cgroup").write_text(textwrap.dedent(cgroup).lstrip())
    lines = [
        f"{20 + i} 1 0:{30 + i} {root} {point} rw,relatime - {kind} {kind} {options}"
        for i, (kind, options, root, point) in enumerate(mounts)
    ]
    (proc / "mountinfo").write_text("25 1 8:1 / / rw - ext4 /dev/sda1 rw\n" + "\n".join(lines) + "\n")
    for name, text in files.items():
        path = tmp_path / name.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


V2 = [("cgroup2", "rw", "/", "/sys/fs/cgroup")]


def host(cgroups: CgroupLimits, cores: int = 64, affinity: int = 64) -> Limits:
    return combine(
        cgroups,
        host_cores=cores,
        affinity_cores=affinity,
        host_memory_total_bytes=512 * GIB,
        host_memory_available_bytes=400 * GIB,
    )


def test_a_v2_container_with_a_fractional_quota_and_a_memory_limit(tmp_path: Path) -> None:
    root = fake_root(
        tmp_path,
        "0::/\n",
        V2,
        {
            "/sys/fs/cgroup/cgroup.controllers": "cpuset cpu io memory pids\n",
            "/sys/fs/cgroup/cpu.max": "150000 100000\n",
            "/sys/fs/cgroup/cpuset.cpus.effective": "0-63\n",
            "/sys/fs/cgroup/memory.max": f"{3 * GIB}\n",
            "/sys/fs/cgroup/memory.high": "max\n",
            "/sys/fs/cgroup/memory.current": f"{GIB}\n",
            "/sys/fs/cgroup/memory.stat": f"anon 100\nfile 200\ninactive_file {256 * MIB}\n",
        },
    )
    cgroups = read_cgroups(root)
    assert cgroups.quota == Limit(1.5, "cgroup v2 quota", str(root / "sys/fs/cgroup/cpu.max"))
    assert cgroups.cpuset == Limit(64.0, "cgroup v2 cpuset", str(root / "sys/fs/cgroup/cpuset.cpus.effective"))
    assert cgroups.memory == Limit(float(3 * GIB), "cgroup v2 memory.max", str(root / "sys/fs/cgroup/memory.max"))
    assert cgroups.notes == ()
    limits = host(cgroups)
    assert (limits.cores, limits.core_count, limits.cores_source) == (1.5, 2, "cgroup v2 quota")
    assert limits.memory_total_bytes == 3 * GIB
    assert limits.memory_available_bytes == 3 * GIB - (GIB - 256 * MIB)  # the inactive page cache is reclaimable
    assert limits.cores_text() == "1.5 of 64 cores: cgroup v2 quota"
    assert limits.memory_text() == "3.0 of 512.0 GiB: cgroup v2 memory.max"
    assert limits_text(limits) == "1.5 of 64 cores, 3.0 GiB: cgroup"


def test_v2_nested_levels_the_tightest_binds_and_memory_high_counts(tmp_path: Path) -> None:
    pod, ctr = "/sys/fs/cgroup/kubepods/pod1", "/sys/fs/cgroup/kubepods/pod1/ctr"
    root = fake_root(
        tmp_path,
        "0::/kubepods/pod1/ctr\n",
        V2,
        {
            "/sys/fs/cgroup/cgroup.controllers": "cpuset cpu memory\n",
            "/sys/fs/cgroup/cpuset.cpus.effective": "0-15\n",
            "/sys/fs/cgroup/kubepods/cgroup.controllers": "cpu memory\n",
            "/sys/fs/cgroup/kubepods/cpu.max": "max 100000\n",
            "/sys/fs/cgroup/kubepods/memory.max": "max\n",
            f"{pod}/cgroup.controllers": "cpu memory\n",
            f"{pod}/cpu.max": "400000 100000\n",
            f"{pod}/memory.max": f"{16 * GIB}\n",
            f"{pod}/memory.current": f"{12 * GIB}\n",
            f"{ctr}/cgroup.controllers": "cpu memory\n",
            f"{ctr}/cpu.max": "max 100000\n",
            f"{ctr}/memory.max": "max\n",
            f"{ctr}/memory.high": f"{8 * GIB}\n",
            f"{ctr}/memory.current": f"{2 * GIB}\n",
        },
    )
    cgroups = read_cgroups(root)
    assert cgroups.quota == Limit(4.0, "cgroup v2 quota", str(root / pod.lstrip("/") / "cpu.max"))
    assert cgroups.cpuset == Limit(16.0, "cgroup v2 cpuset", str(root / "sys/fs/cgroup/cpuset.cpus.effective"))
    assert cgroups.memory == Limit(float(8 * GIB), "cgroup v2 memory.high", str(root / ctr.lstrip("/") / "memory.high"))
    assert cgroups.memory_usage_bytes == 2 * GIB
    # The pod's 16 GiB with 12 used leaves less than the container's 8 with 2 used: the pod's headroom binds.
    assert cgroups.memory_headroom_bytes == 4 * GIB and cgroups.notes == ()
    limits = host(cgroups)
    assert (limits.cores, limits.cores_source, limits.memory_total_bytes, limits.memory_available_bytes) == (
        4.0,
        "cgroup v2 quota",
        8 * GIB,
        4 * GIB,
    )


def test_v2_max_everywhere_is_the_host(tmp_path: Path) -> None:
    root = fake_root(
        tmp_path,
        "0::/user.slice/session-1.scope\n",
        V2,
        {
            "/sys/fs/cgroup/cgroup.controllers": "cpu memory\n",
            "/sys/fs/cgroup/user.slice/cpu.max": "max 100000\n",
            "/sys/fs/cgroup/user.slice/memory.max": "max\n",
            "/sys/fs/cgroup/user.slice/session-1.scope/cgroup.controllers": "cpu memory\n",
            "/sys/fs/cgroup/user.slice/session-1.scope/cpu.max": "max 100000\n",
            "/sys/fs/cgroup/user.slice/session-1.scope/memory.max": "max\n",
            "/sys/fs/cgroup/user.slice/session-1.scope/memory.high": "max\n",
        },
    )
    cgroups = read_cgroups(root)
    assert cgroups == CgroupLimits()
    limits = host(cgroups)
    assert (limits.cores, limits.cores_source, limits.memory_source) == (64, "host", "host")
    assert (limits.memory_total_bytes, limits.memory_available_bytes) == (512 * GIB, 400 * GIB)
    assert limits.cores_text() == "64 cores" and limits_text(limits) == ""


def test_v2_a_controller_not_enabled_sets_nothing_and_says_nothing(tmp_path: Path) -> None:
    root = fake_root(
        tmp_path,
        "0::/a\n",
        V2,
        {
            "/sys/fs/cgroup/cgroup.controllers": "cpu memory\n",
            "/sys/fs/cgroup/a/cgroup.controllers": "\n",  # the parent enabled nothing for it: no interface files
        },
    )
    assert read_cgroups(root) == CgroupLimits()


V1 = [
    ("cgroup", "rw,cpu,cpuacct", "/", "/sys/fs/cgroup/cpu,cpuacct"),
    ("cgroup", "rw,cpuset", "/", "/sys/fs/cgroup/cpuset"),
    ("cgroup", "rw,memory", "/", "/sys/fs/cgroup/memory"),
    ("cgroup2", "rw", "/", "/sys/fs/cgroup/unified"),
]
V1_CGROUP = """\
    4:memory:/process_api/abc
    3:cpuset:/
    2:cpu,cpuacct:/jobs/7
    1:name=systemd:/
    0::/
"""


def v1_files(**changes: str) -> dict[str, str]:
    files = {
        "/sys/fs/cgroup/unified/cgroup.controllers": "\n",  # a hybrid system: the v1 hierarchies hold the controllers
        "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
        "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n",
        "/sys/fs/cgroup/cpu,cpuacct/jobs/cpu.cfs_quota_us": "300000\n",
        "/sys/fs/cgroup/cpu,cpuacct/jobs/cpu.cfs_period_us": "100000\n",
        "/sys/fs/cgroup/cpu,cpuacct/jobs/7/cpu.cfs_quota_us": "-1\n",
        "/sys/fs/cgroup/cpu,cpuacct/jobs/7/cpu.cfs_period_us": "100000\n",
        "/sys/fs/cgroup/cpuset/cpuset.cpus": "0-7\n",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n",
        "/sys/fs/cgroup/memory/memory.usage_in_bytes": f"{5 * GIB}\n",
        "/sys/fs/cgroup/memory/process_api/memory.limit_in_bytes": "9223372036854771712\n",
        "/sys/fs/cgroup/memory/process_api/memory.usage_in_bytes": f"{3 * GIB}\n",
        "/sys/fs/cgroup/memory/process_api/abc/memory.limit_in_bytes": f"{2 * GIB}\n",
        "/sys/fs/cgroup/memory/process_api/abc/memory.usage_in_bytes": f"{GIB}\n",
        "/sys/fs/cgroup/memory/process_api/abc/memory.stat": f"cache 5\ninactive_file 7\ntotal_inactive_file {MIB}\n",
    }
    files.update({f"/sys/fs/cgroup/{k.replace('__', '/')}": v for k, v in changes.items()})
    return files


def test_v1_nested_paths_and_a_parent_quota(tmp_path: Path) -> None:
    root = fake_root(tmp_path, V1_CGROUP, V1, v1_files())
    cgroups = read_cgroups(root)
    assert cgroups.quota == Limit(3.0, "cgroup v1 quota", str(root / "sys/fs/cgroup/cpu,cpuacct/jobs/cpu.cfs_quota_us"))
    assert cgroups.cpuset == Limit(8.0, "cgroup v1 cpuset", str(root / "sys/fs/cgroup/cpuset/cpuset.cpus"))
    memory = root / "sys/fs/cgroup/memory/process_api/abc/memory.limit_in_bytes"
    assert cgroups.memory == Limit(float(2 * GIB), "cgroup v1 memory limit", str(memory))
    assert cgroups.memory_headroom_bytes == GIB + MIB and cgroups.notes == ()  # total_inactive_file: the hierarchy's
    limits = host(cgroups, cores=8, affinity=8)
    assert limits.cores_text() == "3 of 8 cores: cgroup v1 quota" and limits.core_count == 3
    assert limits.memory_text() == "2.0 of 512.0 GiB: cgroup v1 memory limit"


def test_v1_a_cpuset_that_explains_the_affinity_is_named(tmp_path: Path) -> None:
    root = fake_root(
        tmp_path,
        V1_CGROUP,
        V1,
        v1_files(**{"cpuset__cpuset.cpus": "0-1,4\n", "cpu,cpuacct__jobs__cpu.cfs_quota_us": "-1\n"}),
    )
    limits = host(read_cgroups(root), cores=8, affinity=3)
    assert (limits.cores, limits.cores_source) == (3, "cgroup v1 cpuset")
    narrower = host(read_cgroups(root), cores=8, affinity=2)  # taskset inside the cpuset
    assert (narrower.cores, narrower.cores_source, narrower.cores_file) == (2, "CPU affinity", None)


def test_v1_docker_without_a_cgroup_namespace_mounts_its_own_cgroup(tmp_path: Path) -> None:
    # The container sees its cgroup as the mount's root: /proc/self/cgroup's path is the mount root itself.
    mounts = [
        ("cgroup", "rw,cpu,cpuacct", "/docker/abc", "/sys/fs/cgroup/cpu,cpuacct"),
        ("cgroup", "rw,memory", "/docker/abc", "/sys/fs/cgroup/memory"),
    ]
    root = fake_root(
        tmp_path,
        "3:memory:/docker/abc\n2:cpu,cpuacct:/docker/abc\n",
        mounts,
        {
            "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "50000\n",
            "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n",
            "/sys/fs/cgroup/memory/memory.limit_in_bytes": f"{GIB}\n",
            "/sys/fs/cgroup/memory/memory.usage_in_bytes": f"{100 * MIB}\n",
        },
    )
    limits = host(read_cgroups(root), cores=2, affinity=2)
    assert (limits.cores, limits.core_count, limits.memory_total_bytes) == (0.5, 1, GIB)
    assert limits.memory_available_bytes == GIB - 100 * MIB and limits.notes == ()


def test_garbage_in_a_file_falls_back_to_the_host_with_a_note(tmp_path: Path) -> None:
    root = fake_root(
        tmp_path,
        "0::/a\n",
        V2,
        {
            "/sys/fs/cgroup/cgroup.controllers": "cpu memory\n",
            "/sys/fs/cgroup/a/cgroup.controllers": "cpu memory\n",
            "/sys/fs/cgroup/a/cpu.max": "banana\n",
            "/sys/fs/cgroup/a/memory.max": f"{GIB}\n",
            "/sys/fs/cgroup/a/memory.current": "lots\n",
        },
    )
    cgroups = read_cgroups(root)
    assert cgroups.quota is None and cgroups.memory is None
    assert cgroups.notes == (
        f"CPU quota unknown ({root}/sys/fs/cgroup/a/cpu.max says 'banana'): using the affinity",
        f"memory limit unknown ({root}/sys/fs/cgroup/a/memory.current says 'lots'): using the host's memory",
    )
    limits = host(cgroups)
    assert (limits.cores, limits.memory_total_bytes, limits.memory_available_bytes) == (64, 512 * GIB, 400 * GIB)
    assert limits.notes == cgroups.notes


def test_a_file_that_cannot_be_read_is_a_note(tmp_path: Path) -> None:
    root = fake_root(
        tmp_path,
        "0::/\n",
        V2,
        {
            "/sys/fs/cgroup/cgroup.controllers": "cpu memory\n",
            "/sys/fs/cgroup/memory.max": "max\n",
            "/sys/fs/cgroup/memory.high": f"{GIB}\n",
            "/sys/fs/cgroup/memory.current": f"{GIB // 2}\n",
        },
    )
    (root / "sys/fs/cgroup/cpu.max").mkdir()  # reading it fails as a permission would, also for root
    (root / "sys/fs/cgroup/memory.stat").write_bytes(b"inactive_file \xff\n")
    cgroups = read_cgroups(root)
    assert cgroups.quota is None and cgroups.memory is None
    assert cgroups.notes == (
        f"CPU quota unknown (cannot read {root}/sys/fs/cgroup/cpu.max: Is a directory): using the affinity",
        f"memory limit unknown ({root}/sys/fs/cgroup/memory.stat is not text): using the host's memory",
    )


@pytest.mark.parametrize("text", ["", "100000", "1 2 3", "-5 100000", "150000 0", "1.5 100000"])
def test_odd_cpu_max_values_are_notes(tmp_path: Path, text: str) -> None:
    root = fake_root(
        tmp_path, "0::/\n", V2, {"/sys/fs/cgroup/cgroup.controllers": "cpu\n", "/sys/fs/cgroup/cpu.max": text}
    )
    cgroups = read_cgroups(root)
    if text == "100000":  # a quota without a period: the kernel's default period
        assert cgroups.quota is not None and cgroups.quota.value == 1.0 and cgroups.notes == ()
    else:
        assert cgroups.quota is None and len(cgroups.notes) == 1 and "cpu.max" in cgroups.notes[0]


def test_missing_files_are_notes(tmp_path: Path) -> None:
    files = v1_files()
    del files["/sys/fs/cgroup/memory/process_api/abc/memory.limit_in_bytes"]
    del files["/sys/fs/cgroup/cpuset/cpuset.cpus"]
    (tmp_path / "sys/fs/cgroup/cpuset").mkdir(parents=True)
    root = fake_root(tmp_path, V1_CGROUP, V1, files)
    cgroups = read_cgroups(root)
    assert cgroups.memory is None and cgroups.cpuset is None and cgroups.quota is not None
    assert cgroups.notes == (
        f"cpuset unknown ({root}/sys/fs/cgroup/cpuset/cpuset.cpus is missing): using the affinity",
        f"memory limit unknown ({root}/sys/fs/cgroup/memory/process_api/abc/memory.limit_in_bytes is missing): "
        "using the host's memory",
    )


def test_a_cgroup_gone_because_the_process_moved_is_a_note(tmp_path: Path) -> None:
    root = fake_root(tmp_path, V1_CGROUP.replace("/process_api/abc", "/process_api/gone"), V1, v1_files())
    cgroups = read_cgroups(root)
    assert cgroups.memory is None and cgroups.quota is not None
    assert cgroups.notes == (
        f"cgroup v1 memory: {root}/sys/fs/cgroup/memory/process_api/gone is gone (the process "
        "was moved to another cgroup?): using the host's figures for it",
    )


def test_a_process_moved_to_another_cgroup_is_read_there_next_time(tmp_path: Path) -> None:
    root = fake_root(
        tmp_path,
        "0::/a\n",
        V2,
        {
            "/sys/fs/cgroup/cgroup.controllers": "cpu\n",
            "/sys/fs/cgroup/a/cgroup.controllers": "cpu\n",
            "/sys/fs/cgroup/a/cpu.max": "100000 100000\n",
            "/sys/fs/cgroup/b/cgroup.controllers": "cpu\n",
            "/sys/fs/cgroup/b/cpu.max": "250000 100000\n",
        },
    )
    first = read_cgroups(root).quota
    (root / "proc/self/cgroup").write_text("0::/b\n")
    second = read_cgroups(root).quota
    assert (first and first.value, second and second.value) == (1.0, 2.5)


def test_a_cgroup_outside_every_mount_is_a_note(tmp_path: Path) -> None:
    mounts = [("cgroup2", "rw", "/kubepods/pod1", "/sys/fs/cgroup")]
    root = fake_root(tmp_path, "0::/../other\n", mounts, {"/sys/fs/cgroup/cgroup.controllers": "cpu memory\n"})
    cgroups = read_cgroups(root)
    assert (cgroups.quota, cgroups.memory) == (None, None)
    assert cgroups.notes[0] == (
        "cgroup v2 cpu: its cgroup /../other is not under a mount this process sees: using the host's figures for it"
    )


def test_no_proc_or_garbage_in_it_is_the_host_with_a_note(tmp_path: Path) -> None:
    nothing = read_cgroups(tmp_path)
    assert (nothing.quota, nothing.memory) == (None, None)
    assert nothing.notes[0].startswith("cannot read the process's cgroups (") and len(nothing.notes) == 1
    root = fake_root(tmp_path / "garbage", "this is not a cgroup file\n", V2, {})
    garbage = read_cgroups(root)
    assert (garbage.quota, garbage.memory) == (None, None) and len(garbage.notes) == 1
    unreadable_bytes = fake_root(tmp_path / "bytes", "0::/\n", V2, {})
    (unreadable_bytes / "proc/self/cgroup").write_bytes(b"\xff\xfe0::/\n")
    assert len(read_cgroups(unreadable_bytes).notes) == 1


def test_a_mount_point_with_a_space_is_unescaped(tmp_path: Path) -> None:
    mounts = [("cgroup2", "rw", "/", "/sys/fs/my\\040cgroup")]
    root = fake_root(
        tmp_path,
        "0::/\n",
        mounts,
        {"/sys/fs/my cgroup/cgroup.controllers": "cpu\n", "/sys/fs/my cgroup/cpu.max": "200000 100000\n"},
    )
    quota = read_cgroups(root).quota
    assert quota is not None and quota.value == 2.0


def test_parse_cpu_list() -> None:
    assert parse_cpu_list("0-3,8,10-11\n") == 7
    assert parse_cpu_list("5") == 1
    for bad in ("", "3-1", "a-b", "0-3,,4"):
        with pytest.raises(ValueError):
            parse_cpu_list(bad)


# ---------------------------------------------------------------- the limits in advice, report and header

CONFINED = Limits(
    cores=1.5,
    cores_source="cgroup v2 quota",
    cores_file="/sys/fs/cgroup/cpu.max",
    host_cores=64,
    affinity_cores=64,
    memory_total_bytes=16 * GIB,
    memory_available_bytes=10 * GIB,
    memory_source="cgroup v2 memory.max",
    memory_file="/sys/fs/cgroup/memory.max",
    host_memory_total_bytes=512 * GIB,
    host_memory_available_bytes=400 * GIB,
    memory_usage_bytes=6 * GIB,
    notes=("cpuset unknown (x): using the affinity",),
)


def test_warnings_and_the_json_machine_block_say_where_a_limit_came_from() -> None:
    from tests.helpers import summary

    machine = MachineFacts(usable_cores=1.5, memory_total_bytes=16 * GIB, limits=CONFINED)
    rows = [summary(0, 300), summary(2, 500, load_ms=1.0)]
    advice = advise(rows, machine)
    assert (
        "2 workers on 1.5 usable cores (1.5 of 64 cores: cgroup v2 quota): workers past the core count compete "
        "with each other and with the training step for CPU" in advice.warnings
    )
    assert "cpuset unknown (x): using the affinity" in advice.warnings
    block = report_json(rows, advice, machine)["machine"]
    assert block == {
        "usable_cores": 1.5,
        "memory_total_mb": 16 * 1024,
        "start_method": "fork",
        "cores_source": "cgroup v2 quota",
        "cores_file": "/sys/fs/cgroup/cpu.max",
        "host_cores": 64,
        "affinity_cores": 64,
        "memory_available_mb": 10 * 1024,
        "memory_source": "cgroup v2 memory.max",
        "memory_file": "/sys/fs/cgroup/memory.max",
        "host_memory_total_mb": 512 * 1024,
        "limit_notes": ["cpuset unknown (x): using the affinity"],
    }
    assert machine.core_count == 2
    unconfined = advise(rows, MachineFacts(usable_cores=1, memory_total_bytes=16 * GIB))
    assert (
        "2 workers on 1 usable core: workers past the core count compete with each other and with the "
        "training step for CPU" in unconfined.warnings
    )


def test_the_header_text_fits_and_names_the_source() -> None:
    import dataclasses

    assert limits_text(None) == ""
    assert limits_text(CONFINED) == "1.5 of 64 cores, 16.0 GiB: cgroup"
    cores_only = dataclasses.replace(CONFINED, memory_source="host", memory_total_bytes=512 * GIB)
    assert limits_text(cores_only) == "1.5 of 64 cores: cgroup quota"
    memory_only = dataclasses.replace(CONFINED, cores=64, cores_source="host")
    assert limits_text(memory_only) == "16.0 of 512.0 GiB: cgroup limit"
    assert limits_text(CONFINED, short=True) == "1.5 cores, 16.0 GiB: cgroup"
    assert limits_text(cores_only, short=True) == "1.5 cores: cgroup quota"
    assert limits_text(memory_only, short=True) == "16.0 GiB: cgroup limit"
    mixed = dataclasses.replace(CONFINED, cores=4, cores_source="CPU affinity", memory_source="cgroup v2 memory.high")
    assert limits_text(mixed) == "4 of 64 cores: CPU affinity, 16.0 GiB: cgroup memory.high"


# ---------------------------------------------------------------- a process really confined


def _v1_hierarchy(controller: str) -> tuple[Path, str] | None:
    """This process's v1 ``controller`` hierarchy mounted at /sys/fs/cgroup/<controller>: (its directory, path)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _id, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            mount = Path("/sys/fs/cgroup") / controllers
            if (mount / "cgroup.procs").exists():
                return mount / path.lstrip("/"), path
    return None


@pytest.fixture
def confining_cgroups() -> Iterator[list[Path]]:
    """Child v1 cgroups of this process's own, with a 0.5 CPU quota and a 3 GiB memory limit; removed after."""
    if os.geteuid() != 0:
        pytest.skip("needs root to make cgroups")
    cpu, memory = _v1_hierarchy("cpu"), _v1_hierarchy("memory")
    if cpu is None or memory is None:
        pytest.skip("no cgroup v1 cpu and memory hierarchies under /sys/fs/cgroup")
    name = f"loadertop-test-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    made: list[Path] = []
    try:
        for parent in (cpu[0], memory[0]):  # under this process's own cgroups: a nested path
            try:
                (parent / name).mkdir()
            except OSError as exc:
                pytest.skip(f"cannot make a cgroup under {parent}: {exc.strerror}")
            made.append(parent / name)
        (made[0] / "cpu.cfs_period_us").write_text("100000")
        (made[0] / "cpu.cfs_quota_us").write_text("50000")
        (made[1] / "memory.limit_in_bytes").write_text(str(3 * GIB))
        yield made
    finally:
        for directory in made:
            try:
                directory.rmdir()
            except OSError:
                pass


def test_a_process_confined_by_real_cgroups_is_seen_so(confining_cgroups: list[Path], tmp_path: Path) -> None:
    cpu_dir, memory_dir = confining_cgroups
    probe = textwrap.dedent("""
        import json, warnings
        import torch
        from loadertop import DataLoader
        from loadertop.core.policy.advice import machine_facts
        from loadertop.core.probe.autotune_host import default_budget
        from loadertop.core.measure.limits import read_limits
        from loadertop.core.measure.system import usable_cores, usable_cores_exact
        limits = read_limits()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            DataLoader(torch.utils.data.TensorDataset(torch.zeros(4)), num_workers=1)
        budget = default_budget()
        print(json.dumps({"cores": limits.cores, "source": limits.cores_source, "file": limits.cores_file,
                          "memory_total": limits.memory_total_bytes, "memory_source": limits.memory_source,
                          "available": limits.memory_available_bytes, "int": usable_cores(),
                          "exact": usable_cores_exact(), "facts": machine_facts().usable_cores,
                          "budget_cores": budget.cores, "budget_memory": budget.memory_bytes,
                          "warnings": [str(w.message) for w in caught], "notes": list(limits.notes)}))
    """)
    (tmp_path / "probe.py").write_text(probe)
    # The shell joins the cgroups, then becomes Python: the process is confined from its first instruction.
    join = 'echo $$ > "$1/cgroup.procs" && echo $$ > "$2/cgroup.procs" && shift 2 && exec "$@"'
    result = subprocess.run(
        ["sh", "-c", join, "sh", str(cpu_dir), str(memory_dir), sys.executable, str(tmp_path / "probe.py")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert (seen["cores"], seen["source"], seen["file"]) == (0.5, "cgroup v1 quota", f"{cpu_dir}/cpu.cfs_quota_us")
    assert (seen["int"], seen["exact"], seen["facts"], seen["budget_cores"]) == (1, 0.5, 0.5, 0.5)
    assert (seen["memory_total"], seen["memory_source"]) == (3 * GIB, "cgroup v1 memory limit")
    # Half of what the limit leaves: at most half the limit (the host's half would be far more here).
    assert 0 < seen["available"] < 3 * GIB and 0 < seen["budget_memory"] <= 1.5 * GIB
    assert seen["notes"] == []
    host_cores = os.cpu_count()
    assert seen["warnings"] == [
        "This DataLoader will create 1 worker processes in total, more than the 0.5 usable cores "
        f"(0.5 of {host_cores} cores: cgroup v1 quota) this process may use: workers past the cores compete for CPU "
        "and can make loading slower; lower num_workers if so (loadertop sweep measures it)"
    ]


@pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores and CPU affinity"
)
def test_a_changed_affinity_is_seen_at_once_not_after_the_cache() -> None:
    from loadertop.core.measure.limits import current_limits

    before = os.sched_getaffinity(0)
    first = current_limits()
    try:
        os.sched_setaffinity(0, {min(before)})
        assert current_limits().affinity_cores == 1 != first.affinity_cores
    finally:
        os.sched_setaffinity(0, before)
    assert current_limits().affinity_cores == len(before)
