"""Stage 1, route: decode input records, check each event, and send it to the identity
partition of its highest-priority identifier — one Kafka record per partition for all
the input records taken at once, so the stages behind pay Faust's per-record cost
once per batch.

The shortcut: when the anchor's identity partition is this worker's (assigned, its
table recovered, no rebalance under way) and the anchor is in its table with an owner
and no other claimant, the route sends what the identity partition would — an
``Apply`` to the owner — straight to the profile partition
(``profiles.graph.identity.known_anchor``). New anchors, and contested ones, take
the identity hop.

Why not from any copy: ``known_anchor`` shows an old value is still a value the
partition held, so the protocol stays safe — but a copy kept after the partition
moved to another worker never learns new claimants, and every event anchored on a
shared identifier (a shop's tablet) would keep linking what the shared rule keeps
apart."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from config.settings import Settings
from profiles.configured import identity_rules, trait_alias_index
from profiles.graph.identity import known_anchor
from profiles.graph.messages import Apply, Observe
from profiles.routing import observe, partition_for
from profiles.rules import IdentityRules
from profiles.touchpoint import InvalidTouchpoint, Touchpoint
from schemas.codec import DecodeError, UnknownSchema, decode_touchpoints, encode_touchpoint
from schemas.resolve import Resolver
from streams import metrics
from streams.batches import batches
from streams.dlq import dead_letter
from streams.messages import send_batches
from streams.privacy import ErasureLedger, Intake, wait_for
from streams.producer import ProducedTopic
from streams.rules import LiveRules

log = logging.getLogger("unifier.route")

#: Safe only because each input partition reaches its stage in log order
#: (``streams.patches.offsets.Gate``): the shortcut's events skip the identity backlog
#: and claim early, and a claim handled before the re-read of the observation that
#: founded its identifier's profile would leave that profile unmerged for good.
SHORTCUT = True


async def decode(resolver: Resolver, data: bytes | None) -> list[Touchpoint]:
    """The touchpoints of an input record; a record written with a newer producer's
    schema makes the resolver look that schema up (blocking I/O, so off the loop) and
    is decoded again, once."""
    try:
        return decode_touchpoints(data)
    except UnknownSchema as missing:
        reason = await asyncio.get_running_loop().run_in_executor(None, resolver.resolve, missing)
        if reason is not None:
            raise DecodeError(reason) from None
        log.info("learned writer schema %s %s", missing.kind, missing.key)
        return decode_touchpoints(data)


class _Shortcut:
    """Whether an event's anchor is in this worker's own identity table (see the module
    docstring), and whom it belongs to."""

    def __init__(self, app: Any, topic: str, table: Any, partitions: int) -> None:
        self.app, self.topic, self.table, self.partitions = app, topic, table, partitions

    def owned(self) -> frozenset[int]:
        """The identity partitions whose table this worker holds up to date now."""
        app = self.app
        if app.rebalancing or app.in_recovery:
            return frozenset()
        return frozenset(
            tp.partition for tp in app.assignor.assigned_actives() if tp.topic == self.topic
        )

    def owner_of(self, first: Observe, mine: frozenset[int], rules: IdentityRules) -> Apply | None:
        if not SHORTCUT or partition_for(first.anchor, self.partitions) not in mine:
            return None
        raw = self.table.data.get(first.anchor)
        if raw is None or b" " in raw or raw[:1] in (b"!", b"#"):
            return None  # unowned, contested, erased or let go: the partition decides
        return known_anchor(raw.decode(), first, rules.max_claimants, rules.marks)


async def _read_first(ledger: ErasureLedger | None, live: LiveRules | None) -> None:
    """Before the first event: the erasure ledger (a replay must not bring an erased
    person back) and the identity rules (nor link what an operator blocked since)."""
    for follower in (ledger, live):
        if follower is not None:
            follower.start()
            await wait_for(follower.ready, follower.topic)


def register(
    app: Any,
    settings: Settings,
    source: Any,
    out: dict[str, ProducedTopic],
    dlq: Any,
    identity_table: Any,
    ledger: ErasureLedger | None = None,
    live: LiveRules | None = None,
) -> Any:
    """The route agent, consuming the input topic (``ledger``: the erasure ledger, and
    ``live``: the identity rules changed at run time, each read to its end before the
    first event is routed)."""
    identity, profile = out["identity"], out["profile"]
    configured = identity_rules(settings)
    region, aliases = settings.default_phone_region, trait_alias_index(settings)
    partitions = settings.internal_partitions
    max_bytes = settings.max_record_bytes
    resolver = Resolver(settings)
    intake = Intake(settings, ledger)  # seals what a third party sent; drops the erased

    shortcut = _Shortcut(app, identity.name, identity_table, partitions)

    async def route_record(event: Any) -> dict[int, list[Any]]:
        groups: dict[int, list[Any]] = {}
        rules = live.current if live is not None else configured
        try:
            touchpoints = await decode(resolver, event.value)
        except DecodeError as exc:
            await dead_letter(dlq, event, "route.decode", str(exc), log=log, max_bytes=max_bytes,
                              seal=intake.seal_bytes)  # fmt: skip
            return groups
        metrics.MESSAGES_IN.labels(stage="route").inc(len(touchpoints))
        touchpoints, forgets = intake.admit(touchpoints)
        for forget in forgets:  # what an erased person's dropped event carried
            groups.setdefault(partition_for(forget.ident, partitions), []).append(forget)
        mine = shortcut.owned()  # after each await: a rebalance may have begun meanwhile
        for tp in touchpoints:
            try:
                first = observe(tp, rules, region, aliases)
            except InvalidTouchpoint as exc:
                await dead_letter(
                    dlq, event, "route.validate", str(exc), encode_touchpoint(tp), log
                )
                mine = shortcut.owned()
                continue
            apply = shortcut.owner_of(first, mine, rules)
            if apply is None:
                groups.setdefault(partition_for(first.anchor, partitions), []).append(first)
            else:  # the profile partition's numbers follow the identity ones
                groups.setdefault(partitions + partition_for(apply.profile, partitions), []).append(
                    apply
                )
        return groups

    records = metrics.RECORDS.labels(stage="route")
    sent_identity = metrics.MESSAGES_OUT.labels(stage="route", to="identity")
    sent_profile = metrics.MESSAGES_OUT.labels(stage="route", to="profile")

    @app.agent(source, name="route")
    async def route(stream: Any) -> None:
        # The records that have arrived, handled as one batch (streams.batches) and
        # acknowledged by hand once their groups are sent: Faust's own acks (and
        # `take_events`) fire in a `finally`, so a worker stopped mid-batch would commit
        # events it never forwarded. Unacked records are re-delivered after a restart;
        # the graph folds each event id once.
        manual = stream.noack()
        await _read_first(ledger, live)
        async for events in batches(
            manual, settings.stage_batch_records, settings.stage_batch_wait_s
        ):
            groups: dict[int, list[Any]] = {}
            for event in events:
                for part, observed in (await route_record(event)).items():
                    groups.setdefault(part, []).extend(observed)
            to_identity = {p: g for p, g in groups.items() if p < partitions}
            to_profile = {p - partitions: g for p, g in groups.items() if p >= partitions}
            if send_batches(identity, to_identity, max_bytes) + send_batches(
                profile, to_profile, max_bytes
            ):
                await identity.producer.delivered()
            for event in events:
                await manual.ack(event)
            records.inc(len(events))
            sent_identity.inc(sum(len(g) for g in to_identity.values()))
            sent_profile.inc(sum(len(g) for g in to_profile.values()))

    return route
