"""How fast is ``ocproxy inspect``? A big recording, and a proxy under steady load.

``python bench/inspect_bench.py recording BIG.duckdb [--pages 200]``
    The first screen (chargers, the first charger's first page and its detail) in
    Textual's headless pilot, from nothing to drawn; then pages of frames: the source's
    keyset queries alone (forward from the start, backward from the end, with filters)
    and pages loaded and drawn by the app. Make the recording with
    ``bench/make_recording.py BIG.duckdb --frames 10000000``.

``python bench/inspect_bench.py live [--rate 2000] [--duration 60] [--chargers 20]``
    A CSMS (``bench/_workload.py csms``) and ``ocproxy proxy --control`` in processes of
    their own, a load process sending MeterValues CALLs at a steady rate (answered:
    ``--rate`` frames/s through the proxy), and the inspector following it live in this
    process, headless: frames the proxy sent to it versus frames the load put through,
    whether the proxy ever cut it off for falling behind, its resident memory over time
    and the cost of each redraw.

``python bench/inspect_bench.py load --url URL --rate R --duration S --chargers N``
    (the load process itself.)

Figures are printed and, with ``--json FILE``, written. Speed is measured here, never
asserted in tests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent


def _ms(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000  # noqa: E731
    return {"n": len(values), "p50_ms": round(pick(0.5), 1), "p95_ms": round(pick(0.95), 1),
            "max_ms": round(ordered[-1] * 1000, 1)}  # fmt: skip


# -- a big recording ------------------------------------------------------------------------


async def bench_recording(path: str, pages: int) -> dict[str, Any]:
    from ocproxy.inspect.app import InspectApp
    from ocproxy.inspect.filters import parse
    from ocproxy.inspect.recording import RecordingSource

    start = time.perf_counter()
    source = RecordingSource([path])
    app = InspectApp(source)
    result: dict[str, Any] = {"recording": path}
    async with app.run_test(size=(160, 48)) as pilot:
        while app.first_screen_s is None or not app.frames.items:
            await pilot.pause(0.01)
        result["first_screen_s"] = round(time.perf_counter() - start, 3)
        result["first_screen_in_app_s"] = round(app.first_screen_s, 3)
        chargers = await source.chargers()
        result["frames"] = sum(c.frames for c in chargers)
        result["chargers"] = len(chargers)
        busiest = max(chargers, key=lambda c: c.frames)
        result["charger"] = {"identity": busiest.identity, "frames": busiest.frames}
        timings: dict[str, list[float]] = {}

        async def walk(label: str, flt: str, *, backwards: bool = False) -> None:
            key = None
            for _ in range(pages):
                t = time.perf_counter()
                if backwards:
                    page = await source.page(busiest.identity, parse(flt), before=key,
                                             last=key is None)  # fmt: skip
                else:
                    page = await source.page(busiest.identity, parse(flt), after=key)
                timings.setdefault(label, []).append(time.perf_counter() - t)
                if not page:
                    break
                key = page[0].key if backwards else page[-1].key

        await walk("page forward", "")
        await walk("page backward from the end", "", backwards=True)
        await walk("page forward, action:MeterValues dir:csms", "action:MeterValues dir:csms")
        await walk("page forward, -action:Heartbeat,MeterValues", "-action:Heartbeat,MeterValues")
        app.identity = busiest.identity
        await app._load_frames()
        for _ in range(min(pages, 100)):  # loaded and drawn by the app
            t = time.perf_counter()
            await app._load_frames(after=app.frames.items[-1].key)
            await pilot.pause(0)
            timings.setdefault("page loaded and drawn (app)", []).append(time.perf_counter() - t)
        t = time.perf_counter()
        await source.find(busiest.identity, parse(""), "Faulted", None)
        result["search, whole charger, no match_ms"] = round((time.perf_counter() - t) * 1000)
        await pilot.press("q")
    source.close()
    result["pages"] = {label: _ms(values) for label, values in timings.items()}
    return result


# -- live ---------------------------------------------------------------------------------


async def run_load(url: str, rate: float, duration: float, chargers: int) -> None:
    """Steady MeterValues CALLs (answered: 2 frames each) at ``rate`` frames/s in all."""
    from websockets.asyncio.client import connect

    sys.path.insert(0, str(HERE))
    from _workload import meter_values_call

    per_charger = rate / 2 / chargers
    sent = answered = 0

    async def charger(n: int) -> None:
        nonlocal sent, answered
        async with connect(f"{url}/ocpp/BENCH-{n:03d}", subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                           compression=None) as ws:  # fmt: skip
            loop = asyncio.get_running_loop()
            begin = loop.time()
            k = 0
            while loop.time() - begin < duration:
                k += 1
                text, _ = meter_values_call(n, k)
                await ws.send(text)
                sent += 1
                await asyncio.wait_for(ws.recv(), 10)
                answered += 1
                delay = begin + k / per_charger - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)

    t = time.perf_counter()
    await asyncio.gather(*(charger(n) for n in range(chargers)))
    elapsed = time.perf_counter() - t
    print(json.dumps({"frames": sent + answered, "seconds": elapsed,
                      "frames_per_s": (sent + answered) / elapsed}), flush=True)  # fmt: skip


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _start(argv: list[str], **kwargs: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **kwargs)  # fmt: skip


async def bench_live(rate: float, duration: float, chargers: int) -> dict[str, Any]:
    from ocproxy.inspect.app import InspectApp
    from ocproxy.inspect.live import LiveSource

    work = Path(tempfile.mkdtemp(prefix="inspect-bench-"))
    env = dict(os.environ, XDG_CONFIG_HOME=str(work / "config"))
    os.environ["XDG_CONFIG_HOME"] = env["XDG_CONFIG_HOME"]
    csms = _start([sys.executable, str(HERE / "_workload.py"), "csms", "--compression", "none"])
    assert csms.stdout is not None
    csms_port = int(csms.stdout.readline().split()[1])
    control = 19_000 + os.getpid() % 1000
    proxy = _start([sys.executable, "-m", "ocproxy", "proxy", "--listen", "127.0.0.1:0",
                    "--upstream", f"ws://127.0.0.1:{csms_port}", "--db", str(work / "live.duckdb"),
                    "--control", str(control), "--quiet"], env=env)  # fmt: skip
    assert proxy.stdout is not None
    port = 0
    for line in proxy.stdout:
        if "listening on" in line:
            port = int(line.split("listening on ws://127.0.0.1:")[1].split(",")[0])
            break
    result: dict[str, Any] = {"rate_asked": rate, "duration_s": duration, "chargers": chargers}
    try:
        source = await LiveSource("127.0.0.1", control).start()
        app = InspectApp(source)
        ticks: list[float] = []
        original = app._tick

        async def timed_tick() -> None:
            t = time.perf_counter()
            await original()
            ticks.append(time.perf_counter() - t)

        app._tick = timed_tick  # type: ignore[method-assign]
        load = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "load", "--url", f"ws://127.0.0.1:{port}", "--rate",
            str(rate), "--duration", str(duration), "--chargers", str(chargers),
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        samples = []
        async with app.run_test(size=(160, 48)) as pilot:
            begin = time.perf_counter()
            while load.returncode is None and time.perf_counter() - begin < duration + 30:
                await pilot.pause(1.0)
                sample = {"t_s": round(time.perf_counter() - begin), "received": source.received}
                samples.append({**sample, "rss_mb": round(_rss_mb(), 1)})
                if load.stdout is not None and load.stdout.at_eof():
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(load.wait(), 0.01)
            out = await load.stdout.read() if load.stdout else b""
            await pilot.pause(2.0)  # the last frames in flight
            result["load"] = json.loads(out.decode().strip().splitlines()[-1])
            result["received_by_inspector"] = source.received
            result["cut_off"] = source.ended
            result["rss_mb"] = [s["rss_mb"] for s in samples]
            result["samples"] = samples
            result["redraw"] = _ms(ticks) if ticks else {}
            await pilot.press("q")
        await source.close()
    finally:
        for child in (proxy, csms):
            child.terminate()
            child.wait(timeout=30)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="what", required=True)
    rec = commands.add_parser("recording")
    rec.add_argument("path")
    rec.add_argument("--pages", type=int, default=200)
    live = commands.add_parser("live")
    live.add_argument("--rate", type=float, default=2000.0)
    live.add_argument("--duration", type=float, default=60.0)
    live.add_argument("--chargers", type=int, default=20)
    load = commands.add_parser("load")
    load.add_argument("--url", required=True)
    load.add_argument("--rate", type=float, required=True)
    load.add_argument("--duration", type=float, required=True)
    load.add_argument("--chargers", type=int, required=True)
    for cmd in (rec, live):
        cmd.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.what == "load":
        asyncio.run(run_load(args.url, args.rate, args.duration, args.chargers))
        return 0
    if args.what == "recording":
        result = asyncio.run(bench_recording(args.path, args.pages))
    else:
        result = asyncio.run(bench_live(args.rate, args.duration, args.chargers))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
