"""``destinations.toml``: where profiles go, which ones, which fields, and who owns
each field.

One table per destination under ``[destinations.NAME]``::

    [destinations.crm]
    kind = "sqlite"              # sqlite | postgres | webhook
    url = "state/crm.db"         # a file (sqlite), a DSN (postgres) or an https URL
    table = "customers"          # databases: the table we keep (created if missing)
    profiles = "all"             # or the name of a segment (segments.toml)
    purpose = "crm"              # the consent purpose it serves; omit for none
    mode = "mirror"              # upsert (never deletes) | mirror (deletes rows it made)
    row_identifier = "crm_id"    # the identifier type that names the app's own rows
    [destinations.crm.fields]    # column = "profile path", or a table with an owner
    email = "identifiers.email"
    phone = { from = "identifiers.phone", owner = "crm" }
    first_name = "traits.first_name"
    email_opt_in = "consent.email_marketing"

A field's ``from`` is ``identifiers.TYPE``, ``traits.NAME``, ``computed.NAME`` (read
only), ``consent.PURPOSE`` (true/false) or ``profile_id``. Its ``owner`` is
``"unifier"`` (the unified profile decides; the default) or the app (its name, its
``source`` or ``"app"``): the app's copy is the system of record, so we fill the
field only where it is empty and take the app's edits in.
"""

from __future__ import annotations

import re
import tomllib
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_FROM = re.compile(r"^(profile_id|(identifiers|traits|computed|consent)\.[A-Za-z0-9_.:-]+)$")
#: Columns of ours in a destination's table (the app may read them, never needs to).
RESERVED = frozenset(
    {"id", "unifier_profile_id", "unifier_created", "unifier_version", "unifier_removed_at",
     "unifier_rev", "unifier_echo"}
)  # fmt: skip


class DestinationError(ValueError):
    """A destinations file that cannot be used, with the reason."""


class FieldSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    source: str = Field(alias="from")
    owner: str = "unifier"

    @field_validator("source")
    @classmethod
    def _known_path(cls, v: str) -> str:
        if not _FROM.match(v):
            raise ValueError(
                f"{v!r}: use identifiers.TYPE, traits.NAME, computed.NAME, consent.PURPOSE "
                "or profile_id"
            )
        return v

    @cached_property
    def kind(self) -> str:
        return self.source.split(".", 1)[0]

    @cached_property
    def key(self) -> str:
        return self.source.split(".", 1)[1] if "." in self.source else ""


class Destination(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    kind: Literal["sqlite", "postgres", "webhook"]
    url: str
    group: str = "default"
    table: str = "customers"
    profiles: str = "all"
    purpose: str | None = None
    mode: Literal["upsert", "mirror"] = "upsert"
    source: str = ""  # what inbound edits say they came from; default: the name
    inbound: bool = True  # databases: take the app's edits in (two-way)
    row_identifier: str | None = None
    fields: dict[str, FieldSpec] = Field(default_factory=dict)
    poll_s: float = Field(1.0, gt=0)
    # Postgres commits out of sequence order: each poll reads again the changes of
    # the last few seconds (re-reading is harmless: what was seen is skipped).
    lookback_s: float = Field(10.0, ge=0)
    # An app edit waits this long for the pipeline to reflect it before an update
    # that does not show it may overwrite it (see sinks.destinations.table).
    settle_s: float = Field(60.0, gt=0)
    # webhook
    secret_env: str = "SYNC_WEBHOOK_SECRET"
    batch_events: int = Field(500, gt=0)
    timeout_s: float = Field(10.0, gt=0)
    park_after_s: float = Field(10.0, gt=0)  # a failing request's retries before parking
    dead_letter_after_s: float = Field(3600.0, gt=0)
    max_backoff_s: float = Field(60.0, gt=0)

    @field_validator("fields", mode="before")
    @classmethod
    def _short_form(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {k: {"from": s} if isinstance(s, str) else s for k, s in v.items()}
        return v

    @model_validator(mode="after")
    def _check(self) -> Destination:
        if not _NAME.match(self.name):
            raise ValueError(f"name {self.name!r}: letters, digits and _ only")
        if not self.source:
            self.source = self.name
        if self.kind == "webhook":
            if not self.url.startswith(("http://", "https://")):
                raise ValueError(f"url {self.url!r}: a webhook needs an http(s) URL")
            self.inbound = False
        else:
            if not _NAME.match(self.table):
                raise ValueError(f"table {self.table!r}: letters, digits and _ only")
            for column, spec in self.fields.items():
                if not _NAME.match(column) or column in RESERVED:
                    raise ValueError(f"column {column!r}: reserved or not a plain name")
                if spec.owner not in ("unifier", "app", self.name, self.source):
                    raise ValueError(
                        f"field {column}: owner {spec.owner!r} is neither 'unifier' nor "
                        f"this app ({self.name!r})"
                    )
            if self.inbound and not (self.row_identifier and self.identifier_columns()):
                raise ValueError(
                    "inbound edits (two-way) need row_identifier (the identifier type "
                    "naming the app's own rows, e.g. crm_id) and at least one column "
                    "mapped to an identifier, so that an edit finds its customer; or set "
                    "inbound = false"
                )
        return self

    def owned_by_app(self, column: str) -> bool:
        return self.fields[column].owner != "unifier"

    def identifier_columns(self) -> dict[str, str]:
        """Column -> identifier type."""
        return {c: s.key for c, s in self.fields.items() if s.kind == "identifiers"}

    @property
    def segment(self) -> str | None:
        return None if self.profiles == "all" else self.profiles


def load_destinations(path: Path) -> list[Destination]:
    """Every destination in ``path``; a DestinationError naming the first bad one."""
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise DestinationError(f"{path}: no such file (see README, Destinations)") from None
    except tomllib.TOMLDecodeError as exc:
        raise DestinationError(f"{path}: {exc}") from None
    tables = doc.get("destinations")
    if not isinstance(tables, dict) or not tables:
        raise DestinationError(f"{path}: no [destinations.NAME] table")
    out = []
    for name, body in tables.items():
        if not isinstance(body, dict):
            raise DestinationError(f"{path}: destinations.{name} is not a table")
        try:
            out.append(Destination.model_validate({"name": name, **body}))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise DestinationError(
                f"{path}: destinations.{name}{'.' + where if where else ''}: {first['msg']}"
            ) from None
    return out
