"""Synthetic multi-channel customer journeys with ground truth.

People browse anonymously on one to three devices, sign in (linking a device to
their user id and email), order online, buy in stores with a loyalty card and a
phone number written in many formats, open emails, write to support (sometimes
from a second email address) and are updated in the CRM. The noise a real
deployment sees is there too: upper case and stray spaces in emails, phone
formats with and without country codes, junk values typed into forms and tills
(``test@test.com``, ``0000000000``) that would fuse strangers, and household
tablets shared by two people.

``generate_journeys`` returns the events (touchpoint JSON form, shuffled arrival
order by default) and the truth: per person, the identifiers they used and which
of them their own events link together; the shared identifiers; the junk values.
Deterministic for a seed. ``unifier generate`` writes both to files.
"""

from __future__ import annotations

import random
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import phonenumbers

FIRST = [
    "Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Gus", "Hana", "Ivan", "June",
    "Kofi", "Lena", "Mateo", "Nia", "Omar", "Priya", "Quinn", "Rosa", "Sami", "Tomas",
]  # fmt: skip
LAST = ["Silva", "Okafor", "Novak", "Kim", "Haddad", "Larsen", "Moreau", "Ito", "Reyes", "Shah"]
DOMAINS = ["example.com", "mail.example.org", "inbox.example.net"]
WORK_DOMAINS = ["acme.example", "globex.example", "initech.example"]
COUNTRIES = ["US", "US", "US", "CA", "GB", "DE"]
AREA_CODES = ["415", "212", "312", "646", "617", "206", "303", "512"]
CATALOG = [
    ("SKU-TEE", "T-shirt", "apparel", Decimal("19.90")),
    ("SKU-JEAN", "Jeans", "apparel", Decimal("59.00")),
    ("SKU-RUN", "Running shoes", "shoes", Decimal("119.00")),
    ("SKU-BOOT", "Boots", "shoes", Decimal("149.50")),
    ("SKU-CAP", "Cap", "accessories", Decimal("14.00")),
    ("SKU-SOCK", "Socks (3)", "accessories", Decimal("9.99")),
    ("SKU-BAG", "Tote bag", "accessories", Decimal("24.00")),
]
PAGES = ["/", "/shoes", "/apparel", "/sale", "/cart", "/stores", "/help"]
#: Values people and cashiers type when they do not want to give theirs.
JUNK_EMAILS = ["test@test.com", "none@none.com", "noemail@example.com"]
JUNK_PHONES = ["0000000000", "000-000-0000", "1111111111"]


@dataclass
class Person:
    person_id: str
    first: str
    last: str
    country: str
    devices: list[str]
    email: str | None = None
    work_email: str | None = None
    phone_digits: str | None = None  # national digits; +1 unless uk
    uk_phone: bool = False
    user_id: str | None = None
    loyalty_id: str | None = None
    crm_id: str | None = None


@dataclass
class Truth:
    """What really happened, with identifiers in canonical form (``type:value``)."""

    persons: dict[str, list[set[str]]] = field(default_factory=dict)
    shared: set[str] = field(default_factory=set)
    junk: set[str] = field(default_factory=set)

    def to_json(self) -> dict[str, Any]:
        return {
            "persons": [
                {"person": pid, "clusters": [sorted(c) for c in clusters]}
                for pid, clusters in sorted(self.persons.items())
            ],
            "shared": sorted(self.shared),
            "junk": sorted(self.junk),
        }


@dataclass
class Journeys:
    events: list[dict[str, Any]]
    truth: Truth
    people: int
    seed: int


# --- noise ---------------------------------------------------------------------------
def e164(person: Person) -> str:
    assert person.phone_digits is not None
    return ("+44" if person.uk_phone else "+1") + person.phone_digits


def phone_as_typed(person: Person, rng: random.Random) -> str:
    d = person.phone_digits
    assert d is not None
    if person.uk_phone:  # 7xxx xxxxxx, written with or without the country code
        return rng.choice([f"+44 {d[:4]} {d[4:]}", f"+44{d}", f"+44 (0){d[:4]} {d[4:]}"])
    a, b, c = d[:3], d[3:6], d[6:]
    return rng.choice(
        [f"({a}) {b}-{c}", f"{a}-{b}-{c}", f"+1 {a} {b} {c}", f"{a}.{b}.{c}", f"1{a}{b}{c}",
         f" {a}{b}{c} ", f"+1-{a}-{b}-{c}"]
    )  # fmt: skip


def email_as_typed(email: str, rng: random.Random) -> str:
    return rng.choice([email, email, email.upper(), f"  {email} ", email.capitalize()])


