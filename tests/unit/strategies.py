"""Hypothesis strategies for touchpoints (shared by the unit tests)."""

from hypothesis import strategies as st

from profiles.touchpoint import Touchpoint

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False),
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
)
