"""``ocproxy audit --jobs N``: audit a big recording with N processes, one share each.

The audit is CPU-bound Python (~40 µs a frame, one core). Rules span all connections
of an identity (2.x message ids are unique per identity), so the recording is split by
identity, never by connection: each worker opens the file read-only and audits its
identities with the same :func:`audit_events` as a single process, and the findings are
merged into the same order. Identical results for any ``jobs`` (a test checks it).
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import duckdb

from ocproxy.audit.auditor import AuditSettings, Finding
from ocproxy.audit.offline import (
    AuditResult,
    AuditScope,
    audit_events,
    audit_recording,
    evidence_frames,
    finding_order,
    open_recording,
    require_identities,
    scope_sql,
)

# Below this many frames a worker's start-up (imports, schema compilation) costs more
# than it saves.
MIN_FRAMES_PER_JOB = 20_000


def audit_file(
    path: str | Path,
    scope: AuditScope | None = None,
    settings: AuditSettings | None = None,
    jobs: int = 1,
    min_frames_per_job: int = MIN_FRAMES_PER_JOB,
) -> AuditResult:
    """``audit_recording`` over the file at ``path``, in up to ``jobs`` processes."""
    scope = scope or AuditScope()
    with open_recording(path) as db:
        require_identities(db, scope.identities, path)
        shares = identity_shares(db, scope, jobs, min_frames_per_job)
        if len(shares) <= 1:
            return audit_recording(db, scope, settings)
    work = [(str(path), replace(scope, identities=share), settings) for share in shares]
    # forkserver: workers start from a clean process, not a copy of this one's threads.
    context = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(max_workers=len(work), mp_context=context) as pool:
        parts = list(pool.map(_audit_share, work))
    findings = sorted((f for part, _ in parts for f in part), key=finding_order)
    identities = {cid: name for _, names in parts for cid, name in names.items()}
    with open_recording(path) as db:
        return findings, evidence_frames(db, findings, identities), identities


def identity_shares(
    db: duckdb.DuckDBPyConnection,
    scope: AuditScope,
    jobs: int,
    min_frames_per_job: int = MIN_FRAMES_PER_JOB,
) -> list[tuple[str, ...]]:
    """Identities in scope split into at most ``jobs`` shares of about equal frames."""
    if jobs <= 1:
        return []
    where, params = scope_sql(scope, db)
    # Every identity in scope, those without frames too (their connections have findings).
    counts = db.execute(
        f"""
        SELECT identity, count(seq) AS frames
        FROM connections LEFT JOIN frames USING (connection_id)
        WHERE {where}
        GROUP BY identity ORDER BY frames DESC, identity
        """,
        params,
    ).fetchall()
    total = sum(n for _, n in counts)
    jobs = min(jobs, len(counts), max(1, total // max(1, min_frames_per_job)))
    if jobs <= 1:
        return []
    # Greedy: the next biggest identity to the lightest share.
    shares: list[list[str]] = [[] for _ in range(jobs)]
    loads = [0] * jobs
    for identity, frames in counts:
        lightest = loads.index(min(loads))
        shares[lightest].append(identity)
        loads[lightest] += frames
    return [tuple(share) for share in shares]


def _audit_share(
    work: tuple[str, AuditScope, AuditSettings | None],
) -> tuple[list[Finding], dict[str, str]]:
    path, scope, settings = work
    with open_recording(path) as db:
        return audit_events(db, scope, settings)
