"""CSV rows -> touchpoints for the POS and CRM importers (no broker needed)."""

from __future__ import annotations

import io
from decimal import Decimal
from pathlib import Path

import pytest

from producers.importers import (
    MappingError,
    _pos_groups,
    crm_touchpoint,
    load_mapping,
    mapping_toml,
    pos_touchpoint,
    rows,
)
from profiles.identifiers import DEFAULT_IDENTIFIER_PRIORITIES
from profiles.touchpoint import InvalidTouchpoint, parse_json

POS_CSV = (
    "Receipt;Date;Shop;Till;Card;Total;Phone;SKU;Qty;Price\n"
    "R1;22/11/2026 10:05;S1;T2;L-77;30,00;06 12 34 56 78;A;1;10\n"
    'R1;22/11/2026 10:05;S1;T2;L-77;30,00;06 12 34 56 78;"B";2;10\n'
    "R2;22/11/2026 11:00;S1;T1;;5;;C;1;5\n"
)
MAPPING = """
[columns]
transaction_id = "Receipt"
occurred_at = "Date"
store_id = "Shop"
terminal_id = "Till"
loyalty_id = "Card"
total = "Total"
phone = "Phone"
sku = "SKU"
quantity = "Qty"
unit_price = "Price"

[options]
timezone = "Europe/Paris"
currency = "EUR"
delimiter = ";"
datetime_format = "%d/%m/%Y %H:%M"
"""


def mapping_file(tmp_path: Path, text: str = MAPPING) -> Path:
    path = tmp_path / "mapping.toml"
    path.write_text(text)
    return path


def test_pos_rows_group_into_one_event_per_transaction(tmp_path: Path) -> None:
    mapping = load_mapping("pos", mapping_file(tmp_path))
    groups = list(_pos_groups(rows(io.BytesIO(POS_CSV.encode()), mapping)))
    assert [[r.line for r in g] for g in groups] == [[2, 3], [4]]
    with pytest.raises(InvalidTouchpoint, match=r"pos\.total: Input should be a valid decimal"):
        # A decimal comma is not a number here.
        parse_json(pos_touchpoint(groups[0], mapping), DEFAULT_IDENTIFIER_PRIORITIES)
    fixed = POS_CSV.replace("30,00", "30.00")
    groups = list(_pos_groups(rows(io.BytesIO(fixed.encode()), mapping)))
    doc = pos_touchpoint(groups[0], mapping)
    tp = parse_json(doc, DEFAULT_IDENTIFIER_PRIORITIES)
    assert tp.event_id == "pos:S1:R1"
    assert tp.identifiers == {"loyalty_id": "L-77", "phone": "06 12 34 56 78"}
    assert tp.occurred_at_ms == 1795338300000  # 10:05 in Paris is 09:05 UTC
    assert tp.pos is not None
    assert tp.pos["currency"] == "EUR"
    assert tp.pos["total"] == Decimal("30")
    assert [(i["sku"], i["quantity"]) for i in tp.pos["items"]] == [("A", 1), ("B", 2)]
    assert tp.context == {"store_id": "S1", "terminal_id": "T2"}


def test_rows_of_one_transaction_must_agree(tmp_path: Path) -> None:
    mapping = load_mapping("pos", mapping_file(tmp_path))
    text = POS_CSV.replace("30,00", "30").replace(
        "R1;22/11/2026 10:05;S1;T2;L-77;30;06", "R1;22/11/2026 10:05;S1;T2;L-77;31;06", 1
    )
    group = next(_pos_groups(rows(io.BytesIO(text.encode()), mapping)))
    with pytest.raises(InvalidTouchpoint, match="disagree on total"):
        pos_touchpoint(group, mapping)


def test_a_missing_required_column_is_named_with_the_header() -> None:
    with pytest.raises(MappingError, match=r"transaction_id \(column 'transaction_id'\).*Receipt"):
        list(rows(io.BytesIO(POS_CSV.encode()), load_mapping("pos", None)))


def test_bad_mapping_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(MappingError, match="not a pos field"):
        load_mapping("pos", mapping_file(tmp_path, '[columns]\nreceipt = "R"\n'))
    with pytest.raises(MappingError, match="unknown time zone"):
        load_mapping("pos", mapping_file(tmp_path, '[options]\ntimezone = "Mars/Base"\n'))
    with pytest.raises(MappingError, match="unknown option"):
        load_mapping("crm", mapping_file(tmp_path, '[options]\ncolour = "red"\n'))


def test_the_printed_default_mapping_loads(tmp_path: Path) -> None:
    for kind in ("pos", "crm"):
        assert load_mapping(kind, mapping_file(tmp_path, mapping_toml(kind))).columns == (
            load_mapping(kind, None).columns
        )


def test_crm_rows_become_contact_updates() -> None:
    text = (
        "contact_id,updated_at,email,phone,first_name,city,country,email_opt_in,sms_opt_in\n"
        "C-1,2026-11-01T09:00:00Z, Ana@Example.com ,+33 6 12 34 56 78,Ana,Lyon,FR,yes,no\n"
        "C-2,2026-11-01T09:00:00Z,b@example.com,,Bo,,,maybe,\n"
        "C-3,2026-11-01,\xff\n"
    )
    mapping = load_mapping("crm", None)
    parsed = list(rows(io.BytesIO(text.encode("latin-1")), mapping))
    doc = crm_touchpoint(parsed[0], mapping)
    tp = parse_json(doc, DEFAULT_IDENTIFIER_PRIORITIES)
    assert tp.event_id == "crm:C-1:2026-11-01T09:00:00+00:00"
    assert tp.identifiers == {
        "email": "Ana@Example.com",
        "phone": "+33 6 12 34 56 78",
        "crm_id": "C-1",
    }
    assert tp.traits == {"first_name": "Ana", "address.city": "Lyon", "address.country": "FR"}
    assert tp.consent == {"email_marketing": True, "sms_marketing": False}
    with pytest.raises(InvalidTouchpoint, match="email_opt_in: 'maybe' is not yes/no"):
        crm_touchpoint(parsed[1], mapping)
    assert parsed[2].problem == "invalid UTF-8"
    assert parsed[2].line == 4
