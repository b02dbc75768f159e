"""The processes a benchmark puts on loopback: the CSMS, the round-trip loader, and the
relays between them (ocproxy, nginx, the Python splice anchor, mitmdump with the addon).

Every process is started with the benchmark's own Python where it is Python, and is
appended to the caller's ``children()`` list, so that it is killed whatever happens.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
from _harness import (
    STARTUP_TIMEOUT,
    Child,
    free_port,
    wait_listening,
)

WORKLOAD = Path(__file__).with_name("_workload.py")
MITMDUMP = Path(sys.executable).with_name("mitmdump")
DEFAULT_ANCHORS = Path(__file__).resolve().parent.parent.parent / "shared" / "bench-anchors"
SPLICE = "pysplice.py"

# Every relay the benchmarks know; "direct" is no relay at all.
TARGETS = ("direct", "ocproxy", "ocproxy-no-audit", "nginx", "splice", "mitmdump")
MITMDUMP_BARE = "mitmdump-bare"  # mitmdump without the addon: what mitmproxy itself costs
RECORDING_TARGETS = ("ocproxy", "ocproxy-no-audit", "mitmdump")
NGINX_BACKLOG = 4096  # the kernel caps it at net.core.somaxconn


# -- the CSMS and the round-trip loader ----------------------------------------------------


async def start_csms(
    started: list[Child],
    compression: str = "deflate",
    backlog: int | None = None,
    open_timeout: float | None = None,
) -> tuple[Child, int]:
    """``_workload.py csms`` and its port; it also stops when this process is gone."""
    command = [sys.executable, str(WORKLOAD), "csms", "--watch-stdin"]
    command += ["--compression", compression]
    if backlog is not None:
        command += ["--backlog", str(backlog)]
    if open_timeout is not None:
        command += ["--open-timeout", f"{open_timeout:g}"]
    child = await Child.start("csms", *command, stdin_pipe=True)
    started.append(child)
    match = await child.wait_for(r"PORT (\d+)", STARTUP_TIMEOUT)
    return child, int(match.group(1))


async def run_load(
    started: list[Child],
    url: str,
    chargers: int,
    duration: float,
    warmup: float,
    compression: str = "deflate",
) -> dict[str, Any]:
    """``_workload.py load``: its JSON result; fails when a charger did."""
    args = ["--url", url, "--chargers", str(chargers)]
    args += ["--duration", str(duration), "--warmup", str(warmup)]
    args += ["--compression", compression]
    child = await Child.start("load generator", sys.executable, str(WORKLOAD), "load", *args)
    started.append(child)
    code = await child.wait(duration + warmup + 120.0)
    lines = [line for line in child.stdout if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"load generator gave no result: {child.describe()}")
    result: dict[str, Any] = json.loads(lines[-1])
    if code != 0:
        raise RuntimeError(f"load generator failed: {result['errors'][:3]} {child.describe()}")
    return result


# -- relays ---------------------------------------------------------------------------------


def add_relay_options(p: argparse.ArgumentParser) -> None:
    """--anchors and --proxy-args, for a benchmark that starts relays."""
    p.add_argument(
        "--anchors",
        type=Path,
        default=DEFAULT_ANCHORS,
        help="directory holding pysplice.py (default ../shared/bench-anchors from the repo)",
    )
    p.add_argument(
        "--proxy-args",
        default="",
        metavar="ARGS",
        help="more options for every ocproxy proxy, one string (e.g. '--backlog 16384 "
        "--max-pending-dials 500'); $OCPROXY_BENCH_ARGS is added too",
    )


@dataclass(frozen=True)
class RelayOptions:
    workdir: Path  # recordings, nginx's files, mitmproxy's confdir go below it
    anchors: Path = DEFAULT_ANCHORS  # where pysplice.py is
    proxy_args: tuple[str, ...] = ()  # added to every ocproxy command line
    # Sockets a relay may need (two per charger): nginx's worker gets twice as many
    # worker_connections (it warned "not enough, reusing connections" and dropped
    # handshakes at 1,000 chargers with 2,064), and as many open files as allowed.
    max_connections: int = 1024


@dataclass
class Relay:
    target: str
    port: int
    child: Child | None = None  # None: direct, the CSMS itself
    db: Path | None = None  # the recording to check afterwards
    logs: list[Path] = field(default_factory=list)  # files the relay writes its errors to

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def stop(self) -> int | None:
        """SIGTERM and the exit code; None for direct."""
        return None if self.child is None else await self.child.terminate()

    def output(self) -> tuple[str, str]:
        """(stdout tail, stderr and log files) of the relay, for a report."""
        if self.child is None:
            return "", ""
        errors = "".join(self.child.stderr)
        for log in self.logs:
            if log.is_file():
                errors += log.read_text(errors="replace")
        return "".join(self.child.stdout).strip()[-3000:], errors.strip()


def skip_reason(target: str, options: RelayOptions) -> str | None:
    """Why ``target`` cannot run on this machine, or None."""
    if target == "nginx" and shutil.which("nginx", path=_sbin_path()) is None:
        return "skipped: nginx not installed (apt-get install nginx-light)"
    if target == "splice" and not (options.anchors / SPLICE).is_file():
        return f"skipped: no {SPLICE} in {options.anchors} (--anchors DIR)"
    if target.startswith("mitmdump") and not MITMDUMP.exists():
        return f"skipped: no mitmdump next to this Python ({MITMDUMP}; pip install mitmproxy)"
    return None


async def start_relay(
    target: str, started: list[Child], upstream_port: int, options: RelayOptions, tag: str
) -> Relay:
    """``target`` relaying to the CSMS on ``upstream_port``; ``tag`` names its files."""
    if target == "direct":
        return Relay(target, upstream_port)
    if target.startswith("ocproxy"):
        db = options.workdir / f"{tag}.duckdb"
        extra = ["--no-audit"] if target == "ocproxy-no-audit" else []
        child, port = await start_ocproxy(started, upstream_port, db, [*options.proxy_args, *extra])
        return Relay(target, port, child, db)
    if target == "nginx":
        return await start_nginx(started, upstream_port, options, tag)
    if target == "splice":
        port = free_port()
        command = [sys.executable, str(options.anchors / SPLICE), str(port), str(upstream_port)]
        child = await Child.start("pysplice --tap", *command, "--tap")
        started.append(child)
        await wait_listening(port, child)
        return Relay(target, port, child)
    if target.startswith("mitmdump"):
        addon_db = None if target == MITMDUMP_BARE else options.workdir / f"{tag}.duckdb"
        confdir = options.workdir / "mitmproxy-conf"
        child, port = await start_mitmdump(started, upstream_port, addon_db, confdir)
        return Relay(target, port, child, addon_db)
    raise ValueError(f"unknown target {target!r}")


async def start_ocproxy(
    started: list[Child], upstream_port: int, db: Path, extra: list[str]
) -> tuple[Child, int]:
    """``python -m ocproxy proxy --quiet`` recording into ``db``; ``$OCPROXY_BENCH_ARGS``
    and ``extra`` are added to its command line, in that order."""
    args = ["--listen", "127.0.0.1:0", "--upstream", f"ws://127.0.0.1:{upstream_port}"]
    command = [sys.executable, "-m", "ocproxy", "proxy", *args, "--db", str(db), "--quiet"]
    command += shlex.split(os.environ.get("OCPROXY_BENCH_ARGS", "")) + extra
    # A wide console so rich never wraps the "listening on" line.
    # Its working directory is not on its sys.path, so that it runs the ocproxy this
    # benchmark imports (PYTHONPATH may name another copy than the checkout's).
    child = await Child.start("ocproxy proxy", *command, env={"COLUMNS": "250"}, cwd=db.parent)
    started.append(child)
    match = await child.wait_for(r"listening on ws://127\.0\.0\.1:(\d+)", STARTUP_TIMEOUT)
    return child, int(match.group(1))


async def start_mitmdump(
    started: list[Child], upstream_port: int, db: Path | None, confdir: Path
) -> tuple[Child, int]:
    """mitmdump as a reverse proxy; with the ocproxy addon recording into ``db`` unless None."""
    from ocproxy.mitm import addon_path

    command = [
        str(MITMDUMP),
        "--mode",
        f"reverse:http://127.0.0.1:{upstream_port}@127.0.0.1:0",
        "--set",
        f"confdir={confdir}",
        "--set",
        "flow_detail=0",  # no line per flow or message, like ocproxy proxy --quiet
    ]
    if db is not None:
        command += ["-s", str(addon_path()), "--set", f"ocproxy_db={db}"]
    child = await Child.start("mitmdump", *command, cwd=confdir.parent)
    started.append(child)
    match = await child.wait_for(r"listening at 127\.0\.0\.1:(\d+)", STARTUP_TIMEOUT)
    return child, int(match.group(1))


def _sbin_path() -> str:
    return os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])


def nginx_config(port: int, upstream_port: int, directory: Path, max_connections: int) -> str:
    """One master and one worker, no access log, WebSocket upgrade passed to the CSMS;
    every file it writes under ``directory``."""
    user = "user root;\n" if os.geteuid() == 0 else ""  # else the worker runs as nobody
    # No more than the hard limit: nginx would log that raising it failed (then go on).
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    files = (
        max_connections + 64 if hard == resource.RLIM_INFINITY else min(max_connections + 64, hard)
    )
    temp = "\n".join(
        f"    {kind}_temp_path {directory / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""{user}worker_processes 1;
daemon off;
master_process on;
pid {directory / "nginx.pid"};
error_log {directory / "error.log"} warn;
worker_rlimit_nofile {files};
events {{ worker_connections {2 * max_connections}; }}
http {{
    access_log off;
{temp}
    server {{
        listen 127.0.0.1:{port} backlog={NGINX_BACKLOG};
        location / {{
            proxy_pass http://127.0.0.1:{upstream_port};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_set_header Host $host;
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
        }}
    }}
}}
"""


