"""The status page in a real headless Chromium, against a running stack."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
from confluent_kafka import Producer

from producers.synthetic import generate
from tests.e2e.conftest import Cli
from tests.support.data import write_jsonl
from tests.support.http import get_json
from unifier.processes import free_port

pytestmark = pytest.mark.e2e

# Debian's chromium package; `.ci/run` installs it. Flags as the machine notes ask:
# without the background-networking ones Chromium keeps dialling out on a closed
# network.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("CI must run the browser test: install Debian's chromium package")
        pytest.skip("no chromium on this machine (apt-get install chromium); CI runs it")
    return found


def rendered(chromium: str, url: str, profile: Path, screenshot: Path | None = None) -> str:
    """The page's DOM after its scripts ran (a few seconds of the page's time)."""
    args = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=6000"]
    if screenshot is not None:
        shot = [*args, "--window-size=1280,600", "--hide-scrollbars", f"--screenshot={screenshot}"]
        subprocess.run([*shot, url], capture_output=True, timeout=120, check=True)
    done = subprocess.run(
        [*args, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True
    )
    return done.stdout


class Shown(HTMLParser):
    """Text and attributes of the elements with an id, as the browser left them."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.text: dict[str, str] = {}
        self.attrs: dict[str, dict[str, str]] = {}
        self._open: list[str | None] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        d = {k: v or "" for k, v in attrs}
        ident = d.get("id")
        if ident:
            self.attrs[ident] = d
            self.text.setdefault(ident, "")
        if tag not in ("polyline", "br", "meta", "input", "img"):
            self._open.append(ident)

    def handle_endtag(self, tag: str) -> None:
        if self._open and tag not in ("polyline",):
            self._open.pop()

    def handle_data(self, data: str) -> None:
        for ident in self._open:
            if ident:
                self.text[ident] += data


def test_the_status_page_shows_what_the_stack_did(cli: Cli, tmp_path: Path, chromium: str) -> None:
    cli.env["UNIFIER_WORKER_METRICS_PORT"] = str(free_port())
    assert cli("stack", "up").returncode == 0
    events = generate(people=60, seed=2)
    path = tmp_path / "events.jsonl"
    write_jsonl(path, events)
    assert cli("ingest", str(path)).returncode == 0
    producer = Producer({"bootstrap.servers": cli.env["UNIFIER_BOOTSTRAP_SERVERS"]})
    producer.produce("touchpoints", b"not avro")  # one dead letter
    assert producer.flush(10) == 0
    assert cli("lag", "--wait", "--timeout", "120").returncode == 0

    port = free_port()
    page = cli.start("status", "--serve", "--port", str(port), "--interval", "0.5")
    try:
        url = f"http://127.0.0.1:{port}/"
        api = None
        for _ in range(300):  # until the page's data has settled (bounded, not timed)
            try:
                status, api = get_json(f"{url}api/status")
            except OSError:
                status = 0
            settled = (
                api and api["totals"].get("dead_letters") == 1 and len(api["series"]["t"]) >= 3
            )
            if status == 200 and settled:
                break
            time.sleep(0.1)
        assert api is not None and api["workers_up"] == 1, api

        shown = Shown(rendered(chromium, url, tmp_path / "chrome", tmp_path / "status.png"))
        assert shown.text["state"] == "caught up"
        assert shown.attrs["state"]["class"] == "ok"
        assert shown.text["workers"] == "1/1"
        assert shown.text["view"] == "complete"  # streams.heal's markers, all partitions
        for stage in ("route", "identity", "profile"):
            assert shown.text[f"lag-{stage}"] == "0"
            assert shown.text[f"lagsec-{stage}"] == "· 0.0 s"
        assert shown.text["events-total"] == f"{len(events):,}"
        assert shown.text["dlq-total"] == "1"
        merges = int(api["totals"]["merges"])
        assert merges > 0 and shown.text["merges-total"] == f"{merges:,}"
        for chart in ("chart-events", "chart-dlq", "chart-merges", "chart-lag-route"):
            assert int(shown.attrs[chart]["data-points"]) >= 2, chart
            assert "peak" in shown.text[f"{chart}-peak"]
        assert shown.text["error"] == ""
        quality = api["quality"]  # the data-quality panel: the KPIs the workers kept
        assert quality["profiles"]["count"] > 0
        assert shown.text["profiles-count"] == f"{quality['profiles']['count']:,}"
        assert shown.text["dups"] == f"{quality['duplicates']['groups']:,}"
        assert "newest from web" in shown.text["quality"]
        assert (tmp_path / "status.png").stat().st_size > 10_000  # a picture, not a blank

        # The broker gone: the page says so instead of showing stale numbers as fine.
        assert cli("stack", "down").returncode == 0
        for _ in range(300):
            status, api = get_json(f"{url}api/status")
            if api["error"]:
                break
            time.sleep(0.1)
        down = Shown(rendered(chromium, url, tmp_path / "chrome"))
        assert down.text["state"] == "broker unreachable"
        assert down.text["error"].startswith("cannot measure: ")
    finally:
        page.send_signal(signal.SIGINT)
        try:
            page.wait(timeout=60)
        finally:
            page.kill()
    assert page.returncode == 0, cli.stderr_of(page)
