"""A database table as a two-way destination: SQLite (embedded) or PostgreSQL.

**Outbound.** ``apply`` takes a batch of profile changes (opened ``ProfileUpdate``s
and ``ProfileRemoved`` tombstones) and writes it in one transaction:

- a profile in scope (its segment, its consent) updates the rows linked to it — by
  ``unifier_profile_id``, or by its ``row_identifier`` values naming an app's row —
  or gets a new row (``unifier_created``);
- out of scope (consent withdrawn, segment left): ``mirror`` deletes the rows it
  created, and marks the others ``unifier_removed_at``; ``upsert`` only marks;
- merged away: rows we created for it go (the survivor's row stands for the
  customer), the app's rows are linked to the survivor;
- erased: every row linked to it goes, with what we recorded of it.

Only fields whose value changes are written, and a field is written only if the
cell still holds what we last wrote or saw there (an app's edit not yet taken in is
never overwritten), never if the app owns it and it is filled, and never from an
update older than the app's pending edit of it (its ``last_seen`` is before the
edit, and the edit is younger than ``settle_s``). Every write is recorded in
``TABLE_unifier_state`` (row, column, value, profile version, by whom) and
appended to ``TABLE_unifier_log``.

**Inbound.** Every insert or update of a row bumps its ``unifier_rev`` (a trigger of
ours). ``poll`` reads rows past the cursor and compares each cell with the state: a
cell equal to what we wrote is our own write read back (an echo: dropped); a
different one is the app's edit and becomes a touchpoint from the destination's
source (``fields.edit_event``). ``confirm`` records those values (so they are not
taken twice) and the cursor, after the touchpoints were delivered.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import orjson

from schemas.records import ProfileRemoved, ProfileUpdate, iso_ms
from sinks.destinations.config import Destination, FieldSpec
from sinks.destinations.fields import Cell, cell, edit_event, in_scope, wanted, writable

Op = ProfileUpdate | ProfileRemoved
CHUNK = 500  # ids per IN (...) list


@dataclass
class Applied:
    """What one ``apply`` did."""

    rows_inserted: int = 0
    rows_updated: int = 0
    rows_deleted: int = 0
    rows_marked: int = 0
    fields_written: int = 0
    skipped_stale: int = 0  # updates older than what the row holds (a replay)
    held: int = 0  # fields not written: the app's edit waits to be taken in, or it owns them
    profiles: int = 0

    def add(self, other: Applied) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    @property
    def writes(self) -> int:
        return self.rows_inserted + self.rows_updated + self.rows_deleted + self.rows_marked


@dataclass(frozen=True)
class Edit:
    """An app's edit of one row, as a touchpoint (JSON form) to send."""

    row_id: str
    rev: int
    doc: dict[str, Any]
    values: dict[str, Cell]  # the edited cells, recorded by ``confirm``
    at_ms: int


@dataclass
class Polled:
    edits: list[Edit] = field(default_factory=list)
    cursor: int = 0
    rows_read: int = 0
    echoes: int = 0  # rows read back that held only our own writes
    revs: list[int] = field(default_factory=list)  # every revision read


@dataclass
class _Row:
    id: str
    cells: dict[str, Cell]
    profile_id: str | None
    created: bool
    version: int
    removed: bool
    gone: bool = False


def _dumps(value: Cell) -> str:
    return orjson.dumps(value).decode()


