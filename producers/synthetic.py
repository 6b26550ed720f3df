"""Synthetic multi-channel customer journeys, in the touchpoint JSON form.

A first, small generator for the demo and tests: people browse anonymously on
a device or two, log in (linking device, user id and email), order online,
buy in a store with a loyalty card and a phone number written in many formats,
and open emails (with case and whitespace noise). Deterministic for a seed.
Issue #3 grows it (shared devices, junk values, ground truth file).
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

FIRST = [
    "Ana",
    "Ben",
    "Chen",
    "Dara",
    "Eli",
    "Fatima",
    "Gus",
    "Hana",
    "Ivan",
    "June",
    "Kofi",
    "Lena",
    "Mateo",
    "Nia",
    "Omar",
    "Priya",
    "Quinn",
    "Rosa",
    "Sami",
    "Tomas",
]
LAST = ["Silva", "Okafor", "Novak", "Kim", "Haddad", "Larsen", "Moreau", "Ito", "Reyes", "Shah"]
DOMAINS = ["example.com", "mail.example.org", "inbox.example.net"]
COUNTRIES = ["US", "US", "US", "CA", "GB", "DE"]
AREA_CODES = ["415", "212", "312", "646", "617", "206", "303", "512"]


@dataclass(frozen=True)
class Person:
    index: int
    first: str
    last: str
    email: str
    phone_digits: str  # 10-digit US number
    user_id: str
    loyalty_id: str
    devices: tuple[str, ...]
    country: str


def _phone_formats(digits: str, rng: random.Random) -> str:
    a, b, c = digits[:3], digits[3:6], digits[6:]
    return rng.choice(
        [
            f"({a}) {b}-{c}",
            f"{a}-{b}-{c}",
            f"+1 {a} {b} {c}",
            f"{a}.{b}.{c}",
            f"1{a}{b}{c}",
            f" {a}{b}{c} ",
        ]
    )


def _noisy_email(email: str, rng: random.Random) -> str:
    variants = [email, email.upper(), f"  {email} ", email.capitalize()]
    return rng.choice(variants)


def make_people(count: int, rng: random.Random) -> list[Person]:
    people = []
    for i in range(count):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        digits = f"{rng.choice(AREA_CODES)}{rng.randint(200, 999)}{rng.randint(0, 9999):04d}"
        people.append(
            Person(
                index=i,
                first=first,
                last=last,
                email=f"{first}.{last}.{i}@{rng.choice(DOMAINS)}".lower(),
                phone_digits=digits,
                user_id=f"u-{100000 + i}",
                loyalty_id=f"L{700000 + i}",
                devices=tuple(
                    f"anon-{uuid.UUID(int=rng.getrandbits(128)).hex[:12]}"
                    for _ in range(rng.randint(1, 2))
                ),
                country=rng.choice(COUNTRIES),
            )
        )
    return people


def _event(
    rng: random.Random,
    when: datetime,
    etype: str,
    source: str,
    identifiers: dict[str, str],
    traits: dict[str, Any] | None = None,
    properties: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "event_id": str(uuid.UUID(int=rng.getrandbits(128))),
        "type": etype,
        "source": source,
        "occurred_at": when.isoformat().replace("+00:00", "Z"),
        "identifiers": identifiers,
        "traits": traits or {},
        "properties": properties or {},
    }


def journey(person: Person, rng: random.Random, start: datetime) -> list[dict[str, Any]]:
    """One person's touchpoints across web, POS and email, in time order."""
    t = start + timedelta(minutes=rng.randint(0, 60 * 24 * 20))
    events = []

    def later() -> datetime:
        nonlocal t
        t += timedelta(minutes=rng.randint(1, 600))
        return t

    device = rng.choice(person.devices)
    for _ in range(rng.randint(1, 3)):
        events.append(
            _event(
                rng,
                later(),
                "page_viewed",
                "web",
                {"anonymous_id": device},
                properties={"path": rng.choice(["/", "/shoes", "/sale", "/cart"])},
            )
        )
    events.append(
        _event(
            rng,
            later(),
            "signed_in",
            "web",
            {
                "anonymous_id": device,
                "user_id": person.user_id,
                "email": _noisy_email(person.email, rng),
            },
            traits={
                "first_name": person.first,
                "last_name": person.last,
                "country": person.country,
            },
        )
    )
    for _ in range(rng.randint(0, 2)):
        total = round(rng.uniform(10, 300), 2)
        events.append(
            _event(
                rng,
                later(),
                "order_completed",
                "web",
                {"user_id": person.user_id, "email": _noisy_email(person.email, rng)},
                properties={"total": total, "currency": "USD", "items": rng.randint(1, 4)},
            )
        )
    if rng.random() < 0.6:
        events.append(
            _event(
                rng,
                later(),
                "pos_purchase",
                "pos",
                {
                    "loyalty_id": person.loyalty_id,
                    "phone": _phone_formats(person.phone_digits, rng),
                },
                traits={"first_name": person.first},
                properties={
                    "total": round(rng.uniform(5, 150), 2),
                    "currency": "USD",
                    "store_id": f"S{rng.randint(1, 40):03d}",
                },
            )
        )
    if rng.random() < 0.7:
        events.append(
            _event(
                rng,
                later(),
                "email_opened",
                "email",
                {"email": _noisy_email(person.email, rng)},
                properties={"campaign": rng.choice(["fall", "welcome", "vip"])},
            )
        )
    return events


def generate(people: int = 100, seed: int = 7, shuffle: bool = True) -> list[dict[str, Any]]:
    """Touchpoints for ``people`` people; shuffled arrival order by default."""
    rng = random.Random(seed)
    start = datetime(2026, 11, 1, tzinfo=UTC)
    events = [e for p in make_people(people, rng) for e in journey(p, rng, start)]
    if shuffle:
        rng.shuffle(events)
    return events
