"""A webhook destination against a real local HTTP receiver that fails 30 % of
requests, answers 429 with Retry-After, stalls once — and a ``unifier sync`` process
killed mid-stream: every profile's final state arrives, a profile's events are never
out of order, every signature verifies, nothing is lost."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest

from config.settings import Settings
from sinks.destinations.webhook import SIGNATURE_HEADER, verify
from tests.integration.test_destinations import _iso, send
from tests.integration.test_pipeline import caught_up, exported
from unifier.stack import EmbeddedStack

pytestmark = pytest.mark.integration

SECRET = b"whsec-test-0123456789"
#: The receiver refuses this customer's first 8 requests: they are parked (and everyone
#: who shared a request with them), then delivered from the retry topic.
PICKY = "hook7@hooks-test.example"


class Receiver:
    """An HTTP receiver that misbehaves on purpose and records what it accepted."""

    def __init__(self, seed: int = 3) -> None:
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.accepted: list[dict[str, Any]] = []  # in arrival order, duplicates kept
        self.requests = 0
        self.bad_signatures = 0
        self.answers: dict[int, int] = {}
        self.stalled = False
        self.picky_refused = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status, extra = receiver.decide(body, self.headers.get(SIGNATURE_HEADER, ""))
                self.send_response(status)
                for k, v in extra.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def decide(self, body: bytes, signature: str) -> tuple[int, dict[str, str]]:
        with self.lock:
            self.requests += 1
            n = self.requests
            roll = self.rng.random()
        if not verify(SECRET, body, signature, time.time()):
            with self.lock:
                self.bad_signatures += 1
            return self._answer(401), {}
        events = orjson.loads(body)["events"]
        picky = any(e.get("data", {}).get("email") == PICKY for e in events)
        if picky:
            with self.lock:
                self.picky_refused += 1
                refuse = self.picky_refused <= 8  # long enough to be parked
            if refuse:
                return self._answer(500), {}
        with self.lock:
            stall = n >= 7 and not self.stalled
            self.stalled = True if stall else self.stalled
        if stall:  # once: longer than the client waits
            time.sleep(4)
            return self._answer(503), {}
        if roll < 0.1:
            return self._answer(429), {"Retry-After": "1"}
        if roll < 0.4:
            return self._answer(500), {}
        with self.lock:
            self.accepted += events
        return self._answer(200), {}

    def _answer(self, status: int) -> int:
        with self.lock:
            self.answers[status] = self.answers.get(status, 0) + 1
        return status

    def latest(self) -> dict[str, dict[str, Any]]:
        """Per profile, its last profile event after dropping repeated ids (what a
        receiver honouring the idempotency key keeps)."""
        seen: set[str] = set()
        out: dict[str, dict[str, Any]] = {}
        with self.lock:
            events = list(self.accepted)
        for e in events:
            if e["id"] in seen:
                continue
            seen.add(e["id"])
            if e["type"].startswith("profile."):
                out[e["profile_id"]] = e
        return out

    def inversions(self) -> list[str]:
        seen: set[str] = set()
        last: dict[str, int] = {}
        wrong = []
        with self.lock:
            events = list(self.accepted)
        for e in events:
            if e["id"] in seen or e["type"] != "profile.updated":
                continue
            seen.add(e["id"])
            if e["version"] <= last.get(e["profile_id"], 0):
                wrong.append(f"{e['profile_id']}: v{e['version']} after v{last[e['profile_id']]}")
            last[e["profile_id"]] = e["version"]
        return wrong

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.close()


def start_sync(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        **settings.env(),
        "UNIFIER_DESTINATIONS_PATH": str(settings.destinations_path),
        "SYNC_WEBHOOK_SECRET": SECRET.decode(),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "unifier", "sync", "run"],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def test_webhook_delivers_every_final_state_in_order_through_failures_and_a_kill(
    topics: Settings, workers: EmbeddedStack, receiver: Receiver, tmp_path: Path
) -> None:
    path = tmp_path / "destinations.toml"
    path.write_text(
        f"""
