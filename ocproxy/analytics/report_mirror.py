"""``ocproxy report --mirror``: would the secondary CSMS have served this fleet?

A charger mirrored with ``ocproxy proxy --mirror`` has two recorded connections: its own
(to the primary) and the proxy's leg to the secondary (``mirror_of`` names the first).
Every CALL the charger sent is joined with both answers, in SQL, into one row per
exchange (a temporary table); the rows are then grouped by what was answered, so what
reaches Python is one group per distinct pair of answers, not one row per frame. The
answers are compared as ``ocproxy replay`` compares them
(:mod:`ocproxy.replay.compare`): timestamps, ids such as ``transactionId`` and the
``--ignore`` paths do not count, and are listed as ignored.

The figures: per action, answered the same / differently / with a CALLERROR / not at
all; per charger, what the secondary rejected (BootNotification, tokens, its own
RemoteStart refused); latency p50 / p99 of both CSMSs side by side; the secondary's
own CALLs, allowed or refused; the chargers it never accepted. Rendering is in
:mod:`ocproxy.analytics.mirror_terminal` and :mod:`ocproxy.analytics.html_mirror`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import duckdb

from ocproxy.analytics import mirror_sql as sql
from ocproxy.analytics.sources import open_sources
from ocproxy.audit.offline import require_identities
from ocproxy.errors import ConfigError
from ocproxy.replay.compare import (
    DEFAULT_IGNORES,
    Difference,
    DiffKind,
    IgnoreRules,
    diff_payloads,
    show,
)

SAME, DIFFERENT, CALLERROR, UNANSWERED, CUT_OFF, NOT_SENT = (
    "same", "different", "CALLERROR", "no answer", "cut off", "not sent",
)  # fmt: skip
OUTCOMES = (SAME, DIFFERENT, CALLERROR, UNANSWERED, CUT_OFF, NOT_SENT)
# An answer not there this long after the CALL is "no answer"; one the charger's
# disconnect cut off sooner (its mirror leg closes with it) is "cut off".
ANSWER_WINDOW_S = 30.0
TOKEN_ACTIONS = ("Authorize", "StartTransaction", "StopTransaction", "TransactionEvent")
REMOTE_STARTS = ("RemoteStartTransaction", "RequestStartTransaction")
_TIMESTAMP_RE = r'"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?"'


@dataclass(frozen=True)
class ActionOutcome:
    action: str
    counts: dict[str, int]  # by outcome, every one of OUTCOMES

    @property
    def exchanges(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True)
class AnswerDifference:
    """Exchanges of one action whose answers differ in the same way."""

    action: str
    what: str  # e.g. "idTagInfo.status: Accepted → Invalid"
    exchanges: int
    example_identity: str


@dataclass(frozen=True)
class Rejected:
    identity: str
    boots: int
    boots_rejected: int
    tokens: int
    tokens_rejected: int
    remote_starts: int
    remote_starts_refused: int
    statuses: tuple[str, ...]  # what the rejections said, e.g. ("boot Rejected", "Invalid")


@dataclass(frozen=True)
class LatencyPair:
    action: str
    primary_answers: int
    primary_p50_ms: float | None
    primary_p99_ms: float | None
    secondary_answers: int
    secondary_p50_ms: float | None
    secondary_p99_ms: float | None


@dataclass(frozen=True)
class OwnCall:
    """The secondary's own CALLs of one action: allowed (relayed) or refused by the proxy."""

    action: str
    calls: int
    refused: int  # by the proxy: not in the route's allow_actions
    accepted: int  # relayed, and the charger answered with a CALLRESULT
    rejected: int  # relayed, and the charger answered with a CALLERROR or a status not Accepted
    unanswered: int

    @property
    def allowed(self) -> int:
        return self.calls - self.refused


@dataclass(frozen=True)
class NeverAccepted:
    identity: str
    legs: int
    reason: str


@dataclass(frozen=True)
class Ignored:
    path: str
    exchanges: int
    actions: tuple[str, ...]


