"""A CPU quota per server worker, for measuring how the server scales on a small machine.

On a machine with two cores, the load generator, PostgreSQL and Redis share the cores with the
workers, so "two workers against one" mostly measures the machine. ``--worker-cpus 0.5`` gives
every worker process its own cgroup with a CFS quota of half a core (a 10 ms period, so a
throttled worker waits at most a few ms): one worker then has half a core, two have half a core
each, and what is left of the machine serves the rest. That is the picture of a deployment in
which every worker has a core of its own and the databases and clients live elsewhere, scaled
down to fit.

Needs a writable cgroup hierarchy with the ``cpu`` controller: cgroup v1 (``/sys/fs/cgroup/cpu``)
or cgroup v2 (``/sys/fs/cgroup`` with ``cpu`` in ``cgroup.controllers``). Anything else is a
:class:`CpuLimitError` with one line saying why.
"""

from __future__ import annotations

import contextlib
import secrets
from pathlib import Path
from typing import Any

PERIOD_US = 10_000
V1_ROOT = Path("/sys/fs/cgroup/cpu")
V2_ROOT = Path("/sys/fs/cgroup")


class CpuLimitError(Exception):
    """The quota cannot be set up on this machine."""


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text)
    except OSError as exc:
        raise CpuLimitError(f"cannot write {path}: {exc.strerror or exc}") from None


class CpuLimit:
    """Own cgroups with a quota of ``cores`` each; :meth:`attach` one process per group."""

    def __init__(self, cores: float, root: Path | None = None) -> None:
        if not 0.01 <= cores <= 64:
            raise CpuLimitError("the quota must be between 0.01 and 64 cores")
        self.cores = cores
        self.groups: list[Path] = []
        self._tag = f"dramaverse-bench-{secrets.token_hex(4)}"
        if root is not None:
            self.version, self.root = (2 if (root / "cgroup.controllers").exists() else 1), root
        elif (V1_ROOT / "cpu.cfs_quota_us").exists():
            self.version, self.root = 1, V1_ROOT
        elif "cpu" in _read(V2_ROOT / "cgroup.controllers").split():
            self.version, self.root = 2, V2_ROOT
            if "cpu" not in _read(V2_ROOT / "cgroup.subtree_control").split():
                _write(V2_ROOT / "cgroup.subtree_control", "+cpu")
        else:
            raise CpuLimitError("no cgroup hierarchy with the cpu controller under /sys/fs/cgroup")

    @property
    def mechanism(self) -> str:
        if self.version == 1:
            return f"cgroup v1 cpu.cfs_quota_us/cfs_period_us, period {PERIOD_US} us"
        return f"cgroup v2 cpu.max, period {PERIOD_US} us"

    def attach(self, pid: int) -> Path:
        """A new group with the quota, holding ``pid`` (and its threads)."""
        group = self.root / f"{self._tag}-{len(self.groups)}"
        try:
            group.mkdir()
        except OSError as exc:
            raise CpuLimitError(f"cannot create cgroup {group}: {exc.strerror or exc}") from None
        self.groups.append(group)
        quota = round(self.cores * PERIOD_US)
        if self.version == 1:
            _write(group / "cpu.cfs_period_us", str(PERIOD_US))
            _write(group / "cpu.cfs_quota_us", str(quota))
        else:
            _write(group / "cpu.max", f"{quota} {PERIOD_US}")
        _write(group / "cgroup.procs", str(pid))
        return group

    def stats(self) -> list[dict[str, Any]]:
        """Per group: CFS periods, periods throttled and seconds throttled so far."""
        out = []
        for group in self.groups:
            stat = dict(
                line.split(maxsplit=1) for line in _read(group / "cpu.stat").splitlines() if line
            )
            if self.version == 1:
                throttled = int(stat.get("throttled_time", 0)) / 1e9
            else:
                throttled = int(stat.get("throttled_usec", 0)) / 1e6
            out.append(
                {
                    "group": group.name,
                    "periods": int(stat.get("nr_periods", 0)),
                    "periods_throttled": int(stat.get("nr_throttled", 0)),
                    "throttled_s": round(throttled, 2),
                }
            )
        return out

    def close(self) -> None:
        """Move what is left back to the root group and remove the groups."""
        for group in self.groups:
            for pid in _read(group / "cgroup.procs").split():
                with contextlib.suppress(OSError):
                    (self.root / "cgroup.procs").write_text(pid)
            with contextlib.suppress(OSError):
                group.rmdir()
        self.groups = []


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""
