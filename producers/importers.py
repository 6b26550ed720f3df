"""``unifier import pos|crm FILE.csv``: CSV exports of a POS or a CRM -> touchpoints.

Columns are found by a mapping from our field names to the file's headers. The
defaults (``DEFAULT_MAPPINGS``) use our names as headers; a TOML file passed with
``--mapping`` overrides any of them and sets options::

    [columns]                 # our field = "their header"
    transaction_id = "Receipt No"
    occurred_at = "Date"
    total = "Grand Total"

    [options]
    timezone = "Europe/Paris" # for timestamps without an offset (default UTC)
    currency = "EUR"          # when the file has no currency column
    delimiter = ";"
    datetime_format = "%d/%m/%Y %H:%M"   # default: ISO 8601

POS files have one row per line item (the transaction columns repeated) or one
row per transaction (no ``sku`` column). Consecutive rows with the same store and
transaction id form one ``pos_transaction`` event, whose id ``pos:<store>:<txn>``
makes a re-import count each sale once. If any row of a transaction is invalid
the whole transaction is rejected, each of its rows with the reason.

CRM files have one row per contact; each becomes a ``crm_contact_updated`` event
with id ``crm:<contact_id>:<updated_at>`` carrying the contact's identifiers,
traits and consent (``email_opt_in``/``sms_opt_in``).
"""

from __future__ import annotations

import csv
import os
import sys
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from config.settings import Settings
from producers.loader import Loader, LoadResult
from profiles.configured import identifier_priorities, identity_rules
from profiles.routing import validate_event
from profiles.rules import IdentityRules
from profiles.touchpoint import InvalidTouchpoint, Touchpoint

POS_FIELDS = {
    "transaction_id": "receipt / transaction number (required)",
    "occurred_at": "time of the sale (required)",
    "store_id": "store (required)",
    "terminal_id": "till / terminal",
    "cashier_id": "cashier",
    "payment_method": "cash, card, gift_card...",
    "card_last4": "last four digits of the card",
    "currency": "ISO 4217 code (or options.currency)",
    "total": "transaction total (required)",
    "loyalty_id": "loyalty card number (identifier)",
    "phone": "phone number (identifier)",
    "email": "email (identifier)",
    "sku": "line item: product code (absent: one row per transaction)",
    "product_name": "line item: product name",
    "category": "line item: category",
    "quantity": "line item: quantity (default 1)",
    "unit_price": "line item: unit price",
}
CRM_FIELDS = {
    "contact_id": "the CRM's contact id (identifier crm_id, required)",
    "updated_at": "when the contact last changed (required)",
    "email": "email (identifier)",
    "phone": "phone (identifier)",
    "user_id": "the site's user id, if the CRM stores it (identifier)",
    "loyalty_id": "loyalty card number (identifier)",
    "first_name": "trait",
    "last_name": "trait",
    "company": "trait",
    "job_title": "trait",
    "street": "trait address.street",
    "city": "trait address.city",
    "postal_code": "trait address.postal_code",
    "country": "trait address.country",
    "birth_date": "trait",
    "email_opt_in": "consent email_marketing (yes/no, true/false, 1/0)",
    "sms_opt_in": "consent sms_marketing",
}
DEFAULT_MAPPINGS = {
    "pos": {name: name for name in POS_FIELDS},
    "crm": {name: name for name in CRM_FIELDS},
}
REQUIRED = {
    "pos": ("transaction_id", "occurred_at", "store_id", "total"),
    "crm": ("contact_id", "updated_at"),
}
_TRUE = {"yes", "y", "true", "t", "1", "on"}
_FALSE = {"no", "n", "false", "f", "0", "off"}
_IDENTIFIERS = ("email", "phone", "loyalty_id", "user_id")
CONSENT_COLUMNS = (("email_marketing", "email_opt_in"), ("sms_marketing", "sms_opt_in"))


class MappingError(ValueError):
    """The mapping file or the CSV header does not fit; ``str(exc)`` says how."""


@dataclass
class ColumnMapping:
    kind: str
    columns: dict[str, str]
    timezone: ZoneInfo
    currency: str | None = None
    delimiter: str = ","
    datetime_format: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def load_mapping(kind: str, path: Path | None) -> ColumnMapping:
    columns = dict(DEFAULT_MAPPINGS[kind])
    options: dict[str, Any] = {}
    if path is not None:
        try:
            doc = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise MappingError(f"{path}: {exc}") from None
        unknown = sorted(set(doc) - {"columns", "options"})
        if unknown:
            raise MappingError(f"{path}: unknown section(s) {', '.join(unknown)}")
        fields = POS_FIELDS if kind == "pos" else CRM_FIELDS
        for name, header in doc.get("columns", {}).items():
            if name not in fields:
                raise MappingError(
                    f"{path}: [columns] {name} is not a {kind} field (fields: {', '.join(fields)})"
                )
            columns[name] = str(header)
        options = doc.get("options", {})
        bad = sorted(set(options) - {"timezone", "currency", "delimiter", "datetime_format"})
        if bad:
            raise MappingError(f"{path}: unknown option(s) {', '.join(bad)}")
    try:
        zone = ZoneInfo(options.get("timezone", "UTC"))
    except (ZoneInfoNotFoundError, ValueError):
        raise MappingError(f"options.timezone: unknown time zone {options['timezone']!r}") from None
    return ColumnMapping(
        kind=kind,
        columns=columns,
        timezone=zone,
        currency=options.get("currency"),
        delimiter=options.get("delimiter", ","),
        datetime_format=options.get("datetime_format"),
    )