# --- people --------------------------------------------------------------------------
def _valid_phone(rng: random.Random, uk: bool) -> str:
    """National digits of a number phonenumbers calls valid (UK mobile or US)."""
    while True:
        if uk:
            digits = f"7{rng.randint(400, 999)}{rng.randint(0, 999999):06d}"
            number = phonenumbers.parse(f"+44{digits}")
        else:
            digits = f"{rng.choice(AREA_CODES)}{rng.randint(200, 999)}{rng.randint(0, 9999):04d}"
            number = phonenumbers.parse(f"+1{digits}")
        if phonenumbers.is_valid_number(number):
            return digits


def _id(rng: random.Random, prefix: str, n: int = 12) -> str:
    return f"{prefix}{uuid.UUID(int=rng.getrandbits(128)).hex[:n]}"


def make_people(count: int, rng: random.Random) -> list[Person]:
    people = []
    for i in range(count):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        person = Person(
            person_id=f"p{i:06d}",
            first=first,
            last=last,
            country=rng.choice(COUNTRIES),
            devices=[_id(rng, "anon-") for _ in range(rng.choice([1, 1, 2, 2, 3]))],
        )
        if rng.random() < 0.85:
            person.email = f"{first}.{last}.{i}@{rng.choice(DOMAINS)}".lower()
        if person.email and rng.random() < 0.25:
            person.work_email = f"{first[0]}{last}{i}@{rng.choice(WORK_DOMAINS)}".lower()
        if rng.random() < 0.8:
            person.uk_phone = person.country == "GB"
            person.phone_digits = _valid_phone(rng, person.uk_phone)
        if person.email and rng.random() < 0.75:
            person.user_id = f"u-{100000 + i}"
        if rng.random() < 0.5:
            person.loyalty_id = f"L{700000 + i}"
        if (person.email or person.phone_digits) and rng.random() < 0.4:
            person.crm_id = f"C-{300000 + i}"
        people.append(person)
    # Households: every 12th pair shares a tablet both use (and sign in on).
    for a, b in zip(people[::24], people[1::24], strict=False):
        tablet = _id(rng, "tablet-")
        a.devices.append(tablet)
        b.devices.append(tablet)
    return people


