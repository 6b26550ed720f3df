"""The synthetic journeys: valid, noisy, deterministic, and true to their truth file."""

from __future__ import annotations

from collections import Counter

from producers.synthetic import generate_journeys
from profiles.identifiers import DEFAULT_IDENTIFIER_PRIORITIES, normalize_all
from profiles.touchpoint import parse_json

JOURNEYS = generate_journeys(400, seed=11)


def test_same_seed_same_data() -> None:
    again = generate_journeys(400, seed=11)
    assert again.events == JOURNEYS.events
    assert again.truth.to_json() == JOURNEYS.truth.to_json()
    assert generate_journeys(400, seed=12).events != JOURNEYS.events


def test_every_event_is_valid_and_ids_are_unique() -> None:
    tps = [parse_json(e, DEFAULT_IDENTIFIER_PRIORITIES) for e in JOURNEYS.events]
    assert len({tp.event_id for tp in tps}) == len(tps)
    kinds = Counter(tp.type for tp in tps)
    for kind in ("page_viewed", "signed_in", "order_completed", "pos_transaction",
                 "email_opened", "support_ticket_opened", "crm_contact_updated"):  # fmt: skip
        assert kinds[kind] > 0, kind
    assert all(tp.order for tp in tps if tp.type == "order_completed")
    assert all(tp.pos for tp in tps if tp.type == "pos_transaction")


def test_the_noise_a_real_deployment_sees_is_there() -> None:
    emails = [e["identifiers"]["email"] for e in JOURNEYS.events if "email" in e["identifiers"]]
    phones = [e["identifiers"]["phone"] for e in JOURNEYS.events if "phone" in e["identifiers"]]
    assert any(e != e.strip() for e in emails)
    assert any(e != e.lower() for e in emails)
    assert len({p[:2] for p in phones}) >= 4  # "(4", "41", "+1", "+4", " 4"...
    assert JOURNEYS.truth.junk & {"email:test@test.com", "phone:0000000000"}
    assert JOURNEYS.truth.shared


def test_truth_matches_the_events() -> None:
    """Normalizing each event's identifiers gives identifiers of the truth: one cluster
    per event, except junk values, which are in no cluster."""
    owner: dict[str, set[int]] = {}
    for person in JOURNEYS.truth.to_json()["persons"]:
        for n, cluster in enumerate(person["clusters"]):
            for ident in cluster:
                owner.setdefault(ident, set()).add(hash((person["person"], n)))
    shared = JOURNEYS.truth.shared
    for ident, clusters in owner.items():
        assert len(clusters) == 1 or ident in shared, ident
    for event in JOURNEYS.events:
        valid, _invalid = normalize_all(event["identifiers"], "US")
        canonical = {f"{t}:{v}" for t, v in valid.items()}
        junk = {f"{t}:{v}" for t, v in event["identifiers"].items()} & JOURNEYS.truth.junk
        for ident in canonical - {j.strip().lower() for j in junk}:
            assert ident in owner, (ident, event["type"])
