"""An application's side of the credits extension, with psycopg 3.

Every function takes a connection opened with ``autocommit=True``: each one
runs its own short transaction (``conn.transaction()``), so what it charges is
committed or rolled back together with the application's own writes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.rows import dict_row

INSUFFICIENT_CREDITS = "UC001"  # DETAIL: the refusing window's facts, as JSON
HOLD_NOT_ACTIVE = "UC008"  # settled/released/expired; DETAIL: the hold's state, as JSON

FEATURE = "agent"

SCHEMA = """
CREATE SCHEMA IF NOT EXISTS app;
CREATE TABLE IF NOT EXISTS app.app_requests (
    request_id text PRIMARY KEY,
    account_id text NOT NULL,
    prompt     text NOT NULL,
    entry_id   bigint  -- the ledger entry that paid for it: what Regenerate refunds
);
"""


def create_schema(conn: psycopg.Connection) -> None:
    """The application's own table, in its own schema."""
    with conn.transaction():
        conn.execute(SCHEMA)


@dataclass(frozen=True)
class Charged:
    """A successful request: what it cost and what the user has left."""

    entry_id: int  # the debit's ledger entry
    available: Decimal  # credits left in the tightest window
    window: str  # 'daily' or 'monthly': the window that limits next
    resets_at: datetime
    ok: bool = True


@dataclass(frozen=True)
class OutOfCredits:
    """A refused request, from UC001's DETAIL (JSON), ready to show the user."""

    window: str
    available: Decimal
    needed: Decimal
    resets_at: datetime | None  # None: a settle refused by a window that has already closed
    ok: bool = False


def out_of_credits(err: psycopg.Error) -> OutOfCredits | None:
    """The structured refusal if `err` is UC001, else None.

    The DETAIL is JSON (no need to parse the message prose); amounts are read as
    Decimal so 0.1 + 0.2 style float noise never reaches the user.
    """
    if err.sqlstate != INSUFFICIENT_CREDITS or not err.diag.message_detail:
        return None
    facts = json.loads(err.diag.message_detail, parse_float=Decimal, parse_int=Decimal)
    return OutOfCredits(
        window=facts["window"],
        available=facts["available"],
        needed=facts["needed"],
        # ISO 8601 in UTC with a "Z", which fromisoformat reads since 3.11
        resets_at=datetime.fromisoformat(facts["resets_at"]) if facts["resets_at"] else None,
    )


def generate(
    conn: psycopg.Connection, account_id: str, request_id: str, prompt: str, quantity: float = 1
) -> Charged | OutOfCredits:
    """Handle "generate with the AI agent": record the request and charge it, atomically.

    Safe to retry with the same request id: the insert does nothing the second
    time and the debit, keyed by the request id, returns the first entry
    without charging again. (The slow model call itself belongs outside this
    transaction, which holds the account's row lock until it ends; for work
    whose cost is known only at the end, see run_agent.)
    """
    try:
        with conn.transaction():
            # The application's own work...
            conn.execute(
                "INSERT INTO app.app_requests (request_id, account_id, prompt) VALUES (%s, %s, %s)"
                " ON CONFLICT (request_id) DO NOTHING",
                (request_id, account_id, prompt),
            )
            # ...and the charge, in the same transaction: a Python float is sent
            # as double precision, which has its own overload.
            (entry_id,) = _one(
                conn, "SELECT credits.debit(%s, %s, %s, %s)", (account_id, FEATURE, quantity, request_id)
            )
            conn.execute("UPDATE app.app_requests SET entry_id = %s WHERE request_id = %s", (entry_id, request_id))
            # What is left after this charge (seen from inside the transaction).
            available, window, resets_at = _one(
                conn,
                "SELECT available, limiting_window, resets_at FROM credits.check(%s, %s, 1)",
                (account_id, FEATURE),
            )
    except psycopg.Error as err:
        # Leaving the `with` block on an exception rolled everything back,
        # the app_requests row included.
        refusal = out_of_credits(err)
        if refusal is None:
            raise
        return refusal
    return Charged(entry_id=int(entry_id), available=available, window=window, resets_at=resets_at)


def regenerate(conn: psycopg.Connection, request_id: str) -> int:
    """The user did not like the answer: give the request's credits back.

    Returns the refund's ledger entry; a retry (same idempotency key) returns
    the same entry and refunds once. The key is prefixed so it can never be
    mistaken for the debit's key.
    """
    with conn.transaction():
        (entry_id,) = _one(conn, "SELECT entry_id FROM app.app_requests WHERE request_id = %s", (request_id,))
        (refund_id,) = _one(
            conn,
            "SELECT credits.refund(%s, NULL, 'regenerate', %s)",  # NULL amount: all that is left of it
            (entry_id, f"regenerate:{request_id}"),
        )
    return int(refund_id)