@dataclass(frozen=True)
class MirrorReport:
    sources: tuple[str, ...]
    identity: str | None
    secondaries: tuple[str, ...]
    chargers: int
    legs: int
    legs_refused: int
    first_at: datetime | None
    last_at: datetime | None
    outcomes: tuple[ActionOutcome, ...]
    differences: tuple[AnswerDifference, ...]
    rejected: tuple[Rejected, ...]
    latency: tuple[LatencyPair, ...]
    own_calls: tuple[OwnCall, ...]
    never_accepted: tuple[NeverAccepted, ...]  # the first ``top`` of them, by identity
    never_accepted_total: int
    ignored: tuple[Ignored, ...]
    ignore_rules: tuple[str, ...]  # what was left out of the comparison, as given
    notes: tuple[str, ...] = ()
    generated_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    elapsed_s: float = 0.0

    def total(self, outcome: str) -> int:
        return sum(o.counts[outcome] for o in self.outcomes)

    @property
    def exchanges(self) -> int:
        return sum(o.exchanges for o in self.outcomes)

    def verdict(self) -> str:
        """One sentence a site host can act on."""
        if not self.exchanges:
            return "No charger CALL was mirrored: nothing to compare."
        same, total = self.total(SAME), self.exchanges
        parts = [f"The secondary answered {same:,} of {total:,} mirrored CALLs as the primary did"]
        others = [(self.total(k), k) for k in OUTCOMES[1:]]
        said = {DIFFERENT: "differently", CALLERROR: "with a CALLERROR", UNANSWERED: "not at all"}
        said[CUT_OFF] = "not before the charger disconnected"
        said[NOT_SENT] = "never reached it (its leg had closed or fallen behind)"
        parts += [f"{n:,} {said[k]}" for n, k in others if n]
        text = ", ".join(parts) + "."
        if self.never_accepted_total:
            text += (
                f" It never accepted {self.never_accepted_total:,} of {self.chargers:,} chargers."
            )
        return text


def build_mirror_report(
    sources: list[str],
    *,
    identity: str | None = None,
    ignore: Sequence[str] = (),
    default_ignores: bool = True,
    top: int = 20,
) -> MirrorReport:
    """Open the sources and compare what the primary and the secondary answered."""
    try:
        rules = IgnoreRules.parse(ignore, defaults=default_ignores)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    started = time.perf_counter()
    with open_sources(sources) as opened:
        if identity is not None:
            require_identities(opened.db, [identity], " ".join(sources))
        report = gather_mirror(opened.db, rules, identity=identity, top=top)
        paths = tuple(str(p) for p in opened.paths)
        notes = tuple(opened.notes)
    if not report.legs:
        where = ", ".join(paths)
        who = f"charger {identity!r}" if identity else "no charger"
        raise ConfigError(
            f"{where}: {who} has no mirror legs (record with `ocproxy proxy --mirror URL` "
            "or [[mirror]] in the config), nothing to compare"
            if identity
            else f"{where}: {who} was mirrored to a secondary CSMS (record with `ocproxy "
            "proxy --mirror URL` or [[mirror]] in the config), nothing to compare"
        )
    shown = (*(DEFAULT_IGNORES if default_ignores else ()), *ignore)
    if default_ignores:
        shown = ("timestamps", *shown)
    return replace(
        report,
        sources=paths,
        notes=notes,
        ignore_rules=shown,
        elapsed_s=time.perf_counter() - started,
    )


def gather_mirror(
    db: duckdb.DuckDBPyConnection, rules: IgnoreRules, *, identity: str | None, top: int
) -> MirrorReport:
    _execute(db, sql.PAIRS, {"identity": identity})
    _execute(db, sql.EXCHANGES, {"window": ANSWER_WINDOW_S})
    (overview,) = _rows(db, sql.OVERVIEW)
    groups = _rows(db, sql.GROUPS, _normalising(rules))
    outcomes, differences, ignored = _judge(groups, rules, top)
    never = [NeverAccepted(**r) for r in _rows(db, sql.NEVER_ACCEPTED)]
    return MirrorReport(
        sources=(),
        identity=identity,
        secondaries=tuple(overview["secondaries"] or ()),
        chargers=overview["chargers"],
        legs=overview["legs"],
        legs_refused=overview["refused"],
        first_at=overview["first_at"],
        last_at=overview["last_at"],
        outcomes=outcomes,
        differences=differences,
        rejected=tuple(
            Rejected(**{**r, "statuses": tuple(r["statuses"])})
            for r in _rows(db, sql.REJECTED, {"top": top})
        ),
        latency=tuple(LatencyPair(**r) for r in _rows(db, sql.LATENCY, {"top": top})),
        own_calls=tuple(OwnCall(**r) for r in _rows(db, sql.OWN_CALLS)),
        never_accepted=tuple(never[:top]),
        never_accepted_total=len(never),
        ignored=ignored,
        ignore_rules=(),
    )


