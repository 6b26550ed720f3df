"""Destinations without a broker: the config's checks, what a destination gets of a
profile, webhook events and signatures, and the two-way law — however an app's edits
and the pipeline's changes interleave, a table and its profile end up agreeing, and
what we write is bounded by the pipeline's own changes (no echo, no loop)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from schemas.records import ProfileRemoved, ProfileUpdate
from sinks.destinations.config import Destination, DestinationError, load_destinations
from sinks.destinations.fields import edit_event, in_scope, wanted
from sinks.destinations.table import TableDestination
from sinks.destinations.webhook import Backoff, Known, events_for, sign, verify


def dest(**more: Any) -> Destination:
    base: dict[str, Any] = {
        "name": "crm", "kind": "sqlite", "url": "crm.db", "row_identifier": "crm_id",
        "fields": {"email": "identifiers.email", "phone": "identifiers.phone",
                   "first_name": "traits.first_name", "opt_in": "consent.email_marketing",
                   "nick": {"from": "traits.nick", "owner": "crm"}},
    }  # fmt: skip
    return Destination.model_validate({**base, **more})


def update(
    pid: str = "p_1",
    version: int = 1,
    *,
    first: str = "Ana",
    phones: tuple[str, ...] = ("+14155550100",),
    consent: dict[str, bool] | None = None,
    segments: tuple[str, ...] = (),
    last_seen_ms: int = 0,
) -> ProfileUpdate:
    from profiles.profile import iso

    asked = {"crm": True} if consent is None else consent
    granted = {p: {"granted": g} for p, g in asked.items()}
    return ProfileUpdate(
        pid, version, 0, {"email": ["ana@x.example"], "phone": list(phones)},
        {"first_name": first}, {"consent": granted, "last_seen": iso(last_seen_ms)}, (), {},
        segments,
    )  # fmt: skip


# --- config -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("", "no [destinations.NAME] table"),
        ("[destinations.crm\n", "Expected"),
        ('[destinations.crm]\nkind = "ftp"\nurl = "x"\n', "destinations.crm.kind"),
        ('[destinations.crm]\nkind = "webhook"\nurl = "ftp://x"\n', "an http(s) URL"),
        ('[destinations.crm]\nkind = "sqlite"\nurl = "x.db"\n[destinations.crm.fields]\n'
         'id = "identifiers.email"\n', "reserved"),
        ('[destinations.crm]\nkind = "sqlite"\nurl = "x.db"\n[destinations.crm.fields]\n'
         'email = "identifiers.email"\n', "row_identifier"),
        ('[destinations.crm]\nkind = "sqlite"\nurl = "x.db"\ninbound = false\n'
         '[destinations.crm.fields]\nx = "address.city"\n', "use identifiers.TYPE"),
        ('[destinations.crm]\nkind = "sqlite"\nurl = "x.db"\ninbound = false\n'
         '[destinations.crm.fields]\nx = { from = "traits.a", owner = "pos" }\n', "owner 'pos'"),
    ],
)  # fmt: skip
def test_a_bad_destinations_file_is_refused_with_where_and_why(
    tmp_path: Path, text: str, said: str
) -> None:
    path = tmp_path / "destinations.toml"
    path.write_text(text)
    with pytest.raises(DestinationError) as exc:
        load_destinations(path)
    assert said in str(exc.value) and str(path) in str(exc.value)


def test_a_missing_destinations_file_says_where_to_look(tmp_path: Path) -> None:
    with pytest.raises(DestinationError, match="no such file"):
        load_destinations(tmp_path / "nope.toml")


# --- what a destination gets --------------------------------------------------------


def test_scope_is_the_segment_and_a_granted_purpose_unknown_consent_is_no() -> None:
    d = dest(purpose="crm", profiles="vip")
    assert in_scope(d, update(segments=("vip",)))
    assert not in_scope(d, update(segments=()))
    assert not in_scope(d, update(segments=("vip",), consent={"crm": False}))
    assert not in_scope(d, update(segments=("vip",), consent={}))
    assert in_scope(dest(), update(consent={}))  # no purpose: everyone


def test_an_identifier_column_keeps_the_spelling_it_has_while_the_profile_holds_it() -> None:
    spec = dest().fields["phone"]
    u = update(phones=("+14155550100", "+14155550199"))
    assert wanted(spec, u, "(415) 555-0199", "US") == "(415) 555-0199"
    assert wanted(spec, u, "(415) 555-0111", "US") == "+14155550100"
    assert (
        wanted(dest().fields["opt_in"], update(consent={"email_marketing": False}), None, "US")
        is False
    )
    assert wanted(dest().fields["opt_in"], update(consent={}), None, "US") is None


def test_an_edit_is_an_event_from_the_app_with_the_row_id_only_for_the_apps_own_rows() -> None:
    d = dest()
    row = {"email": "ana@x.example", "phone": "(415) 555-0199", "first_name": "Anna"}
    mine = edit_event(d, "p_1", 7, row, {"first_name": "Anna"}, False, 1_000)
    again = edit_event(d, "p_1", 7, row, {"first_name": "Anna"}, False, 2_000)
    theirs = edit_event(d, "C-9", 3, row, {"first_name": "Anna", "opt_in": True}, True, 1_000)
    assert mine["event_id"] == again["event_id"]  # the same revision: the same event
    assert mine["source"] == "crm" and mine["traits"] == {"first_name": "Anna"}
    assert mine["identifiers"] == {"email": "ana@x.example", "phone": "(415) 555-0199"}
    assert theirs["identifiers"]["crm_id"] == "C-9" and theirs["consent"] == {
        "email_marketing": True
    }


# --- webhook ------------------------------------------------------------------------


def test_a_signature_verifies_and_a_changed_body_or_an_old_one_does_not() -> None:
    body = b'{"events":[]}'
    header = sign(b"s3cret", body, 1_000)
    assert verify(b"s3cret", body, header, now=1_010)
    assert not verify(b"s3cret", body + b" ", header, now=1_010)
    assert not verify(b"other", body, header, now=1_010)
    assert not verify(b"s3cret", body, header, now=2_000)  # replayed later
    assert not verify(b"s3cret", body, "garbage", now=1_000)


def test_webhook_events_follow_a_profile_through_its_life() -> None:
    d = dest(kind="webhook", url="http://x/h", purpose="crm", inbound=False)
    evs, k = events_for(d, update(version=1, segments=("vip",)), None, 0)
    assert [e["type"] for e in evs] == ["profile.updated", "segment.entered"]
    assert evs[0]["data"]["first_name"] == "Ana" and k == Known(1, ("vip",), True)
    assert events_for(d, update(version=1), k, 0) == ([], k)  # a replay: nothing again
    evs, k2 = events_for(d, update(version=2), k, 0)
    assert [(e["type"], e.get("segment")) for e in evs] == [
        ("profile.updated", None), ("segment.exited", "vip")
    ]  # fmt: skip
    evs, k3 = events_for(d, update(version=3, consent={"crm": False}), k2, 0)
    assert [(e["type"], e["reason"]) for e in evs] == [("profile.removed", "consent")]
    assert events_for(d, update(version=4, consent={"crm": False}), k3, 0)[0] == []
    merged, gone = events_for(d, ProfileRemoved("p_1", "merged", "p_2"), k, 0)
    assert merged[0]["type"] == "profile.merged" and merged[0]["merged_into"] == "p_2"
    assert gone is None
    assert events_for(d, ProfileRemoved("p_1", "merged", "p_2"), None, 0) == ([], None)
    # a tombstone written before they said where the profile went: removed, not merged
    untold = events_for(d, ProfileRemoved("p_1", "merged", None), k, 0)[0][0]
    assert (untold["type"], untold["reason"]) == ("profile.removed", "merged")
    assert events_for(d, ProfileRemoved("p_1", "erased"), None, 0)[0][0]["type"] == "profile.erased"
    ids = [e["id"] for e in events_for(d, update(version=5), None, 0)[0]]
    assert ids == [e["id"] for e in events_for(d, update(version=5), None, 99)[0]]


def test_backoff_doubles_up_to_its_ceiling_and_retry_after_wins() -> None:
    b = Backoff(first_s=0.5, max_s=3)
    assert [b.next() for _ in range(4)] == [0.5, 1.0, 2.0, 3]
    assert b.next(retry_after=1.5) == 1.5 and b.next(retry_after=99) == 3


# --- the two-way law ----------------------------------------------------------------


class Pipeline:
    """A one-profile pipeline: the latest event's first name wins; every event makes
    a profile-updates record, delivered later, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[int, str]] = []
        self.queue: list[ProfileUpdate] = []
        self.version = 0

    def take(self, at_ms: int, first: str) -> None:
        self.events.append((at_ms, first))
        self.version += 1
        t, value = max(self.events)
        self.queue.append(update(version=self.version, first=value, last_seen_ms=t))

    @property
    def value(self) -> str:
        return max(self.events)[1]