def mapping_toml(kind: str) -> str:
    """The default mapping as a commented TOML file to copy and edit."""
    fields = POS_FIELDS if kind == "pos" else CRM_FIELDS
    lines = [
        f"# Column mapping for `unifier import {kind}`: our field = your CSV header",
        "[columns]",
    ]
    lines += [f'{name} = "{name}"  # {doc}' for name, doc in fields.items()]
    lines += [
        "",
        "[options]",
        '# timezone = "UTC"           # for timestamps without an offset',
        '# currency = "USD"           # when the file has no currency column',
        '# delimiter = ","',
        '# datetime_format = "%Y-%m-%d %H:%M:%S"  # default: ISO 8601',
    ]
    return "\n".join(lines) + "\n"


# --- reading rows ---------------------------------------------------------------------
def _decoded_lines(fh: IO[bytes], bad: set[int]) -> Iterator[str]:
    for number, line in enumerate(fh, start=1):
        data = line.removeprefix(b"\xef\xbb\xbf") if number == 1 else line
        try:
            yield data.decode("utf-8")
        except UnicodeDecodeError:
            bad.add(number)
            yield data.decode("utf-8", "replace")


@dataclass
class Row:
    line: int
    first_line: int
    values: dict[str, str]
    raw: dict[str, str]
    problem: str | None = None


def rows(fh: IO[bytes], mapping: ColumnMapping) -> Iterator[Row]:
    """CSV records as our field names -> stripped values; a row knows its line number."""
    bad: set[int] = set()
    reader = csv.reader(_decoded_lines(fh, bad), delimiter=mapping.delimiter, strict=False)
    try:
        header = next(reader)
    except StopIteration:
        raise MappingError("the file is empty (no header row)") from None
    header = [h.strip() for h in header]
    index = {h: i for i, h in enumerate(header)}
    missing = [
        f"{name} (column {mapping.columns[name]!r})"
        for name in REQUIRED[mapping.kind]
        if mapping.columns[name] not in index
    ]
    if missing:
        raise MappingError(
            f"required column(s) missing from the header: {', '.join(missing)}; "
            f"the header has: {', '.join(header)}. Map them with --mapping."
        )
    wanted = {name: index[col] for name, col in mapping.columns.items() if col in index}
    previous_end = 1
    for record in reader:
        first, last = previous_end + 1, reader.line_num
        previous_end = last
        if not record or all(not v.strip() for v in record):
            continue
        raw = dict(zip(header, record, strict=False))
        problem = None
        if any(n in bad for n in range(first, last + 1)):
            problem = "invalid UTF-8"
        elif len(record) != len(header):
            problem = f"{len(record)} fields where the header has {len(header)}"
        values = {name: record[i].strip() for name, i in wanted.items() if i < len(record)}
        yield Row(last, first, {k: v for k, v in values.items() if v}, raw, problem)


def _when(text: str | None, mapping: ColumnMapping, name: str) -> str:
    if not text:
        raise InvalidTouchpoint(f"{name}: required")
    try:
        if mapping.datetime_format:
            when = datetime.strptime(text, mapping.datetime_format)
        else:
            when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        fmt = mapping.datetime_format or "ISO 8601"
        raise InvalidTouchpoint(f"{name}: {text!r} is not a date and time ({fmt})") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=mapping.timezone)
    return when.isoformat()


def _flag(text: str | None, name: str) -> bool | None:
    if text is None:
        return None
    low = text.lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise InvalidTouchpoint(f"{name}: {text!r} is not yes/no")


def _quantity(text: str | None) -> int:
    if text is None:
        return 1
    try:
        return int(text)
    except ValueError:
        raise InvalidTouchpoint(f"quantity: {text!r} is not a whole number") from None


