"""The identity graph as message handlers over two partitioned tables (pure, no Kafka).

Split at its seams: ``state`` (a profile's mergeable state and its table node),
``messages`` (what partitions send each other), ``identity`` and ``profile`` (the
handlers of the two kinds of partitions).

Two kinds of partitions, each owning a table:

* **identity**, keyed by identifier (``type:value``) → the profile that owns it.
* **profile**, keyed by profile id → the profile's state, or a redirect to the
  profile it was merged into.

Handlers take one message and the table of the partition it arrived at, change the
table, and return messages for other partitions. The streams layer carries those
messages on internal topics in batches; the simulator in the tests delivers them in
random interleavings. The protocol (DESIGN.md, "The hard part"):

1. ``Observe`` goes to the partition of the event's highest-priority identifier
   (the anchor), which finds its owner — or makes the anchor's own profile the
   owner — and sends ``Apply`` there.
2. ``Apply`` folds the event into the profile. For each other identifier the
   profile does not hold it checks the per-type limit (what it holds plus what it
   has asked for): over the limit the link is refused and recorded; otherwise it
   reserves the identifier and sends ``Claim`` to the identifier's partition.
3. ``Claim`` of an unowned identifier (or one the claimer owns) is ``Granted``.
   Owned by another profile, it is a merge: the larger id (the loser) is asked to
   ``Offer`` itself to the smaller (the winner). Ids only ever wait on smaller ids,
   so nothing deadlocks, and redirects never form a cycle.
4. The loser offers its whole state and, until the ``Answer``, holds back every
   message that reaches it. The winner checks the limits of both together: it
   absorbs the loser and says yes, or records the refusal and says no (and the
   claimer drops its reservation — that one only: every claim has an id, and the
   answers name it). A loser that was accepted becomes a redirect,
   re-points its identifiers, and forwards what it held back.
5. An identifier claimed by more than ``max_claimants`` profiles (owner included)
   stops linking: the identity partition answers later claimants ``Denied`` (recorded
   as a refusal), and an event it anchors is passed on to the event's next
   identifier by the owner — unless the owner already has the event, which makes a
   re-delivery from before the identifier was shared land where it landed the first
   time.
6. Every handler tolerates re-delivery (Kafka delivers at least once): a repeated
   claim is granted again, a repeated offer gets the answer the first one got
   (decisions travel with the state) without taking its reservations again, an answer
   or release names the claim it is for and settles nothing else, a repeated event is
   folded once.
7. Profile state merges by union (events keyed by event id, identifiers, refusals);
   traits and computed traits are functions of the event set (profiles.traits): the
   order of merges cannot change the result, and an event reaching a profile twice
   counts once.
"""