class TableDestination:
    """See the module docstring. ``connect`` opens the database (``open_table``)."""

    def __init__(
        self,
        dest: Destination,
        connect: Callable[[], Any],
        *,
        dialect: str,
        region: str = "US",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.dest = dest
        self.name = dest.name
        self.dialect = dialect
        self.region = region
        self._clock = clock
        self._connect = connect
        self.conn: Any = connect()
        self.t = dest.table
        self.columns = list(dest.fields)
        self._held: dict[str, ProfileUpdate] = {}  # row -> an update it kept cells from
        self._marks: deque[tuple[float, int]] = deque()  # (time read, revision): lookback

    # --- SQL helpers -----------------------------------------------------------
    def _sql(self, text: str) -> str:
        return text.replace("?", "%s") if self.dialect == "postgres" else text

    def _exec(self, text: str, params: Sequence[Any] = ()) -> Any:
        return self.conn.execute(self._sql(text), params)

    def _fetch(self, text: str, params: Sequence[Any] = ()) -> list[Any]:
        """A read on its own: PostgreSQL's transaction ends with it, so the next read
        sees what others committed since (psycopg opens one on the first statement)."""
        got = self._exec(text, params).fetchall()
        if self.dialect == "postgres":
            self.conn.commit()
        return list(got)

    def reconnect(self) -> None:
        """A new connection in place of a broken one (the sync process retries)."""
        with contextlib.suppress(Exception):  # it is broken already
            self.conn.close()
        self.conn = self._connect()

    def _many(self, text: str, rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        if self.dialect == "postgres":
            with self.conn.cursor() as cur:
                cur.executemany(self._sql(text), rows)
        else:
            self.conn.executemany(text, rows)

    def _insert_rows(
        self,
        table: str,
        columns: Sequence[tuple[str, str]],
        rows: Sequence[Sequence[Any]],
        suffix: str = "",
    ) -> None:
        """``INSERT INTO table (columns) VALUES …`` for many rows (``columns``: name and
        PostgreSQL type), ``suffix`` an ``ON CONFLICT`` clause. PostgreSQL takes them
        by ``COPY`` (into a temporary table first when there is a suffix): a backfill's
        rows are not a statement, nor a parameter list, each. SQLite: executemany."""
        if not rows:
            return
        names = ", ".join(self._q(c) for c, _ in columns)
        if self.dialect != "postgres":
            marks = ", ".join("?" * len(columns))
            self.conn.executemany(f"INSERT INTO {table} ({names}) VALUES ({marks}) {suffix}", rows)
            return
        with self.conn.cursor() as cur:
            target = table
            if suffix:
                target = "unifier_load_" + "".join(ch for ch in table if ch.isalnum() or ch == "_")
                types = ", ".join(f"{self._q(c)} {ty}" for c, ty in columns)
                cur.execute(f"CREATE TEMP TABLE IF NOT EXISTS {target} ({types})")
            with cur.copy(f"COPY {target} ({names}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            if suffix:
                cur.execute(f"INSERT INTO {table} ({names}) SELECT {names} FROM {target} {suffix}")
                cur.execute(f"TRUNCATE {target}")

    @contextmanager
    def _tx(self) -> Iterator[None]:
        if self.dialect == "postgres":
            with self.conn.transaction():
                yield
            return
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def _q(self, name: str) -> str:
        return f'"{name}"'

    # --- schema ----------------------------------------------------------------
    def setup(self) -> None:
        """Create the table, our columns, the state tables and the revision trigger
        (idempotent: a column added to the config is added to the table)."""
        t = self.t
        pg = self.dialect == "postgres"
        types = {
            c: ("BOOLEAN" if s.kind == "consent" else "TEXT") for c, s in self.dest.fields.items()
        }
        ours = {
            "unifier_profile_id": "TEXT",
            "unifier_created": "BOOLEAN NOT NULL DEFAULT FALSE"
            if pg
            else "INTEGER NOT NULL DEFAULT 0",
            "unifier_version": "BIGINT NOT NULL DEFAULT 0",
            "unifier_removed_at": "TEXT",
            "unifier_rev": "BIGINT NOT NULL DEFAULT 0",
            # Set by our own writes of rows with no edit waiting to be read: the poll
            # skips them (a trigger clears it when anyone else writes the row).
            "unifier_echo": "BOOLEAN NOT NULL DEFAULT FALSE"
            if pg
            else "INTEGER NOT NULL DEFAULT 0",
        }
        with self._tx():
            if pg:  # one process at a time creates (several sync processes may start)
                self._exec("SELECT pg_advisory_xact_lock(hashtext(?))", (f"unifier:{t}",))
            cols = ", ".join(f"{self._q(c)} {ty}" for c, ty in {**types, **ours}.items())
            self._exec(f"CREATE TABLE IF NOT EXISTS {self._q(t)} (id TEXT PRIMARY KEY, {cols})")
            have = self._existing_columns()
            for c, ty in {**types, **ours}.items():
                if c not in have:
                    self._exec(f"ALTER TABLE {self._q(t)} ADD COLUMN {self._q(c)} {ty}")
            self._exec(
                f"CREATE INDEX IF NOT EXISTS {self._q(t + '_unifier_profile')} "
                f"ON {self._q(t)} (unifier_profile_id)"
            )
            self._exec(
                f"CREATE INDEX IF NOT EXISTS {self._q(t + '_unifier_rev')} "
                f"ON {self._q(t)} (unifier_rev)"
            )
            self._exec(
                f"CREATE TABLE IF NOT EXISTS {self._q(t + '_unifier_state')} ("
                "row_id TEXT NOT NULL, col TEXT NOT NULL, value TEXT, by_whom TEXT NOT NULL, "
                "version BIGINT NOT NULL, at_ms BIGINT NOT NULL, pending_ms BIGINT, "
                "PRIMARY KEY (row_id, col))"
            )
            self._exec(
                f"CREATE TABLE IF NOT EXISTS {self._q(t + '_unifier_log')} ("
                "row_id TEXT NOT NULL, fields TEXT NOT NULL, n INTEGER NOT NULL, "
                "version BIGINT NOT NULL, at_ms BIGINT NOT NULL)"
            )
            self._exec(
                f"CREATE INDEX IF NOT EXISTS {self._q(t + '_unifier_log_row')} "
                f"ON {self._q(t + '_unifier_log')} (row_id)"
            )
            self._exec(
                f"CREATE TABLE IF NOT EXISTS {self._q(t + '_segments')} ("
                "row_id TEXT NOT NULL, segment TEXT NOT NULL, since_ms BIGINT NOT NULL, "
                "PRIMARY KEY (row_id, segment))"
            )
            self._exec(
                f"CREATE TABLE IF NOT EXISTS {self._q(t + '_unifier_cursor')} ("
                "name TEXT PRIMARY KEY, rev BIGINT NOT NULL)"
            )
            if pg:
                self._pg_trigger()
            else:
                self._sqlite_trigger()

    def _existing_columns(self) -> set[str]:
        if self.dialect == "postgres":
            rows = self._exec(
                "SELECT column_name FROM information_schema.columns WHERE table_name = ? "
                "AND table_schema = current_schema()",
                (self.t,),
            ).fetchall()
            return {r[0] for r in rows}
        return {r[1] for r in self.conn.execute(f"PRAGMA table_info({self._q(self.t)})")}

    def _pg_trigger(self) -> None:
        t = self.t
        seq, fn = f"{t}_unifier_rev_seq", f"{t}_unifier_rev_fn"
        self._exec(f"CREATE SEQUENCE IF NOT EXISTS {self._q(seq)}")
        self._exec(
            f"CREATE OR REPLACE FUNCTION {self._q(fn)}() RETURNS trigger AS $$ BEGIN "
            f"NEW.unifier_rev := nextval('\"{seq}\"'); "
            "IF TG_OP = 'UPDATE' AND NEW.unifier_version IS NOT DISTINCT FROM "
            "OLD.unifier_version THEN NEW.unifier_echo := FALSE; END IF; "
            "RETURN NEW; END $$ LANGUAGE plpgsql"
        )
        self._exec(f"DROP TRIGGER IF EXISTS {self._q(t + '_unifier_rev')} ON {self._q(t)}")
        self._exec(
            f"CREATE TRIGGER {self._q(t + '_unifier_rev')} BEFORE INSERT OR UPDATE ON "
            f"{self._q(t)} FOR EACH ROW EXECUTE FUNCTION {self._q(fn)}()"
        )

    def _sqlite_trigger(self) -> None:
        t, seq = self.t, f"{self.t}_unifier_seq"
        self._exec(f"CREATE TABLE IF NOT EXISTS {self._q(seq)} (n INTEGER NOT NULL)")
        if self._exec(f"SELECT count(*) FROM {self._q(seq)}").fetchone()[0] == 0:
            self._exec(f"INSERT INTO {self._q(seq)} VALUES (0)")
        bump = (
            f"UPDATE {self._q(seq)} SET n = n + 1; UPDATE {self._q(t)} SET unifier_rev = "
            f"(SELECT n FROM {self._q(seq)}){{echo}} WHERE rowid = NEW.rowid;"
        )
        # Anyone's write that leaves our version as it was is not ours: not an echo.
        ours = (", unifier_echo = CASE WHEN NEW.unifier_version IS OLD.unifier_version "
                "THEN 0 ELSE NEW.unifier_echo END")  # fmt: skip
        cols = ", ".join(self._q(c) for c in self.columns) or "id"
        for name, when, echo in (("ins", "AFTER INSERT", ""),
                                 ("upd", f"AFTER UPDATE OF {cols}", ours)):  # fmt: skip
            trig = self._q(f"{t}_unifier_{name}")
            self._exec(f"DROP TRIGGER IF EXISTS {trig}")
            body = bump.format(echo=echo)
            self._exec(f"CREATE TRIGGER {trig} {when} ON {self._q(t)} BEGIN {body} END")

    # --- reading ---------------------------------------------------------------
    def _select_rows(self, where: str, keys: list[str]) -> list[_Row]:
        cols = ", ".join(self._q(c) for c in self.columns)
        cols = f"id, {cols}, " if cols else "id, "
        out = []
        lock = " FOR UPDATE" if self.dialect == "postgres" else ""
        for at in range(0, len(keys), CHUNK):
            part = keys[at : at + CHUNK]
            marks = ", ".join("?" * len(part))
            rows = self._exec(
                f"SELECT {cols}unifier_profile_id, unifier_created, unifier_version, "
                f"unifier_removed_at FROM {self._q(self.t)} WHERE {where} IN ({marks}){lock}",
                part,
            ).fetchall()
            out += [self._row(r) for r in rows]
        return out

    def _row(self, r: Sequence[Any]) -> _Row:
        n = len(self.columns)
        cells = {
            c: cell(self.dest.fields[c], v) for c, v in zip(self.columns, r[1 : 1 + n], strict=True)
        }
        pid, created, version, removed = r[1 + n : 5 + n]
        return _Row(str(r[0]), cells, pid, bool(created), int(version), removed is not None)

    def _state(self, row_ids: Iterable[str]) -> dict[tuple[str, str], tuple[Cell, str, int | None]]:
        ids = sorted(set(row_ids))
        out: dict[tuple[str, str], tuple[Cell, str, int | None]] = {}
        for at in range(0, len(ids), CHUNK):
            part = ids[at : at + CHUNK]
            marks = ", ".join("?" * len(part))
            for row_id, col, value, by, pending in self._exec(
                f"SELECT row_id, col, value, by_whom, pending_ms FROM "
                f"{self._q(self.t + '_unifier_state')} WHERE row_id IN ({marks})",
                part,
            ).fetchall():
                out[(row_id, col)] = (
                    orjson.loads(value) if value is not None else None,
                    by,
                    pending,
                )
        return out

    # --- outbound --------------------------------------------------------------
    def apply(self, ops: Sequence[Op]) -> Applied:
        """Write a batch of changes in one transaction (see the module docstring)."""
        done = Applied()
        if not ops:
            return done
        latest: dict[str, Op] = {}
        for op in ops:  # a profile's last record stands for it (each is its full state)
            latest.pop(op.profile_id, None)
            latest[op.profile_id] = op
        done.profiles = len(latest)
        now_ms = int(self._clock() * 1000)
        ri = self.dest.row_identifier
        with self._tx():
            by_pid = self._select_rows("unifier_profile_id", list(latest))
            named = sorted(
                {v for op in latest.values() if isinstance(op, ProfileUpdate) and ri
                 for v in op.identifiers.get(ri, ())}
            )  # fmt: skip
            rows = {r.id: r for r in by_pid}
            rows.update({r.id: r for r in self._select_rows("id", named) if r.id not in rows})
            state = self._state(rows)
            w = _Writes()
            # Rows by the profile they were linked to, in this batch too (a row changes
            # hands on a merge): candidates, checked again below.
            held: dict[str, list[_Row]] = {}
            for r in rows.values():
                held.setdefault(r.profile_id or "", []).append(r)
            for pid, op in latest.items():
                names = op.identifiers.get(ri, ()) if isinstance(op, ProfileUpdate) and ri else ()
                maybe = held.get(pid, []) + [rows[n] for n in names if n in rows]
                linked = list(
                    {id(r): r for r in maybe
                     if not r.gone and (r.profile_id == pid or r.id in names)}.values()
                )  # fmt: skip
                if isinstance(op, ProfileRemoved):
                    self._removed(op, linked, w, done)
                    if op.merged_into:
                        held.setdefault(op.merged_into, []).extend(linked)
                elif not in_scope(self.dest, op):
                    self._out_of_scope(op, linked, w, done, now_ms)
                elif not linked:
                    row = self._insert(op, w, done, now_ms)
                    rows[row.id] = row
                    held.setdefault(pid, []).append(row)
                else:
                    for row in linked:
                        self._update(op, row, state, w, done, now_ms)
                    held.setdefault(pid, []).extend(linked)
            self._flush(w)
        return done

    def _removed(self, op: ProfileRemoved, linked: list[_Row], w: _Writes, done: Applied) -> None:
        for row in linked:
            self._held.pop(row.id, None)
            if op.reason == "erased" or row.created:
                row.gone = True
                w.deletes.append(row.id)
                done.rows_deleted += 1
            elif op.merged_into is not None:  # the app's row now belongs to the survivor
                row.profile_id = op.merged_into
                w.relinks.append((op.merged_into, row.id))
                done.rows_updated += 1
            # else: a tombstone that does not say where it went (written before the
            # reason was): the app's row is left as it is

    def _out_of_scope(
        self, op: ProfileUpdate, linked: list[_Row], w: _Writes, done: Applied, now_ms: int
    ) -> None:
        for row in linked:
            if row.profile_id == op.profile_id and op.version < row.version:
                done.skipped_stale += 1  # a replay of an older state
                continue
            self._held.pop(row.id, None)
            if row.profile_id != op.profile_id:  # the app's row, named by the profile:
                row.profile_id = op.profile_id  # linked, so an erasure finds it
                w.relinks.append((op.profile_id, row.id))
            w.members[row.id] = (set(), row.version)
            if self.dest.mode == "mirror" and row.created:
                row.gone = True
                w.deletes.append(row.id)
                done.rows_deleted += 1
            elif not row.removed:
                row.removed = True
                w.marks.append((str(now_ms), row.id))
                done.rows_marked += 1

    def _insert(self, op: ProfileUpdate, w: _Writes, done: Applied, now_ms: int) -> _Row:
        cells = {c: wanted(s, op, None, self.region) for c, s in self.dest.fields.items()}
        row = _Row(op.profile_id, cells, op.profile_id, True, op.version, False)
        w.inserts.append((op.profile_id, *cells.values(), op.profile_id, True, op.version, True))
        w.members[row.id] = (set(op.segments), op.version)
        for c, v in cells.items():
            if v is not None:
                w.record(op.profile_id, c, v, op.version, now_ms)
                done.fields_written += 1
        done.rows_inserted += 1
        return row

    def _update(
        self,
        op: ProfileUpdate,
        row: _Row,
        state: dict[tuple[str, str], tuple[Cell, str, int | None]],
        w: _Writes,
        done: Applied,
        now_ms: int,
    ) -> None:
        if row.profile_id == op.profile_id and op.version < row.version:
            done.skipped_stale += 1
            if self._held.get(row.id) is op:  # a newer update wrote the row since
                del self._held[row.id]
            return
        w.members[row.id] = (set(op.segments), op.version)
        last_seen = _last_seen_ms(op)
        sets: dict[str, Cell] = {}
        held = False
        unread = False  # an edit of the app's not read yet: the poll must still see the row
        for c, spec in self.dest.fields.items():
            cur = row.cells.get(c)
            seen = state.get((row.id, c))
            if writable(spec) and cur != (seen[0] if seen else None):
                unread = True
            want = wanted(spec, op, cur, self.region)
            if want == cur:
                continue
            if self._hold(spec, cur, seen, last_seen, now_ms):
                done.held += 1
                held = held or spec.owner == "unifier"
                continue
            sets[c] = want
        # A cell kept for an edit of the app's: this update is tried again after the
        # next poll, unless a newer one comes first (the edit may never reach the
        # profile: reverted before it was read, or refused).
        if held:
            self._held[row.id] = op
        else:
            self._held.pop(row.id, None)
        relink = row.profile_id != op.profile_id
        if not sets and not relink and not row.removed:
            return
        row.cells.update(sets)
        row.profile_id, row.version, row.removed = op.profile_id, op.version, False
        w.updates.setdefault(tuple(sets), []).append(
            (*sets.values(), op.profile_id, op.version, not unread, row.id)
        )
        for c, v in sets.items():
            w.record(row.id, c, v, op.version, now_ms)
        done.fields_written += len(sets)
        done.rows_updated += 1

    def _hold(
        self,
        spec: FieldSpec,
        cur: Cell,
        seen: tuple[Cell, str, int | None] | None,
        last_seen: int,
        now_ms: int,
    ) -> bool:
        """Whether a cell must keep what it holds rather than take the profile's value."""
        if spec.owner != "unifier" and cur is not None:
            return True  # the app owns it: we only fill it where it is empty
        if seen is None:
            return cur is not None  # the app's value, never taken in yet
        value, by, pending = seen
        if cur != value:
            return True  # edited since: the edit goes in first (poll), then we decide
        if by == "app" and pending is not None:
            young = now_ms - pending < self.dest.settle_s * 1000
            if spec.kind == "identifiers":
                # The value is not (yet) among the profile's: an identifier joins its
                # profile through the identity graph, after the event's traits, so
                # only the profile holding it (or the settle time) says it landed.
                return young
            # The profile has not heard of the edit yet: an update older than it must
            # not undo it (it would come back the moment the edit lands).
            return last_seen < pending and young
        return False

    def _flush(self, w: _Writes) -> None:
        t = self._q(self.t)
        cols = [self._q(c) for c in self.columns]
        if w.deletes:
            for at in range(0, len(w.deletes), CHUNK):
                part = w.deletes[at : at + CHUNK]
                marks = ", ".join("?" * len(part))
                for table in (
                    t,
                    self._q(self.t + "_unifier_state"),
                    self._q(self.t + "_unifier_log"),
                    self._q(self.t + "_segments"),
                ):
                    key = "id" if table == t else "row_id"
                    self._exec(f"DELETE FROM {table} WHERE {key} IN ({marks})", part)
        if w.inserts:
            names = ", ".join(
                ["id", *cols, "unifier_profile_id", "unifier_created", "unifier_version",
                 "unifier_echo"]
            )  # fmt: skip
            marks = ", ".join("?" * (len(cols) + 5))
            kinds = [("id", "text")]
            kinds += [(c, "boolean" if s.kind == "consent" else "text")
                      for c, s in self.dest.fields.items()]  # fmt: skip
            kinds += [("unifier_profile_id", "text"), ("unifier_created", "boolean"),
                      ("unifier_version", "bigint"), ("unifier_echo", "boolean")]  # fmt: skip
            if self.dialect == "postgres":
                self._insert_rows(t, kinds, w.inserts)
            else:
                self._many(f"INSERT INTO {t} ({names}) VALUES ({marks})", w.inserts)
        for sets, params in w.updates.items():
            assigns = ", ".join(
                [*(f"{self._q(c)} = ?" for c in sets),
                 "unifier_profile_id = ?", "unifier_version = ?", "unifier_echo = ?",
                 "unifier_removed_at = NULL"]
            )  # fmt: skip
            self._many(f"UPDATE {t} SET {assigns} WHERE id = ?", params)
        self._many(f"UPDATE {t} SET unifier_profile_id = ? WHERE id = ?", w.relinks)
        self._many(f"UPDATE {t} SET unifier_removed_at = ? WHERE id = ?", w.marks)
        self._record(w.state, w.log)
        self._memberships(w)

    def _memberships(self, w: _Writes) -> None:
        """``TABLE_segments``: one row per (row, segment) it is in, as its profile is."""
        gone = set(w.deletes)
        wanted_ = {r: segs for r, (segs, _) in w.members.items() if r not in gone}
        if not wanted_:
            return
        seg = self._q(self.t + "_segments")
        have: dict[str, set[str]] = {}
        ids = sorted(wanted_)
        for at in range(0, len(ids), CHUNK):
            part = ids[at : at + CHUNK]
            marks = ", ".join("?" * len(part))
            for row_id, segment in self._exec(
                f"SELECT row_id, segment FROM {seg} WHERE row_id IN ({marks})", part
            ).fetchall():
                have.setdefault(row_id, set()).add(segment)
        now_ms = int(self._clock() * 1000)
        enter = [(r, s, now_ms) for r, segs in wanted_.items() for s in segs - have.get(r, set())]
        leave = [(r, s) for r, segs in wanted_.items() for s in have.get(r, set()) - segs]
        self._insert_rows(seg, [("row_id", "text"), ("segment", "text"), ("since_ms", "bigint")],
                          enter)  # fmt: skip
        self._many(f"DELETE FROM {seg} WHERE row_id = ? AND segment = ?", leave)
        # The row now reflects that version (a replay of an older one is skipped), also
        # when only its segments changed.
        moved = {r for r, _, _ in enter} | {r for r, _ in leave}
        self._many(
            f"UPDATE {self._q(self.t)} SET unifier_version = ? "
            "WHERE id = ? AND unifier_version < ?",
            [(w.members[r][1], r, w.members[r][1]) for r in sorted(moved)],
        )

    def segments(self) -> dict[str, set[str]]:
        """Row id -> the segments it is in (``TABLE_segments``)."""
        got = self._fetch(f"SELECT row_id, segment FROM {self._q(self.t + '_segments')}")
        out: dict[str, set[str]] = {}
        for row_id, segment in got:
            out.setdefault(row_id, set()).add(segment)
        return out

    def _record(
        self, state: list[tuple[Any, ...]], log: list[tuple[Any, ...]], keep_newer: bool = False
    ) -> None:
        """``keep_newer``: a record made after this one (a write of ours, by another
        sync process, between the poll and now) stands."""
        st = self._q(self.t + "_unifier_state")
        guard = f" WHERE {st}.at_ms <= excluded.at_ms" if keep_newer else ""
        # One record per (row, column) in a statement: the last one made stands.
        last = list({(r[0], r[1]): r for r in state}.values())
        self._insert_rows(
            st,
            [("row_id", "text"), ("col", "text"), ("value", "text"), ("by_whom", "text"),
             ("version", "bigint"), ("at_ms", "bigint"), ("pending_ms", "bigint")],
            last,
            "ON CONFLICT (row_id, col) DO UPDATE SET value = excluded.value, "
            "by_whom = excluded.by_whom, version = excluded.version, "
            "at_ms = excluded.at_ms, pending_ms = excluded.pending_ms" + guard,
        )  # fmt: skip
        self._insert_rows(
            self._q(self.t + "_unifier_log"),
            [("row_id", "text"), ("fields", "text"), ("n", "integer"), ("version", "bigint"),
             ("at_ms", "bigint")],
            log,
        )  # fmt: skip

    # --- inbound ---------------------------------------------------------------
    def cursor(self) -> int:
        got = self._fetch(
            f"SELECT rev FROM {self._q(self.t + '_unifier_cursor')} WHERE name = ?", ("inbound",)
        )
        return int(got[0][0]) if got else 0

    def _read(
        self, since: int, limit: int
    ) -> tuple[list[Any], int | None, dict[tuple[str, str], tuple[Cell, str, int | None]]]:
        """Rows changed past ``since`` (not our own writes), the highest revision, and
        what was recorded of those rows — in one snapshot (a peer's write committed in
        between would look like an app's edit)."""
        cols = ", ".join(self._q(c) for c in self.columns)
        select = (
            f"SELECT id, {cols}, unifier_profile_id, unifier_created, unifier_version, "
            f"unifier_removed_at, unifier_rev FROM {self._q(self.t)} WHERE "
        )
        top_sql = f"SELECT max(unifier_rev) FROM {self._q(self.t)}"
        if self.dialect == "postgres":
            self.conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            # PostgreSQL commits out of sequence order: a revision below one already
            # read may commit later. Revisions read in the last ``lookback_s`` are
            # remembered; the ones between them are read again until they age out.
            window = sorted(rev for _, rev in self._marks if rev > since)
            hi = window[-1] if window else since
            top = self._exec(top_sql).fetchone()[0]
            rows = self._exec(
                select + "unifier_rev > ? AND NOT unifier_echo ORDER BY unifier_rev LIMIT ?",
                (hi, limit),
            ).fetchall()
            if window:
                rows += self._exec(
                    select + "unifier_rev > ? AND unifier_rev <= ? AND NOT unifier_echo "
                    "AND NOT (unifier_rev = ANY(?))",
                    (since, hi, window),
                ).fetchall()
            state = self._state(str(r[0]) for r in rows)
            self.conn.commit()
        else:  # one writer at a time: revisions commit in order
            self.conn.execute("BEGIN")
            top = self._exec(top_sql).fetchone()[0]
            rows = self._exec(
                select + "unifier_rev > ? AND unifier_echo = 0 ORDER BY unifier_rev LIMIT ?",
                (since, limit),
            ).fetchall()
            state = self._state(str(r[0]) for r in rows)
            self.conn.execute("COMMIT")
        return rows, top, state

    def poll(self, limit: int = 5000) -> Polled:
        """The app's edits past the cursor (see the module docstring). Rows that hold
        only our own writes (``unifier_echo``) are not read; the highest revision
        there is moves the cursor past them."""
        since = self.cursor()
        rows, top, state = self._read(since, limit)
        out = Polled(cursor=since, rows_read=len(rows))
        if len(rows) < limit and top is not None and int(top) > since:
            out.cursor = int(top)  # everything up to it was read
            out.revs.append(int(top))
        now_ms = int(self._clock() * 1000)
        for r in rows:
            row, rev = self._row(r[:-1]), int(r[-1])
            out.cursor = max(out.cursor, rev)
            out.revs.append(rev)
            changed: dict[str, Cell] = {}
            fresh = not any((row.id, c) in state for c in self.columns)
            for c, spec in self.dest.fields.items():
                seen = state.get((row.id, c))
                value = row.cells.get(c)
                if not writable(spec):
                    continue
                if seen is None:
                    if value is not None:
                        changed[c] = value
                elif seen[0] != value:
                    changed[c] = value
            if not changed:
                out.echoes += 1
                continue
            app_row = not row.created
            doc = edit_event(
                self.dest, row.id, rev, row.cells, changed, app_row, now_ms,
                new_row=fresh and app_row,
            )  # fmt: skip
            out.edits.append(Edit(row.id, rev, doc, changed, now_ms))
        return out

    def confirm(self, polled: Polled, refused: Iterable[str] = ()) -> None:
        """Record the edits as seen (sent, or ``refused`` by validation: not sent again)
        and move the cursor."""
        state = []
        for e in polled.edits:
            for c, v in e.values.items():
                state.append((e.row_id, c, _dumps(v), "app", 0, e.at_ms, e.at_ms))
        cursor = polled.cursor
        if self.dialect == "postgres":
            now = self._clock()
            self._marks.extend((now, rev) for rev in polled.revs)
            floor = self.cursor()
            while self._marks and self._marks[0][0] < now - self.dest.lookback_s:
                floor = max(floor, self._marks.popleft()[1])
            cursor = floor  # what is younger than the lookback is read again
        with self._tx():
            self._record(state, [], keep_newer=True)
            self._exec(
                f"INSERT INTO {self._q(self.t + '_unifier_cursor')} (name, rev) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET rev = excluded.rev",
                ("inbound", cursor),
            )
        # Updates that kept cells for an edit: a row edited now waits for the update
        # its edit makes; the others are tried again (the edit was reverted before it
        # was read, or the settle time passed).
        edited = {e.row_id for e in polled.edits} - set(refused)
        again = [op for row_id, op in self._held.items() if row_id not in edited]
        if again:  # each row keeps its entry only if it still keeps cells
            self.apply(again)

    # --- reading for people and tests -----------------------------------------
    def rows(self) -> dict[str, dict[str, Any]]:
        """Every row: id -> cells and our columns."""
        cols = ", ".join(self._q(c) for c in self.columns)
        got = self._fetch(
            f"SELECT id, {cols}, unifier_profile_id, unifier_created, unifier_version, "
            f"unifier_removed_at FROM {self._q(self.t)}"
        )
        out = {}
        for r in got:
            row = self._row(r)
            out[row.id] = {
                **row.cells,
                "unifier_profile_id": row.profile_id,
                "unifier_created": row.created,
                "unifier_removed": row.removed,
            }
        return out

    def last_writes(self, n: int) -> list[tuple[Any, ...]]:
        """The ``n`` latest recorded field writes: (row, column, value, version, at_ms)."""
        got = self._fetch(
            f"SELECT row_id, fields, version, at_ms FROM {self._q(self.t + '_unifier_log')} "
            "ORDER BY at_ms DESC LIMIT ?",
            (n,),
        )
        out = [(r[0], c, _dumps(v), r[2], r[3]) for r in got for c, v in orjson.loads(r[1]).items()]
        return out[:n]

    def recorded(self, needle: str) -> int:
        """How many records beside the table (state, log, segments) hold ``needle`` or
        belong to a row that does (tests and audits: nothing of an erased person)."""
        n = 0
        for kept, cols in (("_unifier_state", "row_id || ' ' || coalesce(value, '')"),
                           ("_unifier_log", "row_id || ' ' || fields"),
                           ("_segments", "row_id")):  # fmt: skip
            got = self._fetch(
                f"SELECT count(*) FROM {self._q(self.t + kept)} WHERE {cols} LIKE ?",
                (f"%{needle}%",),
            )
            n += int(got[0][0])
        return n

    def counts(self) -> dict[str, int]:
        """Rows, rows we created, rows marked removed, writes recorded, the cursor."""
        t = self._q(self.t)
        [got] = self._fetch(
            f"SELECT count(*), coalesce(sum(CASE WHEN unifier_created THEN 1 ELSE 0 END), 0), "
            f"count(unifier_removed_at) FROM {t}"
        )
        return {"rows": int(got[0]), "created": int(got[1]), "removed": int(got[2]),
                "writes": self.writes_logged(), "cursor": self.cursor()}  # fmt: skip

    def writes_logged(self) -> int:
        """Fields written since the table was set up (every row write is logged)."""
        got = self._fetch(f"SELECT coalesce(sum(n), 0) FROM {self._q(self.t + '_unifier_log')}")
        return int(got[0][0])

    def close(self) -> None:
        self.conn.close()


class _Writes:
    """The statements one ``apply`` makes, gathered to run as batches."""

    def __init__(self) -> None:
        self.inserts: list[tuple[Any, ...]] = []
        self.updates: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
        self.deletes: list[str] = []
        self.relinks: list[tuple[str, str]] = []
        self.marks: list[tuple[str, str]] = []
        # row -> the segments it should be in, and the profile version that says so
        self.members: dict[str, tuple[set[str], int]] = {}
        self.state: list[tuple[Any, ...]] = []
        self._logged: dict[str, tuple[dict[str, Cell], int, int]] = {}

    def record(self, row_id: str, col: str, value: Cell, version: int, now_ms: int) -> None:
        self.state.append((row_id, col, _dumps(value), "unifier", version, now_ms, None))
        fields = self._logged.setdefault(row_id, ({}, version, now_ms))[0]
        fields[col] = value

    @property
    def log(self) -> list[tuple[Any, ...]]:
        """One log row per row written: its fields, how many, the version, when."""
        return [
            (row_id, _dumps(fields), len(fields), version, at)  # type: ignore[arg-type]
            for row_id, (fields, version, at) in self._logged.items()
        ]


def _last_seen_ms(op: ProfileUpdate) -> int:
    stamp = op.computed.get("last_seen")
    return iso_ms(stamp) if isinstance(stamp, str) else 0


def open_table(dest: Destination, region: str = "US", base: Path | None = None) -> TableDestination:
    """The destination's database, connected (SQLite: the file, relative to ``base``;
    PostgreSQL: the DSN in ``url``)."""
    if dest.kind == "postgres":
        import psycopg  # only a PostgreSQL destination needs it

        def pg() -> Any:
            return psycopg.connect(dest.url, autocommit=False)

        return TableDestination(dest, pg, dialect="postgres", region=region)
    path = Path(dest.url.removeprefix("sqlite:///").removeprefix("sqlite://"))
    if base is not None and not path.is_absolute():
        path = base / path
    path.parent.mkdir(parents=True, exist_ok=True)

    def lite() -> sqlite3.Connection:
        conn = sqlite3.connect(path, isolation_level=None, timeout=30.0)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    return TableDestination(dest, lite, dialect="sqlite", region=region)
