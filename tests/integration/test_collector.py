"""The HTTP collector as a website sees it: a real process, the real broker behind it."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from config.settings import Settings
from tests.support.http import accepted, get, get_text, metric, post
from tests.support.kafka import touchpoints_on_topic
from unifier.processes import free_port
from unifier.stack import EmbeddedStack

pytestmark = pytest.mark.integration

KEY = "wk_test_web"


@pytest.fixture
def collector(topics: Settings, tmp_path: Path) -> Iterator[tuple[str, Settings]]:
    settings = topics.model_copy(
        update={"collector_port": free_port(), "collector_write_keys": {KEY: "web"}}
    )
    with EmbeddedStack(settings, tmp_path / "collector") as stack:
        stack.start_collector()
        yield f"http://127.0.0.1:{settings.collector_port}", settings


def segment_track(message_id: str, **extra: object) -> dict[str, object]:
    return {
        "type": "track",
        "event": "Product Viewed",
        "messageId": message_id,
        "anonymousId": "anon-1",
        "timestamp": "2026-11-22T10:00:00.000Z",
        "properties": {"sku": "SKU-1"},
        "context": {
            "ip": "203.0.113.9",
            "userAgent": "Mozilla/5.0",
            "page": {"url": "https://shop.example/p/1", "referrer": "https://search.example/"},
            "library": {"name": "analytics.js", "version": "5.2.0"},
            "campaign": {"source": "newsletter", "medium": "email"},
        },
        **extra,
    }


def test_segment_calls_land_on_the_topic_as_touchpoints(
    collector: tuple[str, Settings],
) -> None:
    url, settings = collector
    assert accepted(post(f"{url}/v1/track", segment_track("m-1"), KEY)) == (
        200,
        {"success": True, "accepted": 1},
    )
    identify = {
        "userId": "u-1",
        "anonymousId": "anon-1",
        "messageId": "m-2",
        "traits": {"email": "Ana@Example.com", "firstName": "Ana", "address": {"city": "Lyon"}},
        "context": {"consent": {"categoryPreferences": {"email_marketing": True, "ads": False}}},
    }
    assert post(f"{url}/v1/identify", identify, KEY)[0] == 200
    order = {
        "type": "track",
        "event": "Order Completed",
        "messageId": "m-3",
        "userId": "u-1",
        "properties": {
            "order_id": "A-1",
            "total": 42.5,
            "currency": "eur",
            "products": [{"sku": "SKU-1", "price": 21.25, "quantity": 2, "category": "shoes"}],
        },
    }
    page = {"type": "page", "messageId": "m-4", "anonymousId": "anon-2", "name": "Home"}
    status, answer = post(f"{url}/v1/batch", {"batch": [order, page], "writeKey": "ignored"}, KEY)
    assert accepted((status, answer)) == (200, {"success": True, "accepted": 2})

    got = {tp.event_id: tp for tp in touchpoints_on_topic(settings)}
    assert sorted(got) == ["m-1", "m-2", "m-3", "m-4"]
    viewed = got["m-1"]
    assert (viewed.type, viewed.source) == ("product_viewed", "web")
    assert viewed.identifiers == {"anonymous_id": "anon-1"}
    assert viewed.context["page_url"] == "https://shop.example/p/1"
    assert viewed.context["library"] == "analytics.js/5.2.0"
    assert viewed.context["campaign"] == {"source": "newsletter", "medium": "email"}
    assert viewed.received_at_ms is not None
    ana = got["m-2"]
    # Normalized and sealed before they were sent (opened here: profiles.privacy).
    assert ana.identifiers == {
        "user_id": "u-1",
        "anonymous_id": "anon-1",
        "email": "ana@example.com",
    }
    assert ana.traits == {"first_name": "Ana", "address.city": "Lyon"}
    # On the topic itself, no identifier or name in clear.
    raw = [tp for tp in touchpoints_on_topic(settings, opened=False) if tp.event_id == "m-2"]
    assert raw and not {"u-1", "anon-1", "ana@example.com", "Ana"} & {
        *raw[0].identifiers.values(),
        *map(str, raw[0].traits.values()),
    }
    assert ana.consent == {"email_marketing": True, "ads": False}
    bought = got["m-3"]
    assert bought.type == "order_completed"
    assert bought.order is not None
    assert (bought.order["currency"], bought.order["total"]) == ("EUR", Decimal("42.5"))
    assert bought.order["items"][0]["unit_price"] == Decimal("21.25")
    assert got["m-4"].type == "page_viewed"


def test_bad_requests_get_a_reason_and_send_nothing(collector: tuple[str, Settings]) -> None:
    url, settings = collector
    status, answer = post(f"{url}/v1/track", segment_track("x-1"))
    assert status == 401
    assert "write key" in answer["error"]
    assert post(f"{url}/v1/track", segment_track("x-2"), "wrong-key")[0] == 401
    status, answer = post(f"{url}/v1/track", b'{"type": "track",', KEY)
    assert status == 400
    assert answer["error"].startswith("malformed JSON")
    good, bad = segment_track("x-3"), segment_track("x-4", anonymousId=None)
    status, answer = post(f"{url}/v1/batch", {"batch": [good, bad]}, KEY)
    assert status == 400
    assert answer["errors"] == [{"index": 1, "reason": "userId or anonymousId is required"}]
    status, answer = post(f"{url}/v1/unknown", {"groupId": "g"}, KEY)
    assert status == 404
    assert answer == {"success": False, "error": "Not Found"}
    big = segment_track("x-5", properties={"blob": "x" * settings.collector_max_body_bytes})
    status, answer = post(f"{url}/v1/track", big, KEY)
    assert status == 413
    assert "larger than" in answer["error"]
    native = {
        "event_id": "n-1",
        "type": "signed_in",
        "source": "web",
        "occurred_at": "2026-11-22T10:00:00Z",
        "identifiers": {"email": "b@example.com"},
    }
    status, answer = post(f"{url}/v1/touchpoints", [native, {**native, "event_id": ""}], KEY)
    assert status == 400
    assert answer["errors"][0]["index"] == 1
    assert "event_id" in answer["errors"][0]["reason"]
    # The process keeps serving, and only the valid request got through.
    assert accepted(post(f"{url}/v1/touchpoints", native, KEY)) == (
        200,
        {"success": True, "accepted": 1},
    )
    assert [tp.event_id for tp in touchpoints_on_topic(settings)] == ["n-1"]
    # ... and its metrics say so: events accepted and refused, requests by route and status.
    metrics = get_text(f"{url}/metrics").splitlines()
    assert metric(metrics, "unifier_collector_events_total", outcome="accepted") == 1
    assert metric(metrics, "unifier_collector_events_total", outcome="refused") == 7
    requests = "unifier_http_requests_total"
    assert metric(metrics, requests, service="collector", route="/v1/track", status="401") == 2
    assert metric(metrics, requests, service="collector", route="unmatched", status="404") == 1
    assert get(f"{url}/ready") == (200, {"status": "ready"})


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
segment_like = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["track", "identify", "page", "group", "alias"]) | json_values,
        "event": st.text(max_size=20) | json_values,
        "userId": st.text(max_size=10) | st.integers() | json_values,
        "anonymousId": st.text(max_size=10) | json_values,
        "messageId": st.uuids().map(str) | json_values,
        "timestamp": st.datetimes().map(lambda d: d.isoformat()) | json_values,
        "traits": st.dictionaries(st.sampled_from(["email", "phone", "name"]), json_values),
        "properties": st.dictionaries(
            st.sampled_from(["order_id", "total", "products"]), json_values
        ),
        "context": json_values,
    },
)
bodies = (
    st.binary(max_size=300)
    | json_values.map(lambda v: json.dumps(v).encode())
    | segment_like.map(lambda v: json.dumps(v).encode())
    | st.lists(segment_like, max_size=3).map(lambda b: json.dumps({"batch": b}).encode())
    | st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n)  # deep nesting
    | st.just(b'{"type": "track", "event": "\xff\xfe"}')  # invalid UTF-8
)
endpoints = st.sampled_from(["track", "identify", "page", "alias", "batch", "touchpoints"])


def test_random_requests_never_break_the_collector(collector: tuple[str, Settings]) -> None:
    url, settings = collector
    sent: list[str] = []

    @hsettings(
        max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None
    )
    @given(body=bodies, endpoint=endpoints, n=st.integers(0, 10**9))
    def one_request(body: bytes, endpoint: str, n: int) -> None:
        status, answer = post(f"{url}/v1/{endpoint}", body, KEY)
        assert status in (200, 400, 413), (status, answer)
        assert isinstance(answer, dict)
        assert answer["success"] is (status == 200)
        if status == 200:
            sent.extend(["?"] * answer["accepted"])
        # A valid event between the random ones is always delivered.
        event_id = f"valid-{n}-{len(sent)}"
        assert post(f"{url}/v1/track", segment_track(event_id), KEY)[0] == 200
        sent.append(event_id)

    one_request()
    on_topic = touchpoints_on_topic(settings)
    assert len(on_topic) == len(sent)
    assert {tp.event_id for tp in on_topic} >= {e for e in sent if e != "?"}
    assert get(f"{url}/health") == (200, {"status": "ok"})


def test_a_browser_running_analytics_js_can_send(collector: tuple[str, Settings]) -> None:
    """analytics-next posts text/plain to <apiHost>/t, /i, /p... with the write key in the
    body, cross-origin; the answer must carry CORS headers for the page to read it."""
    import urllib.request

    url, settings = collector
    body = json.dumps({**segment_track("browser-1"), "writeKey": KEY}).encode()
    request = urllib.request.Request(f"{url}/v1/t", data=body, method="POST")
    request.add_header("Content-Type", "text/plain")
    request.add_header("Origin", "https://shop.example")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
        assert response.headers["Access-Control-Allow-Origin"] == "*"
    preflight = urllib.request.Request(f"{url}/v1/i", method="OPTIONS")
    preflight.add_header("Origin", "https://shop.example")
    preflight.add_header("Access-Control-Request-Method", "POST")
    with urllib.request.urlopen(preflight, timeout=10) as response:
        assert response.status == 204
        assert "POST" in response.headers["Access-Control-Allow-Methods"]
    status, answer = post(f"{url}/v1/g", {"type": "group", "groupId": "g-1", "writeKey": KEY})
    assert status == 400
    assert "'group' is not supported" in answer["errors"][0]["reason"]
    assert [tp.event_id for tp in touchpoints_on_topic(settings)] == ["browser-1"]


def test_without_a_broker_the_collector_says_so(tmp_path: Path) -> None:
    """It starts, reports itself alive but not ready, and answers 503 (retry later)
    instead of 200 when the broker does not take the events."""
    settings = Settings(
        bootstrap_servers=f"127.0.0.1:{free_port()}",  # nothing listens there
        state_dir=tmp_path,
        collector_port=free_port(),
        collector_write_keys={KEY: "web"},
        collector_delivery_timeout_s=2,
    )
    url = f"http://127.0.0.1:{settings.collector_port}"
    with EmbeddedStack(settings, tmp_path / "collector") as stack:
        stack.start_collector()
        assert get(f"{url}/health") == (200, {"status": "ok"})
        status, answer = get(f"{url}/ready")
        assert status == 503
        assert answer["status"] == "unavailable"
        status, answer = post(f"{url}/v1/track", segment_track("lost-1"), KEY)
        assert status == 503
        assert answer["success"] is False
        assert "the broker did not take the events" in answer["error"]
        # A sender is told when to try again.
        request = urllib.request.Request(f"{url}/ready")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        assert refused.value.headers["Retry-After"] == "5"
