"""Looking a profile up by an identifier as a person or a service writes it.

``unifier profiles get`` and the read API (``GET /v1/profiles?type=&value=``) take an
identifier type and a raw value; ``lookup_key`` checks that this deployment accepts
the type and normalizes the value as the worker does (an email's case and provider
rules, a phone number's format), so the key found is the key the worker wrote. Pure:
no Redis, no Kafka, no HTTP.
"""

from __future__ import annotations

from collections.abc import Sequence

from config.settings import Settings
from profiles.configured import identifier_priorities, identity_rules
from profiles.identifiers import InvalidIdentifier, normalize


class IdentifierRefused(ValueError):
    """An identifier that cannot be looked up; the message says why."""


class UnknownIdentifierType(IdentifierRefused):
    """A type this deployment is not configured with; names the accepted ones."""

    def __init__(self, id_type: str, accepted: Sequence[str]) -> None:
        self.id_type = id_type
        self.accepted = tuple(accepted)
        super().__init__(self.text(f"'{id_type}'"))

    def text(self, quoted_type: str) -> str:
        """The message, with the type quoted as the caller quotes it."""
        return f"unknown identifier type {quoted_type} (configured: {', '.join(self.accepted)})"


class UnusableIdentifier(IdentifierRefused):
    """A value that cannot be normalized as its type: ``"phone: not a phone number"``."""

    def __init__(self, id_type: str, reason: str) -> None:
        self.id_type = id_type
        self.reason = reason
        super().__init__(f"{id_type}: {reason}")


def lookup_key(settings: Settings, id_type: str, raw: str) -> str:
    """The normalized value to look ``id_type`` up by; UnknownIdentifierType or
    UnusableIdentifier when there is none."""
    accepted = identifier_priorities(settings)
    if id_type not in accepted:
        raise UnknownIdentifierType(id_type, sorted(accepted))
    try:
        return normalize(
            id_type, raw, settings.default_phone_region, identity_rules(settings).email
        )
    except InvalidIdentifier as exc:
        raise UnusableIdentifier(id_type, str(exc)) from None