# --- rows -> touchpoints ------------------------------------------------------------------
def pos_touchpoint(group: list[Row], mapping: ColumnMapping) -> dict[str, Any]:
    head = group[0].values
    for row in group[1:]:
        for name in ("total", "occurred_at", "currency"):
            if row.values.get(name) != head.get(name):
                raise InvalidTouchpoint(
                    f"rows of transaction {head.get('transaction_id')} disagree on {name}"
                )
    items = [
        {
            "sku": row.values["sku"],
            "name": row.values.get("product_name"),
            "category": row.values.get("category"),
            "quantity": _quantity(row.values.get("quantity")),
            "unit_price": row.values.get("unit_price"),
        }
        for row in group
        if "sku" in row.values
    ]
    for item in items:
        if item["unit_price"] is None:
            raise InvalidTouchpoint(f"unit_price: required for line item {item['sku']}")
    store, txn = head["store_id"], head["transaction_id"]
    pos = {
        "transaction_id": txn,
        "store_id": store,
        "terminal_id": head.get("terminal_id"),
        "cashier_id": head.get("cashier_id"),
        "payment_method": head.get("payment_method"),
        "card_last4": head.get("card_last4"),
        "currency": head.get("currency") or mapping.currency,
        "total": head.get("total"),
        "items": [{k: v for k, v in item.items() if v is not None} for item in items],
    }
    if not pos["currency"]:
        raise InvalidTouchpoint("currency: required (a column, or options.currency)")
    context = {"store_id": store, "terminal_id": head.get("terminal_id")}
    return {
        "event_id": f"pos:{store}:{txn}",
        "type": "pos_transaction",
        "source": "pos",
        "occurred_at": _when(head.get("occurred_at"), mapping, "occurred_at"),
        "identifiers": {k: head[k] for k in _IDENTIFIERS if k in head},
        "pos": {k: v for k, v in pos.items() if v is not None},
        "context": {k: v for k, v in context.items() if v is not None},
    }


def crm_touchpoint(row: Row, mapping: ColumnMapping) -> dict[str, Any]:
    v = row.values
    when = _when(v.get("updated_at"), mapping, "updated_at")
    identifiers = {k: v[k] for k in _IDENTIFIERS if k in v}
    identifiers["crm_id"] = v["contact_id"]
    traits: dict[str, Any] = {
        k: v[k] for k in ("first_name", "last_name", "company", "job_title", "birth_date") if k in v
    }
    address = {k: v[k] for k in ("street", "city", "postal_code", "country") if k in v}
    if address:
        traits["address"] = address
    consent = {
        purpose: flag
        for purpose, column in (
            ("email_marketing", "email_opt_in"),
            ("sms_marketing", "sms_opt_in"),
        )
        if (flag := _flag(v.get(column), column)) is not None
    }
    return {
        "event_id": f"crm:{v['contact_id']}:{when}",
        "type": "crm_contact_updated",
        "source": "crm",
        "occurred_at": when,
        "identifiers": identifiers,
        "traits": traits,
        "consent": consent,
    }


def _validate(doc: Mapping[str, Any], settings: Settings, rules: IdentityRules) -> Touchpoint:
    return validate_event(dict(doc), rules, settings.default_phone_region)


def _pos_groups(source: Iterator[Row]) -> Iterator[list[Row]]:
    group: list[Row] = []
    for row in source:
        key = (row.values.get("store_id"), row.values.get("transaction_id"))
        if group and key != (
            group[0].values.get("store_id"),
            group[0].values.get("transaction_id"),
        ):
            yield group
            group = []
        group.append(row)
        if "sku" not in row.values or key[1] is None:
            yield group
            group = []
    if group:
        yield group


def import_file(
    kind: str,
    path: Path,
    settings: Settings,
    mapping_path: Path | None = None,
    rejects_path: Path | None = None,
    progress: bool | None = None,
    err: IO[str] = sys.stderr,
) -> LoadResult:
    """Import a POS or CRM CSV file; raises ``MappingError`` before sending anything
    when the mapping or the header does not fit."""
    if "crm_id" not in identifier_priorities(settings) and kind == "crm":
        raise MappingError(
            "identifier type crm_id is not configured (UNIFIER_IDENTIFIER_PRIORITIES)"
        )
    mapping = load_mapping(kind, mapping_path)
    rules = identity_rules(settings)
    with open(path, "rb") as fh:
        source = rows(fh, mapping)  # reads the header: a MappingError stops here
        first = next(source, None)
        with Loader(path, settings, rejects_path, progress, err, f"import {kind}") as loader:
            result = loader.result

            def all_rows() -> Iterator[Row]:
                if first is not None:
                    yield first
                for row in source:
                    loader.progress_to(os.lseek(fh.fileno(), 0, os.SEEK_CUR))
                    yield row

            groups = _pos_groups(all_rows()) if kind == "pos" else ([r] for r in all_rows())
            for group in groups:
                result.lines += len(group)
                problem = next((r.problem for r in group if r.problem), None)
                try:
                    if problem:
                        raise InvalidTouchpoint(problem)
                    doc = (
                        pos_touchpoint(group, mapping)
                        if kind == "pos"
                        else crm_touchpoint(group[0], mapping)
                    )
                    tp = _validate(doc, settings, rules)
                except InvalidTouchpoint as exc:
                    for row in group:
                        loader.reject(row.line, str(exc), row.raw)
                    continue
                except KeyError as exc:
                    for row in group:
                        loader.reject(row.line, f"{exc.args[0]}: required", row.raw)
                    continue
                loader.send(tp)
    return result
