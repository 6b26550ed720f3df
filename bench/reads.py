"""Section 4 of the benchmark: the read API under concurrent lookups by email.

``unifier api`` runs as its own process, as it would in production, on the Redis the
end-to-end section filled. The client (aiohttp, in the benchmark's process) asks for
real customers' emails, as a support tool would:

* **open loop** at a fixed offered rate (requests leave on schedule whatever the
  answers do, so a slow server shows as latency, not as a lower rate);
* **closed loop**: a fixed number of clients, each asking again as soon as it has
  its answer — the most the API gives on this machine, with the client sharing it.

Latency is from the moment a request was due (open loop) or sent (closed loop) to
its full body read; every answer must be 200 with the asked-for email in it,
otherwise it counts as an error.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from bench.load import summary_ms
from config.settings import Settings
from unifier.processes import free_port

KEY = "k-bench-read"


def start_api(settings: Settings, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ,
        **settings.model_copy(update={"api_port": port, "api_keys": {KEY: ["read"]}}).env(),
        "UNIFIER_LOG_LEVEL": "WARNING",
    }
    out = log.open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "unifier", "api"], env=env, stdout=out, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"unifier api exited with {proc.returncode}; see {log}")
        try:
            with urllib.request.urlopen(f"{base}/ready", timeout=1) as r:
                if r.status == 200:
                    return proc, base
        except OSError:
            time.sleep(0.1)
    proc.terminate()
    raise SystemExit(f"unifier api was not ready within 30 s; see {log}")


def stop_api(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


async def _lookups(
    base: str, emails: list[str], rate: float | None, seconds: float, clients: int
) -> dict[str, Any]:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    headers = {"Authorization": f"Bearer {KEY}"}
    urls = [
        (f"{base}/v1/profiles?type=email&value={urllib.parse.quote(e)}", e.encode()) for e in emails
    ]
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def one(i: int, started: float) -> None:
            nonlocal errors
            url, email = urls[i % len(urls)]
            try:
                async with session.get(url) as r:
                    body = await r.read()
                    ok = r.status == 200 and email in body
            except aiohttp.ClientError:
                ok = False
            if ok:
                latencies.append(time.perf_counter() - started)
            else:
                errors += 1

        began = time.perf_counter()
        sent = 0
        if rate is not None:  # open loop: requests leave on schedule
            tasks = []
            while (now := time.perf_counter()) - began < seconds:
                due = int((now - began) * rate)
                while sent < due:
                    tasks.append(asyncio.ensure_future(one(sent, began + sent / rate)))
                    sent += 1
                await asyncio.sleep(0.001)
            await asyncio.gather(*tasks)
        else:  # closed loop: each client asks again as soon as it has its answer

            async def client(c: int) -> None:
                nonlocal sent
                while time.perf_counter() - began < seconds:
                    i, sent = sent, sent + 1
                    await one(i, time.perf_counter())

            await asyncio.gather(*(client(c) for c in range(clients)))
        took = time.perf_counter() - began
    return {
        "requests": sent,
        "errors": errors,
        "seconds": took,
        "requests_per_s": len(latencies) / took,
        **summary_ms(latencies),
    }


def read_api(
    settings: Settings, emails: list[str], log: Path, rate: float = 1000.0, seconds: float = 10.0
) -> dict[str, Any]:
    from bench.scale import cpu_seconds

    proc, base = start_api(settings, log)
    try:
        asyncio.run(_lookups(base, emails, None, 1.0, 8))  # warm up connections and caches
        loops = []
        for offered, clients, took in ((rate, 64, seconds), (None, 16, 5.0)):
            cpu = cpu_seconds(proc.pid)
            loop = asyncio.run(_lookups(base, emails, offered, took, clients))
            loop["api_cpu_ms_per_request"] = (
                (cpu_seconds(proc.pid) - cpu) * 1000 / max(loop["requests"], 1)
            )
            loops.append(loop)
        open_loop, closed_loop = loops
    finally:
        stop_api(proc)
    return {"offered_per_s": rate, "open_loop": open_loop, "closed_loop": closed_loop}