def reserve(conn: psycopg.Connection, account_id: str, estimate: float, key: str) -> int | OutOfCredits:
    """Hold `estimate` credits for up to 15 minutes; the hold id, or the refusal."""
    try:
        with conn.transaction():
            (hold_id,) = _one(
                conn,
                "SELECT credits.reserve(%s, %s, %s, interval '15 minutes', %s)",
                (account_id, FEATURE, estimate, key),
            )
    except psycopg.Error as err:
        refusal = out_of_credits(err)
        if refusal is None:
            raise
        return refusal
    return int(hold_id)


def settle(conn: psycopg.Connection, hold_id: int, actual: float) -> int:
    """Charge the actual cost and free the rest of the hold; the debit's entry id.

    Settling again for the same amount returns the same id; for another amount
    it raises UC008 (HOLD_NOT_ACTIVE). settle(hold, 0) is a release.
    """
    with conn.transaction():
        (entry_id,) = _one(conn, "SELECT credits.settle(%s, %s)", (hold_id, actual))
    return int(entry_id)


def release(conn: psycopg.Connection, hold_id: int) -> None:
    """Free the whole hold, charging nothing."""
    with conn.transaction():
        conn.execute("SELECT credits.release(%s)", (hold_id,))


def run_agent(
    conn: psycopg.Connection, account_id: str, run_id: str, estimate: float, work: Callable[[], float]
) -> int | OutOfCredits:
    """An agent run whose cost is known only at the end.

    The hold is committed before the run, so no transaction (and no lock) stays
    open while the agent works, and the estimate is unavailable to concurrent
    requests meanwhile. `work` returns the actual cost; if it raises, the hold
    is released and the error propagates. Returns the debit's entry id.
    """
    hold = reserve(conn, account_id, estimate, key=f"agent-run:{run_id}")
    if isinstance(hold, OutOfCredits):
        return hold
    try:
        actual = work()
    except BaseException:
        release(conn, hold)
        raise
    # (More than the estimate is charged if available; if not, settle raises
    # UC001 and the hold stays open until it is settled again or expires.)
    return settle(conn, hold, actual)


class EventListener:
    """LISTEN credits as a wake-up call, and read the feed itself with credits.read_events.

    A notification is only a hint: anyone who can connect may
    pg_notify('credits', ...), and a NOTIFY sent while nobody listened is
    lost. So the listener acts only on what read_events returns, following
    its cursor: every committed event exactly once and in order, whatever
    order the transactions that wrote them committed in, behind a privilege
    (credits_app may call it). Persist `cursor` to resume after a restart;
    a notification that brings nothing new (a forged one) is set aside.
    """

    def __init__(self, listen_conn: psycopg.Connection, reader: psycopg.Connection, cursor: int = 0) -> None:
        self.conn = listen_conn
        self.reader = reader
        self.cursor = cursor
        self.ignored: list[str] = []  # notifications after which the feed had nothing new
        listen_conn.execute("LISTEN credits")

    def catch_up(self) -> list[dict[str, Any]]:
        """The events committed after the cursor (and the cursor moved past them)."""
        events: list[dict[str, Any]] = []
        while True:
            with self.reader.cursor(row_factory=dict_row) as cur:
                cur.execute(
                    'SELECT "cursor", event_id, kind, account_id, "window", at, payload'
                    " FROM credits.read_events(%s, 100)",
                    (self.cursor,),
                )
                page = cur.fetchall()
            if not page:
                return events
            self.cursor = page[-1]["cursor"]
            events.extend(page)

    def events(self, timeout: float) -> Iterator[dict[str, Any]]:
        """Events as they are committed, until `timeout` seconds pass without a notification."""
        yield from self.catch_up()  # what happened while nobody listened
        for note in self.conn.notifies(timeout=timeout):
            new = self.catch_up()
            if not new:
                # (an event still in flight holds the feed back for a moment)
                time.sleep(0.1)
                new = self.catch_up()
            if not new:
                self.ignored.append(note.payload)
            yield from new


def _one(conn: psycopg.Connection, query: str, params: tuple[Any, ...]) -> tuple[Any, ...]:
    row = conn.execute(query, params).fetchone()
    if row is None:
        raise LookupError(f"no row for {params!r}")
    return row