async def start_nginx(
    started: list[Child], upstream_port: int, options: RelayOptions, tag: str
) -> Relay:
    directory = options.workdir / f"nginx-{tag}"
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = directory / "nginx.conf"
    config.write_text(nginx_config(port, upstream_port, directory, options.max_connections))
    nginx = shutil.which("nginx", path=_sbin_path())
    assert nginx is not None, "skip_reason() says when nginx is missing"
    command = [nginx, "-p", f"{directory}/", "-c", str(config), "-e", str(directory / "error.log")]
    child = await Child.start("nginx", *command)
    started.append(child)
    await wait_listening(port, child)
    return Relay("nginx", port, child, logs=[directory / "error.log"])


# -- the recording check ------------------------------------------------------------------------


def verify_recording(db: Path, load: dict[str, Any], proxy_exit: int | None) -> dict[str, Any]:
    """Every CALL sent and every CALLRESULT received is a row in ``frames``, none lost;
    the traffic is valid OCPP, so the live audit found nothing."""
    with duckdb.connect(str(db), read_only=True) as con:

        def one(sql: str) -> Any:
            row = con.execute(sql).fetchone()
            return None if row is None else row[0]

        directions = dict(
            con.execute("SELECT direction, count(*) FROM frames GROUP BY ALL").fetchall()
        )
        found = {
            "frames": one("SELECT count(*) FROM frames"),
            "to_csms": directions.get("to_csms", 0),
            "to_charger": directions.get("to_charger", 0),
            "run_stats_rows": one("SELECT count(*) FROM run_stats"),
            "runs_with_frames_lost": one("SELECT count(*) FROM run_stats WHERE frames_lost > 0"),
            "connections_opened": one(
                "SELECT count(*) FROM connection_opens WHERE handshake_status = 101"
            ),
            "connections_closed": one("SELECT count(*) FROM connection_closes"),
            "malformed": one("SELECT count(*) FROM frames WHERE parse_status <> 'ok'"),
            "unmatched_results": one(
                "SELECT count(*) FROM frames WHERE message_type = 3 AND pairing <> 'matched'"
            ),
            "findings": one("SELECT count(*) FROM findings"),
            "backpressure_waits": one("SELECT sum(backpressure_waits) FROM run_stats"),
            "max_queue_depth": one("SELECT max(max_queue_depth) FROM run_stats"),
        }
    expected = load["calls_sent"] + load["results_received"]
    found["expected_frames"] = expected
    found["ok"] = (
        proxy_exit == 0
        and found["frames"] == expected
        and found["to_csms"] == load["calls_sent"]
        and found["to_charger"] == load["results_received"]
        and found["run_stats_rows"] == 1
        and found["runs_with_frames_lost"] == 0
        and found["findings"] == 0
    )
    return found
