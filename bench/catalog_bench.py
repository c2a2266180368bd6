"""Catalog query benchmark: a real ``dramaverse serve`` process over synthetic catalogs.

    python -m bench.catalog_bench [--sizes 20000,100000] [--duration 10] [--connections 8]

For each catalog size: generate a catalog (``bench.gen_catalog``, seed 42) in a temporary
directory, import it with ``python -m dramaverse seed``, start ``python -m dramaverse serve`` on
a free loopback port, wait for ``/api/health``, then load each scenario in turn with
``bench.loadgen.run_load`` (closed loop, one request in flight per connection):

    a_default   page 1, weighted sort [popularity_rank desc, rating desc]
    b_unsorted  page 1, sort=[]
    c_filtered  search + genre + two countries + minRating, aired_date sort, page 3
    d_deep_page page 200 of the sort of a_default
    e_health    /api/health (the server's fixed per-request cost)

One JSON document goes to stdout (and to ``--json-out``); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import trio

from bench.loadgen import HTTPResponse, ProtocolError, http_get, run_load
from bench.services import (
    BackendError,
    add_arguments,
    check_arguments,
    describe,
    serve_arguments,
    server_backends,
    wait_all_workers,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
SEED = 42
HEALTH_DEADLINE_S = 120.0
SEED_TIMEOUT_S = 1800.0
STOP_GRACE_S = 15.0

# Environment that would point the server at something other than its temporary SQLite file.
_SCRUBBED_ENV = ("DATABASE_URL", "REDIS_URL", "ACCESS_LOG", "HOST", "PORT", "CATALOG_POLL_SECONDS")

# Scenario (c): "love" is the most frequent title word of the generator; with one genre, two
# countries and a rating floor it leaves a few hundred (20k records) to a few thousand (100k).
C_SEARCH = "love"
C_GENRES = "Romance"
C_COUNTRIES = "South Korea,China"
C_MIN_RATING = "7"
DEFAULT_SORT = [{"key": "popularity_rank", "order": "desc"}, {"key": "rating", "order": "desc"}]
DATE_SORT = [{"key": "aired_date", "order": "desc"}]


class BenchError(RuntimeError):
    """The benchmark cannot go on (server failed to start, a scenario is not answered 200...)."""


def log(msg: str) -> None:
    print(f"[catalog_bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _sort_param(sort: list[dict[str, str]]) -> str:
    return urllib.parse.quote(json.dumps(sort, separators=(",", ":")), safe="")


def _dramas_path(**params: str) -> str:
    # Keep the order the web client uses; quote every value (commas included).
    return "/api/dramas?" + "&".join(
        f"{k}={v if k == 'sort' else urllib.parse.quote(v, safe='')}" for k, v in params.items()
    )


def scenarios() -> dict[str, str]:
    default_sort = _sort_param(DEFAULT_SORT)
    return {
        "a_default": _dramas_path(
            page="1", limit="24", search="", minRating="0", sort=default_sort
        ),
        "b_unsorted": _dramas_path(page="1", limit="24", search="", minRating="0", sort="%5B%5D"),
        "c_filtered": _dramas_path(
            page="3",
            limit="24",
            search=C_SEARCH,
            minRating=C_MIN_RATING,
            genres=C_GENRES,
            countries=C_COUNTRIES,
            sort=_sort_param(DATE_SORT),
        ),
        "d_deep_page": _dramas_path(
            page="200", limit="24", search="", minRating="0", sort=default_sort
        ),
        "e_health": "/api/health",
    }


# --------------------------------------------------------------------------------------------
# Process helpers
# --------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text("utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                out.extend(int(c) for c in (task / "children").read_text().split())
    except OSError:
        pass
    return out


def rss_mb(pid: int) -> float | None:
    """Resident set size of ``pid`` and its descendants, in MB (None if unavailable)."""
    total_kb = 0
    seen = False
    stack = [pid]
    while stack:
        p = stack.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total_kb += int(line.split()[1])
                seen = True
                break
        stack.extend(_children(p))
    return round(total_kb / 1024, 1) if seen else None


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT, then SIGTERM, then SIGKILL, waiting a bit after each."""
    for sig, wait in ((signal.SIGINT, STOP_GRACE_S), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            log(f"server pid {proc.pid} still running after {sig.name}")


def base_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
    env.update(
        DRAMAVERSE_DATA_DIR=str(data_dir),
        JWT_SECRET=secrets.token_hex(32),
        DRAMAVERSE_ENV="development",
        PYTHONUNBUFFERED="1",
    )
    return env


def _run_logged(cmd: list[str], *, env: dict[str, str], cwd: Path, log_path: Path) -> float:
    t0 = time.perf_counter()
    with log_path.open("ab") as out:
        proc = subprocess.run(
            cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, timeout=SEED_TIMEOUT_S
        )
    if proc.returncode != 0:
        raise BenchError(
            f"{' '.join(cmd[1:])} failed with exit code {proc.returncode}:\n{_tail(log_path)}"
        )
    return time.perf_counter() - t0


def _check(response: HTTPResponse, name: str, path: str) -> None:
    if response.status != 200:
        raise BenchError(
            f"scenario {name}: GET {path} answered {response.status}: {response.body[:300]!r}"
        )


async def _wait_healthy(proc: subprocess.Popen[bytes], port: int, log_path: Path) -> float:
    t0 = time.perf_counter()
    deadline = t0 + HEALTH_DEADLINE_S
    last_error = "no answer yet"
    while True:
        code = proc.poll()
        if code is not None:
            raise BenchError(
                f"server exited with code {code} before it was ready:\n{_tail(log_path)}"
            )
        try:
            resp = await http_get(HOST, port, "/api/health", time_limit=5.0)
            if resp.status == 200:
                return time.perf_counter() - t0
            last_error = f"status {resp.status}"
        except (OSError, trio.TooSlowError, trio.BrokenResourceError, ProtocolError) as exc:
            last_error = f"{type(exc).__name__}: {exc}"
        if time.perf_counter() > deadline:
            raise BenchError(
                f"server not healthy after {HEALTH_DEADLINE_S:.0f}s ({last_error}):\n"
                f"{_tail(log_path)}"
            )
        await trio.sleep(0.25)


def _ratio(num: float | None, den: float | None) -> float | None:
    if not num or not den:
        return None
    return round(num / den, 2)


def _ratios(results: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """Median-latency ratios: how much costlier than /api/health, and against each other."""
    p50 = {name: r.get("p50_ms") for name, r in results.items()}
    health = p50.get("e_health")
    out: dict[str, float | None] = {}
    for name in ("a_default", "b_unsorted", "c_filtered", "d_deep_page"):
        out[f"{name[0]}_over_e"] = _ratio(p50.get(name), health)
    out["a_over_b"] = _ratio(p50.get("a_default"), p50.get("b_unsorted"))
    out["d_over_a"] = _ratio(p50.get("d_deep_page"), p50.get("a_default"))
    return out


# --------------------------------------------------------------------------------------------
# One catalog size
# --------------------------------------------------------------------------------------------


def bench_size(size: int, args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix=f"dramaverse-bench-{size}-"))
    log(f"--- {size} records (temp dir {tmp})")
    log_path = tmp / "server.log"
    proc: subprocess.Popen[bytes] | None = None
    backends = contextlib.ExitStack()
    try:
        env = base_env(tmp)
        env.update(backends.enter_context(server_backends(args.database_url, args.redis_url)))
        catalog = tmp / "catalog.json"

        gen_env = dict(env)
        gen_env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p
        )
        gen_cmd = [sys.executable, "-m", "bench.gen_catalog", "--count", str(size)]
        gen_cmd += ["--seed", str(SEED), "--out", str(catalog)]
        gen_s = _run_logged(gen_cmd, env=gen_env, cwd=REPO_ROOT, log_path=tmp / "gen.log")
        log(f"generated {catalog.stat().st_size / 1e6:.1f} MB in {gen_s:.1f}s")

        seed_cmd = [sys.executable, "-m", "dramaverse", "seed", str(catalog)]
        seed_s = _run_logged(seed_cmd, env=env, cwd=tmp, log_path=tmp / "seed.log")
        log(f"seeded in {seed_s:.1f}s")

        port = args.port or free_port()
        serve_env = dict(env, RATE_LIMIT_USER="off", RATE_LIMIT_AUTH="off")
        serve_cmd = [sys.executable, "-m", "dramaverse", "serve", "--host", HOST]
        serve_cmd += ["--port", str(port), *serve_arguments(args.workers)]
        with log_path.open("ab") as out:
            proc = subprocess.Popen(
                serve_cmd, env=serve_env, cwd=tmp, stdout=out, stderr=subprocess.STDOUT
            )
        log(f"server pid {proc.pid} on {HOST}:{port}; waiting for /api/health")
        server = proc
        startup_s = trio.run(_wait_healthy, server, port, log_path)
        if args.workers > 1:
            startup_s += trio.run(wait_all_workers, HOST, port, args.workers)
        rss_start = rss_mb(server.pid)
        log(f"healthy after {startup_s:.1f}s, RSS {rss_start} MB")

        results: dict[str, dict[str, Any]] = {}
        for name, path in scenarios().items():
            results[name] = trio.run(_measure, name, path, port, args, server.poll)
        rss_end = rss_mb(server.pid)
        return {
            "records": size,
            "catalog_mb": round(catalog.stat().st_size / 1e6, 1),
            "seed_s": round(seed_s, 2),
            "startup_s": round(startup_s, 2),
            "server_rss_mb": rss_start,
            "server_rss_mb_end": rss_end,
            "scenarios": results,
            "ratios": _ratios(results),
        }
    finally:
        if proc is not None:
            stop_process(proc)
            if proc.returncode not in (0, -signal.SIGINT, None):
                log(f"server exit code {proc.returncode}")
        backends.close()  # drops the fresh PostgreSQL schema, if any
        if args.keep_tmp:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