Step = tuple[str, int]


@example(steps=[("web", 0), ("app", 0), ("poll", 0), ("deliver", 0), ("deliver", 0)])
# The clerk's second edit is undone before it was read: the update it kept the cell
# from must still land.
@example(steps=[("app", 3), ("poll", 2), ("web", 3), ("app", 1), ("deliver", 2), ("app", 3)])
@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.tuples(st.sampled_from(["web", "app", "poll", "deliver"]), st.integers(0, 3)),
                max_size=30))  # fmt: skip
def test_table_and_profile_agree_after_any_interleaving_and_writes_are_bounded(
    tmp_path_factory: pytest.TempPathFactory, steps: list[Step]
) -> None:
    now = [1_000_000]

    def clock() -> float:
        now[0] += 10
        return now[0] / 1000

    path = tmp_path_factory.mktemp("law") / "crm.db"
    d = dest(fields={"email": "identifiers.email", "first_name": "traits.first_name"})
    t = TableDestination(d, lambda: sqlite3.connect(path, isolation_level=None), dialect="sqlite",
                         clock=clock)  # fmt: skip
    t.setup()
    pipe = Pipeline()
    pipe.take(now[0], "Ana")
    t.apply(pipe.queue[:])
    pipe.queue.clear()
    t.confirm(t.poll())
    start_writes, web = t.writes_logged(), 0

    def poll() -> int:
        polled = t.poll()
        for e in polled.edits:
            pipe.take(e.at_ms, e.doc["traits"]["first_name"])
        t.confirm(polled)
        return len(polled.edits)

    for kind, n in steps:
        if kind == "web":
            web += 1
            pipe.take(int(clock() * 1000), f"W{web}")
        elif kind == "app":
            t.conn.execute("UPDATE customers SET first_name = ? WHERE id = 'p_1'", (f"A{n}",))
        elif kind == "poll":
            poll()
        else:
            t.apply(pipe.queue[: n + 1])
            del pipe.queue[: n + 1]
    for _ in range(10):  # quiet: everything delivered and read back
        t.apply(pipe.queue[:])
        pipe.queue.clear()
        if not poll() and not pipe.queue:
            break
    assert t.rows()["p_1"]["first_name"] == pipe.value
    assert t.writes_logged() - start_writes <= web
    t.close()


def test_a_table_keeps_its_rows_segments_and_drops_them_with_the_row(tmp_path: Path) -> None:
    path = tmp_path / "crm.db"
    t = TableDestination(dest(), lambda: sqlite3.connect(path, isolation_level=None),
                         dialect="sqlite")  # fmt: skip
    t.setup()
    t.apply([update("p_1", 1, segments=("vip", "new")), update("p_2", 1, segments=("new",))])
    assert t.segments() == {"p_1": {"vip", "new"}, "p_2": {"new"}}
    t.apply([update("p_1", 2, segments=("vip",))])
    assert t.segments() == {"p_1": {"vip"}, "p_2": {"new"}}
    t.apply([update("p_1", 1, segments=())])  # older than what the row holds: a replay
    assert t.segments()["p_1"] == {"vip"}
    t.apply([ProfileRemoved("p_2", "erased")])
    assert t.segments() == {"p_1": {"vip"}} and set(t.rows()) == {"p_1"}
    t.close()
