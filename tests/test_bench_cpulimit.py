"""bench/cpulimit.py: the quota files it writes, its stats and its errors (a directory stands in
for the cgroup hierarchy; the fan-out benchmark's --worker-cpus uses the real one)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.cpulimit import PERIOD_US, CpuLimit, CpuLimitError
from bench.fanout_bench import main as fanout_main


def test_v1_group_gets_quota_period_and_process(tmp_path: Path) -> None:
    limit = CpuLimit(0.5, root=tmp_path)
    assert limit.version == 1
    group = limit.attach(4242)
    assert (group / "cpu.cfs_period_us").read_text() == str(PERIOD_US)
    assert (group / "cpu.cfs_quota_us").read_text() == str(PERIOD_US // 2)
    assert (group / "cgroup.procs").read_text() == "4242"
    (group / "cpu.stat").write_text("nr_periods 10\nnr_throttled 4\nthrottled_time 2500000000\n")
    assert limit.stats() == [
        {"group": group.name, "periods": 10, "periods_throttled": 4, "throttled_s": 2.5}
    ]


def test_v2_group_writes_cpu_max(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpu memory\n")
    limit = CpuLimit(1.25, root=tmp_path)
    assert limit.version == 2
    group = limit.attach(7)
    assert (group / "cpu.max").read_text() == f"{round(1.25 * PERIOD_US)} {PERIOD_US}"
    (group / "cpu.stat").write_text(
        "usage_usec 9\nnr_periods 3\nnr_throttled 1\nthrottled_usec 500000\n"
    )
    assert limit.stats()[0]["throttled_s"] == 0.5


def test_close_moves_processes_back_and_removes_groups(tmp_path: Path) -> None:
    limit = CpuLimit(0.5, root=tmp_path)
    group = limit.attach(99)
    # a real group has only kernel files; here close() can only empty what it wrote
    for name in ("cpu.cfs_period_us", "cpu.cfs_quota_us"):
        (group / name).unlink()
    (group / "cgroup.procs").unlink()
    limit.close()
    assert not group.exists()
    assert limit.groups == []


@pytest.mark.parametrize("cores", [0.0, -1.0, 65.0])
def test_quota_out_of_range_is_refused(tmp_path: Path, cores: float) -> None:
    with pytest.raises(CpuLimitError, match="between 0.01 and 64"):
        CpuLimit(cores, root=tmp_path)


def test_missing_group_directory_is_one_clear_error(tmp_path: Path) -> None:
    limit = CpuLimit(0.5, root=tmp_path / "absent")
    with pytest.raises(CpuLimitError, match="cannot create cgroup"):
        limit.attach(1)


@pytest.mark.parametrize("value", ["0", "100", "x"])
def test_fanout_refuses_bad_worker_cpus(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        fanout_main(["--worker-cpus", value])
    assert exit_info.value.code == 2
    assert "--worker-cpus" in capsys.readouterr().err