async def _measure(
    name: str,
    path: str,
    port: int,
    args: argparse.Namespace,
    poll: Callable[[], int | None],
) -> dict[str, Any]:
    if poll() is not None:
        raise BenchError(f"server died before scenario {name}")
    resp = await http_get(HOST, port, path, time_limit=60.0)
    _check(resp, name, path)
    extra: dict[str, Any] = {"path": path, "bytes": len(resp.body)}
    if name != "e_health":
        try:
            doc = json.loads(resp.body)
        except ValueError:
            raise BenchError(
                f"scenario {name}: response is not JSON: {resp.body[:200]!r}"
            ) from None
        extra["totalItems"] = doc.get("totalItems")
        extra["returned"] = len(doc.get("dramas") or [])
    log(
        f"{name}: {len(resp.body)} bytes"
        + (f", totalItems={extra['totalItems']}" if "totalItems" in extra else "")
        + f"; loading {args.duration:g}s x {args.connections} connections"
    )
    result = await run_load(
        HOST,
        port,
        path,
        connections=args.connections,
        duration=args.duration,
        warmup=args.warmup,
    )
    log(
        f"{name}: {result['rps']:.0f} rps, p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, "
        f"errors {result['errors']}, non-2xx {result['non_2xx']}"
    )
    if result["errors"] or result["non_2xx"]:
        log(f"WARNING {name}: {result['errors']} errors, {result['non_2xx']} non-2xx responses")
    return {**result, **extra}


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of integers: {text}"
        ) from None
    if not sizes or any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError("sizes must be positive")
    return sizes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.catalog_bench", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--sizes", type=_sizes, default=[20000, 100000], help="20000,100000")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per scenario")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per scenario")
    parser.add_argument("--connections", type=int, default=8, help="keep-alive connections")
    parser.add_argument("--port", type=int, default=0, help="server port (0: pick a free one)")
    parser.add_argument("--json-out", type=Path, help="also write the JSON document here")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the temporary dirs")
    add_arguments(parser)  # --workers, --database-url, --redis-url (bench/services.py)
    args = parser.parse_args(argv)
    check_arguments(parser, args)

    doc: dict[str, Any] = {
        "benchmark": "catalog",
        "connections": args.connections,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "backends": describe(args.workers, args.database_url, args.redis_url),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "implementation": platform.python_implementation(),
            "platform": platform.platform(),
        },
        "scenario_c": {
            "search": C_SEARCH,
            "genres": C_GENRES,
            "countries": C_COUNTRIES,
            "minRating": C_MIN_RATING,
        },
        "ratios_basis": "p50_ms",
        "results": [],
    }
    status = 0
    try:
        for size in args.sizes:
            doc["results"].append(bench_size(size, args))
    except (BenchError, BackendError) as exc:
        log(f"FAILED: {exc}")
        doc["error"] = str(exc).splitlines()[0]
        status = 1
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    # The document is printed even after a failure, with the sizes completed so far.
    text = json.dumps(doc, indent=2)
    print(text)
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(text + "\n", "utf-8")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
