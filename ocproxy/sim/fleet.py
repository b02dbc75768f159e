"""A fleet of simulated chargers, as ``ocproxy sim chargers`` runs it.

Each charger boots, runs its charging sessions and then either hangs up (1000) or, with
``stay``, stays connected sending heartbeats like a real station and reconnects when
the server closes the connection (for example ``ocproxy disconnect``), booting again.
What happens is told to ``tell(identity, text, failed)`` as it happens.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from ocpp.exceptions import OCPPError
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from ocproxy.sim.charger import (
    ChargerSpec,
    NoSubprotocolError,
    Station,
    boot,
    charge,
    run_charger,
)

Tell = Callable[[str, str, bool], None]


@dataclass(frozen=True)
class FleetOptions:
    url: str  # the server URL; each charger appends its identity
    count: int = 1
    version: str = "1.6"
    prefix: str = "SIM-"
    pace: float = 1.0  # seconds between a charger's steps
    transactions: int = 1  # charging sessions after the first accepted boot
    stay: bool = False  # stay connected (heartbeats) and reconnect until stopped
    heartbeat: float | None = None  # seconds between heartbeats; None: as the CSMS says
    reconnect: float = 5.0  # seconds before reconnecting (stay only)


@dataclass
class FleetResult:
    transactions: int = 0
    energy_wh: int = 0
    failures: list[str] = field(default_factory=list)


def identities(options: FleetOptions) -> list[str]:
    width = max(2, len(str(options.count)))
    return [f"{options.prefix}{n:0{width}d}" for n in range(1, options.count + 1)]


def specs(options: FleetOptions) -> list[ChargerSpec]:
    return [
        ChargerSpec(
            identity=identity,
            version=options.version,
            model=f"Sim-{options.version}",
            serial=f"SN{1000 + n}",
            pace=options.pace,
            transactions=options.transactions,
            wh_per_sample=1200 + 100 * (n % 10),
        )
        for n, identity in enumerate(identities(options))
    ]


async def run_fleet(
    options: FleetOptions, tell: Tell, result: FleetResult | None = None
) -> FleetResult:
    """Run every charger until done (or forever with ``stay``: cancel to stop).

    ``result`` is filled in as chargers finish transactions or fail.
    """
    result = FleetResult() if result is None else result
    async with asyncio.TaskGroup() as group:
        for n, spec in enumerate(specs(options)):
            # Staggered, as chargers powering up on a site are, and so that their
            # first frames do not all cross in the same millisecond.
            delay = n * min(options.pace, 1.0) / 2
            group.create_task(_Charger(spec, options, tell, result).run(delay))
    return result


class _Charger:
    def __init__(
        self, spec: ChargerSpec, options: FleetOptions, tell: Tell, result: FleetResult
    ) -> None:
        self.spec = spec
        self.options = options
        self.result = result
        self._tell = tell
        self.booted_once = False

    def say(self, text: str, *, failed: bool = False) -> None:
        self._tell(self.spec.identity, text, failed)

    def fail(self, text: str) -> None:
        self.result.failures.append(f"{self.spec.identity}: {text}")
        self.say(text, failed=True)

    async def run(self, delay: float) -> None:
        await asyncio.sleep(delay)
        while True:
            problem = await self._connection()
            if problem is None:
                return
            if not self.options.stay:
                self.fail(problem)
                return
            self.say(f"{problem}; reconnecting in {self.options.reconnect:g} s")
            await asyncio.sleep(self.options.reconnect)

    async def _connection(self) -> str | None:
        """One connection; why it ended early, or None when the script finished."""
        try:
            await run_charger(
                self.options.url,
                replace(self.spec, transactions=0 if self.booted_once else self.spec.transactions),
                script=self._script,
                on_connected=lambda cp: self.say(f"connected ({cp._ocpp_version})"),
            )
        except InvalidStatus as exc:
            return f"refused by the server: HTTP {exc.response.status_code}"
        except ssl.SSLCertVerificationError as exc:  # errno 1: "Operation not permitted"
            return f"the server's certificate is not trusted: {exc.verify_message}"
        except ssl.SSLError as exc:
            return f"TLS with {self.options.url} failed: {exc.reason or exc}"
        except OSError as exc:
            # asyncio's strerror ("Connect call failed (...)") hides the reason
            why = os.strerror(exc.errno) if exc.errno else str(exc)
            return f"cannot connect to {self.options.url}: {why}"
        except (InvalidHandshake, NoSubprotocolError) as exc:
            return f"cannot connect to {self.options.url}: {exc}"
        except ConnectionClosed as exc:
            close = "-" if exc.rcvd is None else f"{exc.rcvd.code} {exc.rcvd.reason}".strip()
            return f"closed by the server ({close})"
        except _BootRefused as exc:
            return str(exc)
        except OCPPError as exc:
            return f"the server answered a CALLERROR: {type(exc).__name__}: {exc.description}"
        except TimeoutError:
            return "no answer from the server within 30 s"
        if not self.options.stay:
            self.say("done, hung up (1000)")
        return None

    async def _script(self, cp: Station) -> None:
        outcome = await boot(cp)
        while outcome.status != "Accepted":
            if not self.options.stay:
                raise _BootRefused(outcome.status)
            wait = max(1, outcome.interval)
            self.say(f"boot {outcome.status}; booting again in {wait} s")
            await asyncio.sleep(wait)
            outcome = await boot(cp)
        every = self.options.heartbeat or max(1, outcome.interval)
        self.say(f"boot Accepted (heartbeat every {every:g} s)")
        self.booted_once = True
        for n in range(1, cp.spec.transactions + 1):
            wh = await charge(cp)
            if wh:
                self.result.transactions += 1
                self.result.energy_wh += wh
            self.say(f"transaction {n}: {wh} Wh" if wh else "Authorize refused: no transaction")
        while self.options.stay:
            await asyncio.sleep(every)
            await cp.call(cp._call.Heartbeat(), suppress=False)


class _BootRefused(Exception):
    def __init__(self, status: str) -> None:
        super().__init__(f"BootNotification answered {status}")
