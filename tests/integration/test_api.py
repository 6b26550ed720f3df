"""The read API (`unifier api`) against the real stack: what a support tool or a
downstream service sees."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import threading
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from config.settings import Settings
from profiles.configured import trait_rules
from profiles.projection import view_of
from schemas.wire import node_from
from serve.api import OPENAPI, create_api, openapi_document
from sinks.keys import sealer_for
from sinks.redis_view import mark_complete_sync
from sinks.redisconn import connect, connect_async
from streams.topology import topology
from tests.integration.test_identity import ev, send
from tests.integration.test_pipeline import caught_up, exported
from tests.support.backends import both_redis
from tests.support.http import get_json, get_text, metric
from tests.support.kafka import consume_all
from unifier.processes import free_port, wait_until
from unifier.stack import EmbeddedStack

pytestmark = pytest.mark.integration

KEY, NO_SCOPE = "k-test-read-0123456789", "k-test-none-0123456789"
PII = "k-test-pii-0123456789"  # read and read_pii: identifiers in clear
ADMIN = "k-test-admin-0123456789"  # read and admin: privacy requests (masked reads)


@pytest.fixture
def api(topics: Settings) -> Iterator[str]:
    """The API on a free port, in a thread with its own loop; stopped after the test."""
    keys = {KEY: ["read"], PII: ["read", "read_pii"], NO_SCOPE: [],
            ADMIN: {"name": "privacy-desk", "scopes": ["read", "admin"]}}  # fmt: skip
    # (Reads that wait for a version wait briefly here: the fuzzer asks for ones that
    # never come.)
    settings = topics.model_copy(update={"api_keys": keys, "api_max_wait_ms": 300})
    port = free_port()
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(create_api(settings))
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def mark_view_complete(settings: Settings) -> None:
    client = connect(settings.redis_url)
    try:
        mark_complete_sync(client, range(settings.internal_partitions), b"{}")
    finally:
        client.close()


@both_redis
def test_the_api_answers_what_the_worker_holds(
    topics: Settings, workers: EmbeddedStack, api: str
) -> None:
    settings = topics
    workers.start_worker()
    send(settings, [ev(1, "page_viewed", anonymous_id="a-9"),
                    ev(2, "email_opened", email="Ana@Example.org")])  # fmt: skip
    caught_up(settings)
    before = set(exported(settings))
    send(settings, [ev(3, "signed_in", user_id="u-1", email="ana@example.org", anonymous_id="a-9")])
    caught_up(settings)
    [ana] = exported(settings).values()
    pid = ana["profile_id"]

    assert get_json(f"{api}/v1/profiles/{pid}", PII) == (200, ana)
    # ... which is the state the worker holds for it: its table, read back from the
    # table's changelog (the latest record per profile id), personal data sealed.
    held = {}
    for m in consume_all(
        settings, topology(settings).tables["profiles"].changelog, settings.internal_partitions
    ):
        held[orjson.loads(m.key())] = m.value()  # Faust writes table keys as JSON
    stored = view_of(pid, node_from(held[pid]), trait_rules(settings))
    assert "ana@example.org" not in orjson.dumps(stored).decode()
    sealer = sealer_for(settings)
    assert sealer is not None
    assert get_json(f"{api}/v1/profiles/{pid}", PII)[1] == sealer.open_view(stored)
    # Without read_pii, identifiers come back masked.
    masked = get_json(f"{api}/v1/profiles/{pid}", KEY)[1]
    assert masked["identifiers"] == {
        "anonymous_id": ["a***"], "email": ["a***@example.org"], "user_id": ["u***"]
    }  # fmt: skip
    # By identifier, normalized the way the worker does; merged-away ids answer with
    # the survivor.
    assert get_json(f"{api}/v1/profiles?type=email&value=%20ANA@example.ORG", PII) == (200, ana)
    for old in before:
        assert get_json(f"{api}/v1/profiles/{old}", PII) == (200, ana)
    status, why = get_json(f"{api}/v1/profiles/{pid}/why", KEY)
    assert status == 200 and why["profile_id"] == pid
    assert {m["event_id"] for m in why["merges"]} == {"e3"}
    assert "ana@example.org" not in orjson.dumps(why).decode()
    assert "email:ana@example.org" in {
        i["identifier"] for i in get_json(f"{api}/v1/profiles/{pid}/why", PII)[1]["identifiers"]
    }

    # Errors a client can act on, never a stack trace.
    assert get_json(f"{api}/v1/profiles/p_nobody", KEY) == (404, {"error": "no profile p_nobody"})
    assert get_json(f"{api}/v1/profiles?type=email&value=nobody@x.org", KEY) == (
        404, {"error": "no profile with that email"})  # fmt: skip
    assert get_json(f"{api}/v1/profiles?type=shoe&value=42", KEY)[0] == 400
    assert get_json(f"{api}/v1/profiles?type=phone&value=12", KEY) == (
        400, {"error": "phone: not a valid phone number"})  # fmt: skip
    assert get_json(f"{api}/v1/profiles?type=email", KEY)[0] == 400
    assert get_json(f"{api}/v1/profiles/{pid}")[0] == 401
    assert get_json(f"{api}/v1/profiles/{pid}", "k-wrong")[1] == {"error": "unknown API key"}
    assert get_json(f"{api}/v1/profiles/{pid}", NO_SCOPE)[0] == 403
    assert get_json(f"{api}/ready") == (200, {"status": "ready"})
    assert get_json(f"{api}/health") == (200, {"status": "ok"})
    assert get_json(f"{api}/openapi.json") == (200, openapi_document(settings))
    assert get_json(f"{api}/nowhere")[0] == 404
    metrics = get_text(f"{api}/metrics").splitlines()
    requests = "unifier_http_requests_total"
    by_id, by_ident = "/v1/profiles/{profile_id}", "/v1/profiles"
    assert metric(metrics, requests, service="api", route=by_id, status="200") >= 1
    # (>=: the registry is per process, and the API runs in the test process)
    assert metric(metrics, requests, service="api", route=by_ident, status="400") >= 3


ANA = {"email": "ana.known@example.org", "phone": "+14155550123", "first_name": "Anabela"}


def _known_profile(settings: Settings) -> None:
    """A profile with personal data, sealed as the worker writes it, in the view."""
    from profiles.touchpoint import Touchpoint
    from sinks.redis_view import RedisWriter

    sealer = sealer_for(settings)
    assert sealer is not None
    [tp] = sealer.seal([Touchpoint("e1", "x", "web", 0, {"email": ANA["email"],
                        "phone": ANA["phone"]}, {"first_name": ANA["first_name"]})])  # fmt: skip
    view = {"profile_id": "p_known", "version": 1, "segments": [], "computed": {},
            "identifiers": {t: [v] for t, v in sorted(tp.identifiers.items())},
            "traits": dict(tp.traits)}  # fmt: skip
    why = {"identifiers": [{"identifier": f"{t}:{v[0]}", "event_id": "e1", "how": "first seen"}
                           for t, v in view["identifiers"].items()],
           "merges": [], "refused": []}  # fmt: skip
    client = connect(settings.redis_url)
    try:
        RedisWriter(client).write([view], {"p_known": why})
    finally:
        client.close()


def test_no_request_breaks_the_api_or_its_document(topics: Settings, api: str) -> None:
    """Schemathesis sends what the document allows, and what it does not, to every
    operation, with a key that may read personal data and one that may not: no answer
    is a 5xx, every answer matches the document (status, content type, schema), a
    request the document does not allow is refused, and without ``read_pii`` no answer
    holds an email, phone or name in clear. (Driven by hand, not by its pytest plugin:
    the plugin's fixture loader reads a private pytest attribute that pytest 9 no
    longer has.)"""
    mark_view_complete(topics)  # as a worker does (streams.heal): /ready answers 200
    _known_profile(topics)
    clear = [v.encode() for v in ANA.values()]
    # The known profile, by each way in: in clear with read_pii, masked without.
    paths = ("/v1/profiles/p_known", f"/v1/profiles?type=email&value={ANA['email']}",
             "/v1/profiles?type=phone&value=%2B14155550123",
             "/v1/profiles/p_known/why")  # fmt: skip
    for path in paths:
        status, body = get_json(api + path, PII)
        assert status == 200 and ANA["email"] in orjson.dumps(body).decode(), path
        status, body = get_json(api + path, KEY)
        assert status == 200 and not any(c in orjson.dumps(body) for c in clear), body
    schema = schemathesis.openapi.from_url(f"{api}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == len(OPENAPI["paths"])
    modes = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    for operation, mode, key in itertools.product(operations, modes, (KEY, PII, ADMIN)):
        spec = OPENAPI["paths"][operation.path][operation.method.lower()]
        if mode is GenerationMode.NEGATIVE and not {"parameters", "requestBody"} & set(spec):
            continue  # nothing in the request to get wrong
        _fuzz(operation, mode, key, clear)


def _fuzz(operation: Any, mode: GenerationMode, key: str, clear: list[bytes]) -> None:
    @given(case=operation.as_strategy(mode))
    @settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck))
    def check(case: Any) -> None:
        # Values are checked beyond what JSON Schema says (a phone number must be one,
        # an email must have a domain) and refused with 400 and the reason, as
        # documented: "schema-valid but rejected" is expected for those.
        response = case.call_and_validate(
            headers={"Authorization": f"Bearer {key}"},
            excluded_checks=[positive_data_acceptance],
        )
        if key != PII:
            assert not any(c in response.content for c in clear), response.content

    check()


@both_redis
def test_segments_and_their_members_page_by_page(topics: Settings, api: str) -> None:
    """The sets follow the views written (the write-if-newer script moves a profile
    between them), and the API lists definitions and pages through members."""
    from profiles.segments import Definition
    from sinks.redis_view import RedisWriter
    from streams.segments import definition_value

    client = connect(topics.redis_url)
    writer = RedisWriter(client)

    def view(pid: str, version: int, segments: list[str]) -> dict[str, Any]:
        return {"profile_id": pid, "identifiers": {}, "traits": {}, "computed": {},
                "segments": segments, "version": version}  # fmt: skip

    try:
        buyers = Definition("buyers", "profile.computed.orders >= 1", "bought once", 7)
        asyncio.run(_write_definitions(topics.redis_url, {"buyers": definition_value(buyers)}))
        writer.write([view(f"p_{i:04d}", 1, ["buyers"]) for i in range(1200)])
        writer.write([view("p_0000", 2, []), view("p_0001", 0, [])])  # out; an older write
        status, body = get_json(f"{api}/v1/segments", KEY)
        assert status == 200
        assert body == {"segments": [{**buyers.to_json(), "members": 1199}]}
        seen: list[str] = []
        cursor: str | None = "0"
        while cursor is not None:
            status, page = get_json(
                f"{api}/v1/segments/buyers/members?cursor={cursor}&limit=300", KEY
            )
            assert status == 200 and page["segment"] == "buyers"
            seen += page["members"]
            cursor = page["next_cursor"]
        assert sorted(set(seen)) == [f"p_{i:04d}" for i in range(1, 1200)]
        assert get_json(f"{api}/v1/segments/nobody/members", KEY) == (
            404, {"error": "no segment nobody"})  # fmt: skip
        assert get_json(f"{api}/v1/segments/buyers/members?limit=0", KEY)[0] == 400
        assert get_json(f"{api}/v1/segments", NO_SCOPE)[0] == 403
    finally:
        client.close()


async def _write_definitions(url: str, records: dict[str, bytes]) -> None:

    from sinks.redis_view import write_definitions

    client = connect_async(url)
    try:
        await write_definitions(client, records)
    finally:
        await client.aclose()


def test_an_admin_erases_through_the_api_and_every_read_is_audited(
    topics: Settings, workers: EmbeddedStack, api: str
) -> None:
    from serve.privacy import read_audit
    from tests.support.http import post_json

    settings = topics
    workers.start_worker()
    send(settings, [ev(1, "signed_in", user_id="u-7", email="eve@example.org")])
    caught_up(settings)
    [eve] = exported(settings).values()
    pid = eve["profile_id"]
    assert get_json(f"{api}/v1/profiles/{pid}", PII)[0] == 200
    body = {"type": "email", "value": "EVE@example.org", "reason": "ticket 7"}
    assert post_json(f"{api}/v1/privacy/erasures", body, KEY)[0] == 403  # read is not admin
    status, answer = post_json(f"{api}/v1/privacy/erasures", body, ADMIN)
    assert status == 202 and answer["profile_id"] == pid, answer
    receipt = answer["receipt"]
    wait_until(lambda: get_json(f"{api}/v1/privacy/erasures/{receipt}", ADMIN)[1].get("done"),
               30, "the erasure")  # fmt: skip
    assert get_json(f"{api}/v1/profiles/{pid}", PII)[0] == 404
    assert get_json(f"{api}/v1/privacy/erasures/er_nobody", ADMIN)[0] == 404
    assert get_json(f"{api}/v1/privacy/export?type=email&value=eve@example.org", ADMIN)[0] == 404
    # Who read which profile, and who erased it: named keys, no key and no email.
    records = list(read_audit(settings, 0))
    seen = [(r["actor"], r["action"], r.get("profile")) for r in records]
    assert (f"key-{hashlib.sha256(PII.encode()).hexdigest()[:8]}", "read", pid) in seen
    assert ("api:privacy-desk", "erase", pid) in seen
    text = orjson.dumps(records).decode()
    assert "eve@example.org" not in text and PII not in text and ADMIN not in text


def test_an_admin_splits_a_wrong_merge_through_the_api(
    topics: Settings, workers: EmbeddedStack, api: str
) -> None:
    from serve.privacy import read_audit
    from tests.support.http import post_json

    settings = topics
    workers.start_worker()
    send(settings, [ev(1, "signed_in", email="ann@example.org", anonymous_id="kiosk-1"),
                    ev(2, "pos_sale", loyalty_id="LC-77", anonymous_id="kiosk-1")])  # fmt: skip
    caught_up(settings)
    [both] = exported(settings).values()
    pid = both["profile_id"]
    body = {"profile_id": pid, "detach": [{"type": "loyalty_id", "value": "LC-77"}],
            "reason": "ticket 9"}  # fmt: skip
    assert post_json(f"{api}/v1/identity/splits", body, KEY)[0] == 403  # read is not admin
    bad = {"profile_id": pid, "detach": [{"type": "email", "value": "nobody@example.org"}]}
    status, answer = post_json(f"{api}/v1/identity/splits", bad, ADMIN)
    assert status == 409 and "does not hold email=n***@example.org" in answer["error"], answer
    assert post_json(f"{api}/v1/identity/splits", {"profile_id": pid}, ADMIN)[0] == 400
    status, answer = post_json(f"{api}/v1/identity/splits", body, ADMIN)
    assert status == 202 and answer["profile_id"] == pid, answer

    def parted() -> bool:
        status, found = get_json(f"{api}/v1/profiles?type=loyalty_id&value=LC-77", PII)
        return status == 200 and found["profile_id"] != pid

    wait_until(parted, 30, "the split")
    status, kept = get_json(f"{api}/v1/profiles/{pid}", PII)
    assert status == 200 and "loyalty_id" not in kept["identifiers"]
    assert kept["computed"]["event_count"] == 1
    records = [r for r in read_audit(settings, 0) if r["action"] == "split"]
    assert [(r["actor"], r["profile"], r["split"]) for r in records] == [
        ("api:privacy-desk", pid, answer["split"]),  # asked
        ("worker", pid, answer["split"]),  # done
    ]
    assert "LC-77" not in orjson.dumps(records).decode()


@both_redis
def test_a_service_reads_its_own_write(topics: Settings, workers: EmbeddedStack, api: str) -> None:
    """Sent an event, a service asks for the profile as of it (the collector's
    read_after token: the event's time) and gets it once the worker applied it — or a
    409 naming the version there is, when asked for more than will come in time."""
    settings = topics
    workers.start_worker()
    send(settings, [ev(1, "signed_in", user_id="u-9", email="rw@example.org")])
    caught_up(settings)
    [before] = exported(settings).values()
    pid, version = before["profile_id"], before["version"]
    assert before["freshness"]["event_time"] == "2026-11-18T11:06:41.000Z"  # e1's time
    assert before["freshness"]["position"].split(":")[0].isdigit()
    later = ev(2, "order_completed", user_id="u-9")
    token = later.occurred_at_ms
    status, _ = get_json(f"{api}/v1/profiles/{pid}?read_after={token}&wait_ms=0", KEY)
    assert status == 409  # not sent yet: not there
    send(settings, [later])

    def applied() -> bool:  # (reads here wait 300 ms at most; a service waits longer)
        return get_json(f"{api}/v1/profiles/{pid}?read_after={token}&wait_ms=300", KEY)[0] == 200

    wait_until(applied, 30, "the event applied")
    status, after = get_json(f"{api}/v1/profiles/{pid}?read_after={token}", KEY)
    assert status == 200 and after["computed"]["event_count"] == 2, after
    assert after["version"] > version
    status, found = get_json(
        f"{api}/v1/profiles?type=user_id&value=u-9&min_version={after['version']}", KEY
    )
    assert status == 200 and found["profile_id"] == pid
    status, answer = get_json(f"{api}/v1/profiles/{pid}?min_version=999999&wait_ms=100", KEY)
    assert status == 409 and f"version {after['version']}" in answer["error"]
    assert get_json(f"{api}/v1/profiles/{pid}?min_version=x", KEY)[0] == 400
    assert get_json(f"{api}/v1/profiles/p_nobody?min_version=1&wait_ms=50", KEY)[0] == 404
