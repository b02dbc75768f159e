"""How fast does ``ocproxy import`` bring a log in? Messages/s, end to end.

1. Writes a CSV log of ``--messages`` OCPP 1.6 messages (default 10,000,000) from
   ``--chargers`` simulated chargers: per charger a BootNotification, then a cycle of
   Heartbeat, StatusNotification, Authorize, StartTransaction, MeterValues (three
   samples), StopTransaction, each answered, a few seconds apart, with its own times.
2. Imports it with ``ocproxy import``'s library call (the same as the command: parse,
   correlate, pseudonymise, audit, stage with the proxy's Recorder, merge in one
   transaction) into a fresh recording, with ``--jobs`` processes (default: the CPUs).
3. Prints messages/s and checks the recording holds every message.

    .venv/bin/python bench/import_bench.py [--messages 10000000] [--chargers 200]
        [--jobs N] [--keep DIR [--reuse-log]] [--json results.json]

Target: >= 50,000 messages/s. Exit status 0 when it ran (a missed target is reported).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import duckdb

from ocproxy.audit.auditor import AuditSettings
from ocproxy.importer.logs import LogOptions
from ocproxy.importer.mapping import ColumnMap
from ocproxy.importer.run import import_log
from ocproxy.importer.staging import StagingOptions

TARGET = 50_000.0
T0 = 1_767_254_400.0  # 2026-01-01T08:00:00Z


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


def _cycle(cp: int, n: int, ts: float) -> list[tuple[float, str, list[object]]]:
    """One round of a charger's life: (time, direction, frame) per message."""
    tx = cp * 1_000_000 + n
    stamp = _iso(ts)
    meter = {"timestamp": stamp, "sampledValue": [{"value": str(n * 10), "measurand":
             "Energy.Active.Import.Register", "unit": "Wh"}]}  # fmt: skip
    calls: list[tuple[str, dict[str, object], dict[str, object]]] = [
        ("Heartbeat", {}, {"currentTime": stamp}),
        (
            "StatusNotification",
            {"connectorId": 1, "errorCode": "NoError", "status": "Preparing", "timestamp": stamp},
            {},
        ),
        ("Authorize", {"idTag": f"TAG{cp:05d}"}, {"idTagInfo": {"status": "Accepted"}}),
        (
            "StartTransaction",
            {"connectorId": 1, "idTag": f"TAG{cp:05d}", "meterStart": 0, "timestamp": stamp},
            {"transactionId": tx, "idTagInfo": {"status": "Accepted"}},
        ),
        ("MeterValues", {"connectorId": 1, "transactionId": tx, "meterValue": [meter]}, {}),
        ("MeterValues", {"connectorId": 1, "transactionId": tx, "meterValue": [meter]}, {}),
        ("MeterValues", {"connectorId": 1, "transactionId": tx, "meterValue": [meter]}, {}),
        (
            "StopTransaction",
            {"transactionId": tx, "meterStop": n * 10, "timestamp": stamp},
            {"idTagInfo": {"status": "Accepted"}},
        ),
    ]
    out: list[tuple[float, str, list[object]]] = []
    for k, (action, request, answer) in enumerate(calls):
        mid = f"{cp}-{n}-{k}"
        out.append((ts + k * 5, "to_csms", [2, mid, action, request]))
        out.append((ts + k * 5 + 0.08, "to_charger", [3, mid, answer]))
    return out


