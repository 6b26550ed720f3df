"""``unifier demo``: the whole path on the embedded stack, then everything stops.

Its own ports and state directory, so it never collides with `unifier stack up`
or with a test run on the same machine.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.syntax import Syntax

from producers.kafka import TouchpointProducer
from producers.synthetic import generate
from unifier.ingest import validate_line
from unifier.lag import LagProbe
from unifier.processes import StackError, free_port
from unifier.settings import Settings
from unifier.stack import running


def demo_settings(state_dir: Path) -> Settings:
    return Settings(
        bootstrap_servers=f"127.0.0.1:{free_port()}",
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        state_dir=state_dir,
        touchpoint_partitions=4,
        internal_partitions=4,
    )


def _score(profile: dict[str, Any]) -> tuple[int, int]:
    return len(profile["computed"]["events_by_source"]), profile["computed"]["event_count"]


def run_demo(people: int, show: int, console: Console, status: Console) -> None:
    with tempfile.TemporaryDirectory(prefix="unifier-demo-") as tmp:
        settings = demo_settings(Path(tmp))
        started = time.monotonic()
        with status.status("starting the embedded broker, Redis and a worker") as spinner:
            with running(settings) as stack:
                spinner.update("starting a worker (it joins its consumer group)")
                stack.start_worker()
                status.print(
                    f"[green]✓[/] stack up in {time.monotonic() - started:.1f}s: broker "
                    f"{settings.bootstrap_servers}, redis {settings.redis_url}, 1 worker"
                )
                events = generate(people=people, seed=7)
                spinner.update(f"sending {len(events)} touchpoints")
                with TouchpointProducer(settings) as producer:
                    for event in events:
                        producer.send(validate_line(orjson.dumps(event), settings))
                report = producer.report
                if report.events_failed or report.errors:
                    raise StackError(f"delivery failed: {'; '.join(report.errors[:3])}")
                status.print(f"[green]✓[/] sent {report.events_sent} touchpoints from web, "
                             f"POS and email for {people} people")
                spinner.update("waiting for the worker to catch up")
                with LagProbe(settings) as probe:
                    if not probe.wait(timeout=120):
                        raise StackError("the worker did not catch up within 120s; "
                                         f"see {stack.dir}/worker.log")
                from profiles.view import RedisProfileView

                view = RedisProfileView.from_url(settings.redis_url)
                try:
                    profiles = sorted(view.scan(), key=_score, reverse=True)
                finally:
                    view.close()
                status.print(f"[green]✓[/] {len(profiles)} unified profiles in Redis; "
                             f"the {show} with the most channels:")
                for profile in profiles[:show]:
                    text = orjson.dumps(profile, option=orjson.OPT_INDENT_2).decode()
                    console.print(Syntax(text, "json", theme="ansi_dark", word_wrap=True))
                spinner.update("stopping the stack")
        status.print(f"[green]✓[/] stack stopped; demo took {time.monotonic() - started:.1f}s")
