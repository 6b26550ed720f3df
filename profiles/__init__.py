"""The domain core: pure Python — no Kafka, Redis or HTTP import anywhere under it.

Identifier types and normalization (``identifiers``), identity rules (``rules``), the
touchpoint model (``touchpoint``), event facts (``facts``), the identity-graph
protocol (``graph``: state, messages, handlers), survivorship (``traits``) and
computed traits (``computed``), the public view (``projection``), settings turned
into rules (``configured``), and the ports the outside implements (``ports``).
"""
