"""Section 5 of the benchmark: memory per profile, and 1 vs 2 workers.

Memory: a worker holds two tables in Faust's memory store (a dict per partition):
``profiles`` (profile id → the node's bytes) and ``identity`` (identifier → profile
id). Filling them to a million profiles through the pipeline would take far longer
than the benchmark may, so a fresh process fills the same dicts the way the store
does — one key and one value object per entry, the values the worker's own encoding
(``schemas.wire.node_to``) of the real profiles of the synthetic journeys,
cycled with fresh ids — and reads its resident memory (``/proc/self/status``) at each
size. Run on its own:

    ./dev python bench/scale.py --sizes 100000,1000000
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from profiles.configured import identifier_priorities, identity_rules, trait_alias_index


def rss_bytes(pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fill_tables(sizes: list[int], people: int, seed: int) -> dict[str, Any]:
    from config.settings import Settings
    from producers.synthetic import generate_journeys
    from profiles.graph.node import ProfileNode
    from profiles.reference import reference_states
    from profiles.touchpoint import parse_json
    from schemas.wire import node_to

    settings = Settings()
    journeys = generate_journeys(people, seed)
    touchpoints = [parse_json(e, identifier_priorities(settings)) for e in journeys.events]
    states = reference_states(
        touchpoints,
        identity_rules(settings),
        settings.default_phone_region,
        trait_alias_index(settings),
    )
    templates = [(node_to(ProfileNode(state=s)), sorted(s.held)) for s in states]
    events_per_profile = len(touchpoints) / len(states)
    del journeys, touchpoints, states
    gc.collect()
    base = rss_bytes()
    profiles: dict[bytes, bytes] = {}
    identity: dict[bytes, bytes] = {}
    out = []
    n = 0
    value_bytes = 0
    for size in sorted(sizes):
        while n < size:
            value, held = templates[n % len(templates)]
            pid = f"p_{n:016x}".encode()
            profiles[pid] = bytes(bytearray(value))  # an object of its own, as decoded
            value_bytes += len(value)
            for ident in held:
                identity[f"{ident}#{n}".encode()] = bytes(bytearray(pid))
            n += 1
        gc.collect()
        rss = rss_bytes()
        out.append(
            {
                "profiles": n,
                "identifiers": len(identity),
                "tables_rss_bytes": rss - base,
                "bytes_per_profile": (rss - base) / n,
                "encoded_bytes_per_profile": value_bytes / n,
            }
        )
    return {
        "process_base_rss_bytes": base,
        "events_per_profile": events_per_profile,
        "sizes": out,
    }


def table_memory(sizes: list[int], people: int = 2000, seed: int = 7) -> dict[str, Any]:
    """``fill_tables`` in a fresh process, so nothing else counts in its RSS."""
    done = subprocess.run(
        [
            *(sys.executable, __file__, "--sizes", ",".join(map(str, sizes))),
            *("--people", str(people), "--seed", str(seed)),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"bench/scale.py failed:\n{done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--people", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(json.dumps(fill_tables(sizes, args.people, args.seed)))


if __name__ == "__main__":
    main()