# --- events --------------------------------------------------------------------------
class _Journey:
    """One person's events, emitted in the order they happened, and what each links."""

    def __init__(
        self, person: Person, rng: random.Random, start: datetime, spread_days: int = 20
    ) -> None:
        self.p, self.rng = person, rng
        self.t = start + timedelta(minutes=rng.randint(0, 60 * 24 * spread_days))
        self.events: list[dict[str, Any]] = []
        # Per event: the canonical identifiers it carries (junk values left out).
        self.links: list[list[str]] = []
        # The person's own email and phone in canonical form (``type:value``).
        self.email = f"email:{person.email}" if person.email else None
        self.phone = f"phone:{e164(person)}" if person.phone_digits else None

    def later(self) -> str:
        self.t += timedelta(minutes=self.rng.randint(1, 900), seconds=self.rng.randint(0, 59))
        return self.t.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def emit(
        self,
        etype: str,
        source: str,
        ids: dict[str, str],
        canonical: Iterable[str | None],
        **rest: Any,
    ) -> None:
        event = {
            "event_id": _id(self.rng, "", 32),
            "type": etype,
            "source": source,
            "occurred_at": self.later(),
            "identifiers": ids,
            **{k: v for k, v in rest.items() if v},
        }
        self.events.append(event)
        self.links.append([c for c in canonical if c])

    def items(self, n: int) -> tuple[list[dict[str, Any]], Decimal]:
        chosen = [self.rng.choice(CATALOG) for _ in range(n)]
        items = []
        total = Decimal(0)
        for sku, name, category, price in chosen:
            qty = self.rng.choice([1, 1, 1, 2])
            items.append(
                {"sku": sku, "name": name, "category": category, "quantity": qty,
                 "unit_price": str(price)}
            )  # fmt: skip
            total += price * qty
        return items, total

    def browse(self) -> None:
        """Anonymous page views on every device, all from one campaign (or none)."""
        p, rng = self.p, self.rng
        campaign = rng.choice(
            [
                {},
                {"campaign": {"source": "newsletter", "medium": "email"}},
                {"campaign": {"source": "ads"}},
            ]
        )
        for device in p.devices:
            for _ in range(rng.randint(1, 4)):
                self.emit(
                    "page_viewed", "web", {"anonymous_id": device}, [f"anonymous_id:{device}"],
                    context={"page_url": f"https://shop.example{rng.choice(PAGES)}",
                             "user_agent": "Mozilla/5.0", **campaign},
                )  # fmt: skip

    def sign_in(self) -> None:
        """Sign-ins on (up to three of) the devices, or a guest's newsletter signup."""
        p, rng, email = self.p, self.rng, self.email
        traits = {"first_name": p.first, "last_name": p.last, "country": p.country}
        if p.user_id and p.email:
            for device in p.devices if len(p.devices) < 3 else p.devices[:2] + p.devices[-1:]:
                self.emit(
                    "signed_in", "web",
                    {"anonymous_id": device, "user_id": p.user_id,
                     "email": email_as_typed(p.email, rng)},
                    [f"anonymous_id:{device}", f"user_id:{p.user_id}", email],
                    traits=traits,
                    consent={"email_marketing": rng.random() < 0.6},
                )  # fmt: skip
        elif p.email:  # a guest who signs up for the newsletter
            self.emit(
                "newsletter_signup", "web",
                {"anonymous_id": p.devices[0], "email": email_as_typed(p.email, rng)},
                [f"anonymous_id:{p.devices[0]}", email],
                consent={"email_marketing": True},
            )  # fmt: skip

    def junk_form(self, truth: Truth) -> None:
        """Now and then a form filled in with a junk email."""
        p, rng = self.p, self.rng
        if rng.random() < 0.03:
            junk = rng.choice(JUNK_EMAILS)
            truth.junk.add(f"email:{junk}")
            self.emit("form_submitted", "web", {"anonymous_id": p.devices[0], "email": junk},
                      [f"anonymous_id:{p.devices[0]}"])  # fmt: skip

    def orders(self) -> None:
        """Online orders, by user id when signed in, else on the first device."""
        p, rng, email = self.p, self.rng, self.email
        for _ in range(rng.randint(0, 3) if p.email else 0):
            assert p.email is not None
            items, total = self.items(rng.randint(1, 3))
            ids = (
                {"user_id": p.user_id, "email": email_as_typed(p.email, rng)}
                if p.user_id
                else {"anonymous_id": p.devices[0], "email": email_as_typed(p.email, rng)}
            )
            canon = [f"user_id:{p.user_id}" if p.user_id else f"anonymous_id:{p.devices[0]}", email]
            order_id = _id(rng, "W-", 10)
            self.emit(
                "order_completed", "web", ids, canon,
                order={"order_id": order_id, "currency": "USD", "total": str(total),
                       "items": items},
            )  # fmt: skip

    def store_visits(self, truth: Truth) -> None:
        """Purchases in stores, with a loyalty card and/or a phone number (or a junk one)."""
        p, rng, phone = self.p, self.rng, self.phone
        for _ in range(rng.randint(0, 3) if (p.loyalty_id or p.phone_digits) else 0):
            ids: dict[str, str] = {}
            canon: list[str | None] = []
            if p.loyalty_id and rng.random() < 0.9:
                ids["loyalty_id"], canon = p.loyalty_id, [f"loyalty_id:{p.loyalty_id}"]
            if p.phone_digits and (not ids or rng.random() < 0.6):
                ids["phone"] = phone_as_typed(p, rng)
                canon.append(phone)
            elif ids and rng.random() < 0.15:  # the cashier's placeholder number
                junk = rng.choice(JUNK_PHONES)
                ids["phone"] = junk
                truth.junk.add(f"phone:{junk}")
            if not ids:
                continue
            items, total = self.items(rng.randint(1, 4))
            store = f"S{rng.randint(1, 40):03d}"
            self.emit(
                "pos_transaction", "pos", ids, canon,
                context={"store_id": store, "terminal_id": f"T{rng.randint(1, 4)}"},
                pos={"transaction_id": _id(rng, "R-", 10), "store_id": store, "currency": "USD",
                     "total": str(total), "items": items,
                     "payment_method": rng.choice(["card", "cash", "card"])},
            )  # fmt: skip

    def email_engagement(self) -> None:
        """Marketing emails opened or clicked."""
        p, rng = self.p, self.rng
        for _ in range(rng.randint(0, 3) if p.email else 0):
            assert p.email is not None
            self.emit(
                rng.choice(["email_opened", "email_clicked"]), "email",
                {"email": email_as_typed(p.email, rng)}, [self.email],
                properties={"campaign": rng.choice(["fall", "welcome", "vip"])},
            )  # fmt: skip

    def support_ticket(self) -> None:
        """Sometimes a support ticket, from the work email when there is one."""
        p, rng, phone = self.p, self.rng, self.phone
        if (p.email or p.phone_digits) and rng.random() < 0.2:
            ids: dict[str, str] = {}
            canon: list[str | None] = []
            address = p.work_email or p.email
            if address:
                ids["email"], canon = email_as_typed(address, rng), [f"email:{address}"]
            if p.phone_digits and (p.work_email or rng.random() < 0.5 or not ids):
                ids["phone"] = phone_as_typed(p, rng)
                canon.append(phone)
            self.emit(
                "support_ticket_opened", "support", ids, canon,
                traits={"first_name": p.first, "last_name": p.last},
                properties={"topic": rng.choice(["returns", "delivery", "sizing"])},
            )  # fmt: skip

    def crm_update(self) -> None:
        """The CRM record of a person who has one, with their email and phone."""
        p, rng = self.p, self.rng
        if p.crm_id:
            ids = {"crm_id": p.crm_id}
            canon: list[str | None] = [f"crm_id:{p.crm_id}"]
            if p.email:
                ids["email"] = email_as_typed(p.email, rng)
                canon.append(self.email)
            if p.phone_digits:
                ids["phone"] = phone_as_typed(p, rng)
                canon.append(self.phone)
            self.emit(
                "crm_contact_updated", "crm", ids, canon,
                traits={"first_name": p.first, "last_name": p.last, "job_title": rng.choice(
                    ["Engineer", "Nurse", "Teacher", "Designer"]),
                    "address": {"country": p.country}},
                consent={"sms_marketing": rng.random() < 0.3},
            )  # fmt: skip