def _rows(
    db: duckdb.DuckDBPyConnection, statement: str, params: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    cursor = _execute(db, statement, params)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _execute(
    db: duckdb.DuckDBPyConnection, statement: str, params: dict[str, Any] | None = None
) -> duckdb.DuckDBPyConnection:
    try:
        return db.execute(statement, params or None)
    except duckdb.Error as exc:  # a source this version cannot read: one line
        raise ConfigError(f"mirror report failed: {str(exc).strip().splitlines()[0]}") from exc


def _normalising(rules: IgnoreRules) -> dict[str, Any]:
    """Regular expressions that blank, in SQL, what the default rules ignore anyway (any
    timestamp, the values of DEFAULT_IGNORES keys), so that answers differing only there
    fall into one group: a Heartbeat a minute is one group, not one per minute."""
    names = "|".join(DEFAULT_IGNORES)
    return {
        "blank": rules.timestamps,  # without the default rules everything is compared
        "times": _TIMESTAMP_RE,
        "keys": f'"({names})":\\s*("(?:[^"\\\\]|\\\\.)*"|-?[0-9.eE+]+)',
    }


# -- judging groups of exchanges (pure) ---------------------------------------------------


def _judge(
    groups: list[dict[str, Any]], rules: IgnoreRules, top: int
) -> tuple[tuple[ActionOutcome, ...], tuple[AnswerDifference, ...], tuple[Ignored, ...]]:
    counts: dict[str, dict[str, int]] = {}
    differs: dict[tuple[str, str], list[Any]] = {}
    ignored: dict[str, list[Any]] = {}
    strict = IgnoreRules.parse((), defaults=False)
    for g in groups:
        action, n = g["action"], g["n"]
        outcome, why = judge_group(g, rules)
        per = counts.setdefault(action, dict.fromkeys(OUTCOMES, 0))
        per[outcome] += n
        if why:
            slot = differs.setdefault((action, why), [0, g["example_identity"]])
            slot[0] += n
        if g["p_type"] == 3 and g["s_type"] == 3 and g["n_raw_diff"]:
            for path in _ignored_paths(g, rules, strict):
                slot = ignored.setdefault(path, [0, set()])
                slot[0] += g["n_raw_diff"]
                slot[1].add(action)
    outcomes = sorted(
        (ActionOutcome(a, c) for a, c in counts.items()),
        key=lambda o: (-(o.exchanges - o.counts[SAME]), -o.exchanges, o.action),
    )
    diff_rows = sorted(
        (AnswerDifference(a, w, n, who) for (a, w), (n, who) in differs.items()),
        key=lambda d: (-d.exchanges, d.action, d.what),
    )
    ignored_rows = sorted(
        (Ignored(p, n, tuple(sorted(acts))) for p, (n, acts) in ignored.items()),
        key=lambda i: (-i.exchanges, i.path),
    )
    return tuple(outcomes[:top]), tuple(diff_rows[:top]), tuple(ignored_rows)


def judge_group(g: dict[str, Any], rules: IgnoreRules) -> tuple[str, str]:
    """The outcome of a group of exchanges, and how the answers differed ("" if not)."""
    p_type, s_type = g["p_type"], g["s_type"]
    if s_type is None:
        if g["leg_open"] and not g["sent"]:
            return NOT_SENT, ""
        return (CUT_OFF if g["sent"] and g["cut_off"] else UNANSWERED), ""
    if s_type == 4:
        if p_type == 4 and g["p_code"] == g["s_code"]:
            return SAME, ""
        return CALLERROR, f"CALLERROR {g['s_code']} (primary: {_answer_name(g, 'p')})"
    if p_type != 3:
        return DIFFERENT, f"CALLRESULT (primary: {_answer_name(g, 'p')})"
    diffs = diff_payloads(_load(g["p_payload"]), _load(g["s_payload"]), rules, g["action"])
    if not diffs:
        return SAME, ""
    return DIFFERENT, "; ".join(_describe(d) for d in diffs[:3]) + (" …" if len(diffs) > 3 else "")


def _ignored_paths(g: dict[str, Any], rules: IgnoreRules, strict: IgnoreRules) -> list[str]:
    p, s = _load(g["p_payload"]), _load(g["s_payload"])
    kept = {(d.kind, d.path) for d in diff_payloads(p, s, rules, g["action"])}
    everything = diff_payloads(p, s, strict, g["action"])
    return list(dict.fromkeys(d.path for d in everything if (d.kind, d.path) not in kept))


def _answer_name(g: dict[str, Any], side: str) -> str:
    kind = g[f"{side}_type"]
    if kind == 4:
        return f"CALLERROR {g[f'{side}_code']}"
    return "CALLRESULT" if kind == 3 else "no answer"


def _describe(d: Difference) -> str:
    at = d.path or "payload"
    if d.kind in (DiffKind.FIELD_ADDED, DiffKind.FIELD_MISSING):
        return f"{at} {'only in the secondary' if d.kind is DiffKind.FIELD_ADDED else 'missing'}"
    return f"{at}: {d.recorded} → {d.replayed}"


def _load(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return show(text)