def write_log(path: Path, messages: int, chargers: int) -> int:
    """The log, interleaving the chargers; returns the messages written."""
    written = 0
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["time", "charger", "direction", "message"])
        boot = {"chargePointVendor": "ACME", "chargePointModel": "Bench"}
        for cp in range(chargers):
            writer.writerow([_iso(T0), f"CP-{cp:05d}", "to_csms",
                             json.dumps([2, f"b{cp}", "BootNotification", boot])])  # fmt: skip
            answer = {"status": "Accepted", "currentTime": _iso(T0), "interval": 300}
            writer.writerow([_iso(T0 + 0.1), f"CP-{cp:05d}", "to_charger",
                             json.dumps([3, f"b{cp}", answer])])  # fmt: skip
            written += 2
        n = 0
        while written < messages:
            for cp in range(chargers):
                for ts, direction, frame in _cycle(cp, n, T0 + 60 + n * 60):
                    writer.writerow([_iso(ts), f"CP-{cp:05d}", direction,
                                     json.dumps(frame, separators=(",", ":"))])  # fmt: skip
                written += 16
                if written >= messages:
                    break
            n += 1
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=10_000_000)
    parser.add_argument("--chargers", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--keep", type=Path, help="write the log and recording here, and keep them")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--reuse-log", action="store_true", help="with --keep: import DIR/log.csv if it is there"
    )
    args = parser.parse_args(argv)
    work = args.keep or Path(tempfile.mkdtemp(prefix="import-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    log, db = work / "log.csv", work / "imported.duckdb"
    db.unlink(missing_ok=True)
    if args.reuse_log and log.exists():
        with open(log, "rb") as handle:
            written = (
                sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b"")) - 1
            )
        print(f"reusing {log}: {written:,} messages")
    else:
        print(f"writing {args.messages:,} messages of {args.chargers} chargers to {log} ...")
        started = time.perf_counter()
        written = write_log(log, args.messages, args.chargers)
        print(f"  {time.perf_counter() - started:.1f} s, {log.stat().st_size / 1e6:,.0f} MB")
    options = LogOptions(
        str(log), "csv", ColumnMap("time", "message", "charger", "direction"), None, None
    )
    staging = StagingOptions("import:csv", AuditSettings(), b"import-bench-key")
    print(f"ocproxy import with {args.jobs} process(es) ...")
    result = import_log(db, options, staging, args.jobs, lambda _done: None)
    with duckdb.connect(str(db), read_only=True) as con:
        row = con.execute("SELECT count(*) FROM frames").fetchone()
    stored = int(row[0]) if row else 0
    rate = result.messages / result.seconds
    verdict = "met" if rate >= TARGET else "NOT met"
    print(f"  {result.messages:,} messages in {result.seconds:.1f} s: {rate:,.0f} messages/s "
          f"(target >= {TARGET:,.0f}: {verdict}); {stored:,} frames in the recording")  # fmt: skip
    # On a shared machine the wall time says how busy it was; the CPU time says what the
    # import costs: the rate its processes reach on that many idle cores.
    us = result.cpu_s / result.messages * 1e6
    # On idle cores the shares run side by side and the merge after them: the wall time
    # would be the busiest share's CPU time plus the merge's.
    idle_s = max(result.share_cpu_s, default=0.0) + result.merge_cpu_s
    idle = result.messages / idle_s if idle_s else 0.0
    shares = ", ".join(f"{cpu:.1f}" for cpu in result.share_cpu_s)
    print(f"  CPU: {us:.1f} us a message over all processes ({result.cpu_s:.1f} s: shares "
          f"{shares} s, merge {result.merge_cpu_s:.1f} s): {idle:,.0f} messages/s on "
          f"{args.jobs} idle core(s)")  # fmt: skip
    results = {
        "messages": result.messages,
        "seconds": result.seconds,
        "messages_per_s": rate,
        "jobs": args.jobs,
        "cpu_s": result.cpu_s,
        "share_cpu_s": result.share_cpu_s,
        "merge_cpu_s": result.merge_cpu_s,
        "cpu_us_per_message": result.cpu_s / result.messages * 1e6,
        "messages_per_s_idle_cores": idle,
        "load_average": os.getloadavg(),
        "target_met": rate >= TARGET,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if stored != written or result.messages != written:
        print(f"MISMATCH: wrote {written:,}, imported {result.messages:,}, stored {stored:,}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