def journey(
    person: Person, rng: random.Random, start: datetime, truth: Truth, spread_days: int = 20
) -> list[dict[str, Any]]:
    """One person's events across the channels; their linkable identifiers go to ``truth``.
    The first starts within ``spread_days`` of ``start``."""
    j = _Journey(person, rng, start, spread_days)
    j.browse()
    j.sign_in()
    j.junk_form(truth)
    j.orders()
    j.store_visits(truth)
    j.email_engagement()
    j.support_ticket()
    j.crm_update()
    truth.persons[person.person_id] = _components(j.links)
    return j.events


def _components(links: list[list[str]]) -> list[set[str]]:
    """Identifiers one person's events link together (union-find over their events)."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for ids in links:
        for other in ids[1:]:
            parent[find(other)] = find(ids[0])
        if ids:
            find(ids[0])
    groups: dict[str, set[str]] = {}
    for x in parent:
        groups.setdefault(find(x), set()).add(x)
    return sorted(groups.values(), key=sorted)


def generate_journeys(
    people: int = 100,
    seed: int = 7,
    shuffle: bool = True,
    start: datetime | None = None,
    spread_days: int = 20,
) -> Journeys:
    """People's journeys, each starting within ``spread_days`` of ``start`` (by default
    2026-11-01: the same events on every run)."""
    rng = random.Random(seed)
    start = start or datetime(2026, 11, 1, tzinfo=UTC)
    truth = Truth()
    persons = make_people(people, rng)
    events = [e for p in persons for e in journey(p, rng, start, truth, spread_days)]
    for a, b in zip(persons[::24], persons[1::24], strict=False):
        truth.shared.update(f"anonymous_id:{d}" for d in set(a.devices) & set(b.devices))
    if shuffle:
        rng.shuffle(events)
    return Journeys(events, truth, people, seed)


def generate(people: int = 100, seed: int = 7, shuffle: bool = True) -> list[dict[str, Any]]:
    """Only the events of ``generate_journeys``."""
    return generate_journeys(people, seed, shuffle).events


@dataclass(frozen=True)
class Score:
    """Pairwise accuracy of predicted clusters against the linkable truth."""

    precision: float
    recall: float
    f1: float
    predicted_pairs: int
    true_pairs: int
    correct_pairs: int
    identifiers: int


def _pairs(n: int) -> int:
    return n * (n - 1) // 2


def score(predicted: Iterable[Iterable[str]], truth: Truth) -> Score:
    """Pairs of identifiers put together, against pairs a person's own events link.

    Identifiers are ``type:normalized value``. Shared identifiers (a household tablet)
    and junk values belong to no single person and are left out on both sides."""
    excluded = truth.shared | truth.junk
    truth_of: dict[str, int] = {}
    true_pairs = 0
    for n, cluster in enumerate(c for clusters in truth.persons.values() for c in clusters):
        linkable = cluster - excluded
        true_pairs += _pairs(len(linkable))
        for ident in linkable:
            truth_of[ident] = n
    predicted_pairs = correct = seen = 0
    for found in predicted:
        owners = [truth_of[i] for i in found if i in truth_of]
        seen += len(owners)
        predicted_pairs += _pairs(len(owners))
        correct += sum(_pairs(k) for k in Counter(owners).values())
    precision = correct / predicted_pairs if predicted_pairs else 1.0
    recall = correct / true_pairs if true_pairs else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return Score(precision, recall, f1, predicted_pairs, true_pairs, correct, seen)
