"""Hypothesis strategies for touchpoints (shared by the unit tests)."""

from decimal import Decimal

from hypothesis import strategies as st

from profiles.touchpoint import Touchpoint

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),  # the decoder refuses non-finite
    st.text(max_size=20),
)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**53), 2**53), st.text(max_size=10)),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
id_types = st.sampled_from(["email", "phone", "user_id", "anonymous_id", "loyalty_id"])

short = st.text(min_size=1, max_size=12)
money = st.decimals(
    min_value=Decimal("-99999999"), max_value=Decimal("99999999"), places=4, allow_nan=False
)
line_items = st.fixed_dictionaries(
    {
        "sku": short,
        "name": st.none() | short,
        "category": st.none() | short,
        "quantity": st.integers(-1000, 1000),
        "unit_price": money,
    }
)
orders = st.fixed_dictionaries(
    {
        "order_id": short,
        "currency": st.sampled_from(["USD", "EUR", "JPY"]),
        "total": money,
        "subtotal": st.none() | money,
        "tax": st.none() | money,
        "shipping": st.none() | money,
        "discount": st.none() | money,
        "coupon": st.none() | short,
        "items": st.lists(line_items, max_size=3),
    }
)
pos_transactions = st.fixed_dictionaries(
    {
        "transaction_id": short,
        "store_id": short,
        "terminal_id": st.none() | short,
        "cashier_id": st.none() | short,
        "payment_method": st.none() | st.sampled_from(["cash", "card"]),
        "card_last4": st.none() | st.from_regex(r"\A[0-9]{4}\Z"),
        "currency": st.sampled_from(["USD", "EUR"]),
        "total": money,
        "items": st.lists(line_items, max_size=3),
    }
)
contexts = st.fixed_dictionaries(
    {},
    optional={
        "ip": st.ip_addresses().map(str),
        "user_agent": short,
        "page_url": short,
        "locale": st.sampled_from(["en-US", "de-DE"]),
        "store_id": short,
        "terminal_id": short,
        "campaign": st.dictionaries(short, short, min_size=1, max_size=2),
    },
)

touchpoints = st.builds(
    Touchpoint,
    event_id=st.uuids().map(str),
    type=st.sampled_from(["page_viewed", "order_completed", "signed_in"]),
    source=st.sampled_from(["web", "pos", "email"]),
    occurred_at_ms=st.integers(0, 4_102_444_800_000),
    identifiers=st.dictionaries(id_types, st.text(min_size=1, max_size=30), min_size=1),
    traits=st.dictionaries(st.text(max_size=10), scalars, max_size=4),
    properties=st.dictionaries(st.text(max_size=10), json_values, max_size=4),
    received_at_ms=st.none() | st.integers(0, 4_102_444_800_000),
    context=contexts,
    consent=st.dictionaries(st.sampled_from(["email_marketing", "analytics"]), st.booleans()),
    order=st.none() | orders,
    pos=st.none() | pos_transactions,
)
