"""The ways in, as the README shows them: the collector over HTTP, the POS and CRM
importers, and the dead-letter round trip (show, fix, replay)."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer

from profiles.touchpoint import Touchpoint
from schemas.codec import encode_touchpoint
from tests.e2e.conftest import Cli, ports_of, stack_pids
from tests.support.http import post
from unifier.processes import free_port

pytestmark = pytest.mark.e2e

POS_CSV = """Receipt;Date;Shop;Card;Phone;Total;SKU;Qty;Price
R-100;22/11/2026 18:30;S7;L-555;(415) 555-0142;24.00;SKU-TEE;1;19.90
R-100;22/11/2026 18:30;S7;L-555;(415) 555-0142;24.00;SKU-SOCK;1;4.10
R-101;22/11/2026 18:45;S7;;;oops;SKU-CAP;1;14.00
"""
POS_MAPPING = """[columns]
transaction_id = "Receipt"
occurred_at = "Date"
store_id = "Shop"
loyalty_id = "Card"
phone = "Phone"
total = "Total"
sku = "SKU"
quantity = "Qty"
unit_price = "Price"

[options]
delimiter = ";"
datetime_format = "%d/%m/%Y %H:%M"
timezone = "America/New_York"
currency = "USD"
"""
CRM_CSV = """contact_id,updated_at,email,phone,first_name,email_opt_in
C-9,2026-11-20T08:00:00Z,ana@example.com,(415) 555-0142,Ana,yes
"""


def test_collector_importers_and_dead_letters(cli: Cli, tmp_path: Path) -> None:
    before = stack_pids(cli.cwd, ports_of(cli))
    port = free_port()
    cli.env["UNIFIER_COLLECTOR_PORT"] = str(port)
    cli.env["UNIFIER_COLLECTOR_WRITE_KEYS"] = json.dumps({"wk_e2e": "web"})
    up = cli("stack", "up")
    assert up.returncode == 0, up.stderr
    assert f"collector http://127.0.0.1:{port}" in up.stderr
    # broker, Redis, the archiver, a worker and the collector
    assert len(stack_pids(cli.cwd, ports_of(cli)) - before) == 5

    # A website: a Segment identify call over HTTP.
    identify = {
        "userId": "u-42",
        "anonymousId": "a-42",
        "traits": {"email": "Ana@Example.com", "firstName": "Ana"},
    }
    assert post(f"http://127.0.0.1:{port}/v1/identify", identify, "wk_e2e")[0] == 200

    # A POS export with its own headers, and a CRM export with ours.
    (tmp_path / "pos.csv").write_text(POS_CSV)
    (tmp_path / "pos.toml").write_text(POS_MAPPING)
    (tmp_path / "crm.csv").write_text(CRM_CSV)
    pos = cli("import", "pos", "pos.csv", "--mapping", "pos.toml")
    assert pos.returncode == 1, pos.stderr
    assert (
        "pos.csv:4: rejected: identifiers: at least one identifier is required; pos.total:"
        in pos.stderr
    )
    assert "imported 1 events from 3 rows; rejected 1" in pos.stderr
    crm = cli("import", "crm", "crm.csv")
    assert crm.returncode == 0, crm.stderr
    missing = cli("import", "crm", "pos.csv")
    assert missing.returncode == 2
    assert "required column(s) missing from the header: contact_id" in missing.stderr
    mapping = cli("import", "mapping", "pos")
    assert mapping.returncode == 0
    assert 'transaction_id = "transaction_id"' in mapping.stdout

    # A third-party producer sends one record that decodes but has no usable identifier.
    producer = Producer({"bootstrap.servers": cli.env["UNIFIER_BOOTSTRAP_SERVERS"]})
    bad = Touchpoint("kiosk-1", "signed_in", "kiosk", 1_795_000_000_000, {"phone": "555-01"})
    producer.produce("touchpoints", encode_touchpoint(bad))
    producer.produce("touchpoints", b"\x00\x00")
    assert producer.flush(10) == 0
    assert cli("lag", "--wait", "--timeout", "120").returncode == 0

    shown = cli("dlq", "show")
    assert shown.returncode == 0, shown.stderr
    assert "no usable identifier (phone: not a valid phone number)" in shown.stdout
    assert "truncated Schema Registry header" in shown.stdout
    assert "555-01" not in shown.stdout  # masked
    assert "2 dead letters" in shown.stderr
    exported = cli("dlq", "show", "--json", "--unmasked")
    letters = [orjson.loads(line) for line in exported.stdout.splitlines()]
    [fixable] = [d for d in letters if "events" in d]
    assert fixable["events"][0]["identifiers"] == {"phone": "555-01"}
    fixable["events"][0]["identifiers"]["phone"] = "(415) 555-0199"
    (tmp_path / "fixed.jsonl").write_bytes(orjson.dumps(fixable) + b"\n")
    replay = cli("dlq", "replay", "fixed.jsonl")
    assert replay.returncode == 0, replay.stderr
    assert "replayed 1 events from 1 lines" in replay.stderr
    (tmp_path / "masked.jsonl").write_text(cli("dlq", "show", "--json").stdout)
    refused = cli("dlq", "replay", "masked.jsonl")
    assert refused.returncode == 1
    assert "holds masked values" in refused.stderr
    assert cli("lag", "--wait", "--timeout", "120").returncode == 0

    # Every way in reached a profile (identity stitching across them is issue #4).
    for args in (
        ("--user-id", "u-42"),
        ("--loyalty-id", "L-555"),
        ("--phone", "+1 415 555 0199"),
        ("--type", "crm_id", "--value", "C-9"),
    ):
        found = cli("profiles", "get", *args)
        assert found.returncode == 0, (args, found.stderr)
    assert cli("stack", "down").returncode == 0
    assert stack_pids(cli.cwd, ports_of(cli)) - before == set()