[destinations.hooks]
kind = "webhook"
url = "{receiver.url}"
batch_events = 50
timeout_s = 2
park_after_s = 1.5
max_backoff_s = 2
[destinations.hooks.fields]
email = "identifiers.email"
name = "traits.first_name"
"""
    )
    settings = topics.model_copy(update={"destinations_path": path})
    workers.start_worker()
    people = 200
    log = tmp_path / "sync.log"
    proc = start_sync(settings, log)
    try:
        for wave in range(3):
            docs = [
                {"event_id": f"w{wave}-{i}", "type": "profile_updated", "source": "web",
                 "occurred_at": _iso(time.time() - 600 + wave), "identifiers":
                 {"email": f"hook{i}@hooks-test.example"}, "traits": {"first_name": f"N{i}v{wave}"}}
                for i in range(people)
            ]  # fmt: skip
            send(settings, docs)
            time.sleep(3)
            if wave == 1:  # killed mid-stream, then started again
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                proc = start_sync(settings, log)
        caught_up(settings)
        profiles = exported(settings)
        assert len(profiles) == people
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            latest = receiver.latest()
            if all(
                latest.get(pid, {}).get("version") == p["version"] for pid, p in profiles.items()
            ):
                break
            time.sleep(1)
        latest = receiver.latest()
        missing = [pid for pid, p in profiles.items()
                   if latest.get(pid, {}).get("version") != p["version"]]  # fmt: skip
        assert missing == [], (
            f"{len(missing)} profiles without their final state; {log.read_text()[-3000:]}"
        )
        for pid, p in profiles.items():
            assert latest[pid]["data"] == {
                "email": p["identifiers"]["email"][0],
                "name": p["traits"]["first_name"],
            }
        assert receiver.inversions() == []
        assert receiver.bad_signatures == 0
        # the receiver did misbehave, as asked
        assert receiver.answers.get(500, 0) > 0 and receiver.answers.get(429, 0) > 0
        assert receiver.stalled
        assert "parked" in log.read_text()  # the picky customer's events went round
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_a_webhook_gets_only_consenting_profiles_and_their_removal_and_erasure(
    topics: Settings, workers: EmbeddedStack, tmp_path: Path
) -> None:
    """Ann consents; Ben never answers (never sent); Cyd consents, then withdraws
    (`profile.removed`, reason consent); Dee consents, then is erased
    (`profile.erased`, nothing of hers after it)."""
    from serve.privacy import find_subject, request_erasure
    from unifier.sync import Syncer, destinations_of

    receiver = Receiver()
    receiver.rng = random.Random(0)
    receiver.decide = lambda body, sig: (  # type: ignore[method-assign]
        receiver.accepted.extend(orjson.loads(body)["events"]) or 200,
        {},
    )
    path = tmp_path / "destinations.toml"
    path.write_text(
        f'[destinations.mailer]\nkind = "webhook"\nurl = "{receiver.url}"\n'
        'purpose = "email_marketing"\n[destinations.mailer.fields]\n'
        'email = "identifiers.email"\n'
    )
    settings = topics.model_copy(update={"destinations_path": path})
    workers.start_worker()
    who = {n: f"{n}@consent-hooks.example" for n in ("ann", "ben", "cyd", "dee")}

    def event(n: str, i: int, consent: bool | None) -> dict[str, Any]:
        doc: dict[str, Any] = {"event_id": f"{n}-{i}", "type": "signed_up", "source": "web",
                               "occurred_at": _iso(time.time() - 600 + i),
                               "identifiers": {"email": who[n]}}  # fmt: skip
        if consent is not None:
            doc["consent"] = {"email_marketing": consent}
        return doc

    send(settings, [event("ann", 0, True), event("ben", 0, None), event("cyd", 0, True),
                    event("dee", 0, True)])  # fmt: skip
    caught_up(settings)
    os.environ["SYNC_WEBHOOK_SECRET"] = SECRET.decode()
    syncer = Syncer(settings, destinations_of(settings, "default"), group="default")
    try:

        def pump(until: Any) -> None:
            deadline = time.monotonic() + 60
            while not until() and time.monotonic() < deadline:
                syncer.step()

        def emails() -> set[str]:
            return {e["data"]["email"] for e in receiver.accepted if "data" in e}

        pump(lambda: len(emails()) >= 3)
        send(settings, [event("cyd", 1, False)])
        dee = find_subject(settings, ("email", who["dee"]), None)
        assert dee.profile_id is not None
        request_erasure(settings, dee, reason="test")
        caught_up(settings)
        by: dict[str, list[str]] = {}

        def done() -> bool:
            by.clear()
            for e in receiver.accepted:
                by.setdefault(e["profile_id"], []).append(e["type"])
            return any(t[-1:] == ["profile.removed"] for t in by.values()) and any(
                t[-1:] == ["profile.erased"] for t in by.values()
            )

        pump(done)
        for _ in range(10):
            syncer.step()
        done()
    finally:
        syncer.close()
        receiver.close()
    profiles = {e["profile_id"]: e["data"]["email"] for e in receiver.accepted if "data" in e}
    named = {email: pid for pid, email in profiles.items()}
    assert who["ben"] not in named  # never consented: never sent
    assert set(named) == {who["ann"], who["cyd"], who["dee"]}
    assert by[named[who["ann"]]] == ["profile.updated"]
    cyd = [e for e in receiver.accepted if e["profile_id"] == named[who["cyd"]]]
    assert [e["type"] for e in cyd][-1] == "profile.removed" and cyd[-1]["reason"] == "consent"
    assert by[named[who["dee"]]][-1] == "profile.erased"
