"""How right are the clusters? Pairwise precision, recall and F1 against the truth
of the synthetic journeys.

    ./dev python bench/accuracy.py                    # the reference union-find only
    ./dev python bench/accuracy.py --pipeline         # and the real pipeline (embedded stack)
    ./dev python bench/accuracy.py --export profiles.jsonl --truth events.truth.json

Pairs: two identifiers a person's own events link (directly or through other
identifiers of theirs) should be in one profile; two identifiers of different
people should not. Identifiers shared by two people (a household tablet) and junk
values are left out of both sides. The reference rows show what the rules can
reach: without the block list junk values fuse strangers; without limits shared
devices fuse households.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from config.settings import Settings
from producers.synthetic import Score, Truth, generate_journeys, score
from profiles.configured import identifier_priorities
from profiles.reference import reference_clusters
from profiles.rules import IdentityRules
from profiles.touchpoint import parse_json


def clusters_of_export(profiles: list[dict[str, Any]]) -> list[set[str]]:
    return [
        {f"{t}:{v}" for t, values in p["identifiers"].items() for v in values} for p in profiles
    ]


def run_pipeline(events: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], float]:
    """Every event through the embedded stack; the exported profiles and the seconds taken."""
    from producers.kafka import TouchpointProducer
    from serve.lag import LagProbe
    from serve.view import RedisProfileView
    from unifier.demo import demo_settings
    from unifier.stack import running

    with tempfile.TemporaryDirectory(prefix="unifier-bench-") as tmp:
        settings = demo_settings(Path(tmp))
        with running(settings) as stack:
            stack.start_worker()
            started = time.monotonic()
            with TouchpointProducer(settings) as producer:
                for event in events:
                    producer.send(parse_json(event, identifier_priorities(settings)))
            with LagProbe(settings) as probe:
                if not probe.wait(timeout=600):
                    raise SystemExit("the worker did not catch up within 600 s")
            took = time.monotonic() - started
            view = RedisProfileView.for_settings(settings)
            with contextlib.closing(view):
                return list(view.scan()), took


def row(name: str, s: Score) -> str:
    return (
        f"| {name} | {s.precision:.4f} | {s.recall:.4f} | {s.f1:.4f} | "
        f"{s.predicted_pairs} | {s.true_pairs} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--people", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--pipeline", action="store_true", help="also run the real pipeline")
    parser.add_argument("--export", type=Path, help="score this `unifier profiles export` file")
    parser.add_argument(
        "--truth", type=Path, help="truth file of `unifier generate` (with --export)"
    )
    args = parser.parse_args()

    settings = Settings()
    rules = IdentityRules.build(identifier_priorities(settings))
    print("| clusters | precision | recall | F1 | predicted pairs | true pairs |")
    print("|---|---|---|---|---|---|")
    if args.export:
        if not args.truth:
            parser.error("--export needs --truth")
        doc = json.loads(args.truth.read_text())
        truth = Truth(
            {p["person"]: [set(c) for c in p["clusters"]] for p in doc["persons"]},
            set(doc["shared"]),
            set(doc["junk"]),
        )
        profiles = [json.loads(line) for line in args.export.read_text().splitlines() if line]
        print(row(f"export {args.export.name}", score(clusters_of_export(profiles), truth)))
        return

    journeys = generate_journeys(args.people, args.seed)
    events = [parse_json(e, identifier_priorities(settings)) for e in journeys.events]
    bare = IdentityRules.build(
        identifier_priorities(settings), blocked_values=(), blocked_patterns=()
    )
    for name, r, limits in (
        ("reference, no block list, no limits", bare, False),
        ("reference, block list, no limits", rules, False),
        ("reference, block list and limits (the defaults)", rules, True),
    ):
        ref = reference_clusters(events, r, settings.default_phone_region, limits=limits)
        print(row(name, score(ref.clusters, journeys.truth)))
    if args.pipeline:
        profiles, took = run_pipeline(journeys.events)
        print(row("the pipeline", score(clusters_of_export(profiles), journeys.truth)))
        print(f"\npipeline: {len(events)} events, {len(profiles)} profiles, {took:.1f} s")
    print(f"\n{args.people} people, seed {args.seed}, {len(events)} events")


if __name__ == "__main__":
    main()
