"""Exercise credits_app against a real server: python test_examples.py

Needs CREDITS_EXAMPLES_DSN (a libpq DSN, superuser, credits installed).
Prints one line per scenario; exits 1 with a message on the first failure.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

import psycopg

import credits_app as app

# Every session sees this instant as "now" (superuser-only setting), so the
# windows and their resets are the same whenever the test runs.
NOW = "2031-03-10 12:00:00+00"
TOMORROW = datetime(2031, 3, 11, tzinfo=UTC)
RUN = f"py{os.getpid()}_{secrets.token_hex(3)}"  # unique names per run
T = TypeVar("T")


def connect() -> psycopg.Connection:
    conn = psycopg.connect(os.environ["CREDITS_EXAMPLES_DSN"], autocommit=True)
    # (SET takes no parameters: set_config is the parameterised form)
    conn.execute("SELECT set_config('credits.clock_override', %s, false)", (NOW,))
    return conn


def new_account(conn: psycopg.Connection, name: str, plan: str) -> str:
    account_id = f"{RUN}_{name}"
    conn.execute("SELECT credits.subscribe(%s, %s)", (account_id, plan))
    return account_id


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def granted(result: T | app.OutOfCredits) -> T:
    """The result of a call that must not have been refused."""
    if isinstance(result, app.OutOfCredits):
        raise AssertionError(f"refused: {result}")  # noqa: TRY004 (a failed test, not a type error)
    return result


def one(cur: psycopg.Cursor[tuple[Any, ...]]) -> tuple[Any, ...]:
    row = cur.fetchone()
    if row is None:
        raise AssertionError("a row expected")
    return row


def balance(conn: psycopg.Connection, account_id: str) -> dict[str, Decimal]:
    cur = conn.execute("SELECT daily_used, monthly_used, reserved, available FROM credits.balance(%s)", (account_id,))
    names = [c.name for c in cur.description or []]
    return dict(zip(names, one(cur), strict=True))


def request_rows(conn: psycopg.Connection, request_id: str) -> int:
    cur = conn.execute("SELECT count(*) FROM app.app_requests WHERE request_id = %s", (request_id,))
    return int(one(cur)[0])


def test_generate_retry_and_regenerate(conn: psycopg.Connection) -> str:
    account = new_account(conn, "gen", "free")
    request = f"{RUN}_req1"
    first = granted(app.generate(conn, account, request, "draw a cat", quantity=1.5))  # a float quantity
    expect(first.available == Decimal("8.5"), f"8.5 left today expected, got {first.available}")
    expect(first.window == "daily" and first.resets_at == TOMORROW, f"daily reset expected: {first}")

    # The client retries (timeout, double click): charged once, one row.
    retry = granted(app.generate(conn, account, request, "draw a cat", quantity=1.5))
    expect(retry.entry_id == first.entry_id, f"retry must return entry {first.entry_id}, got {retry}")
    expect(balance(conn, account)["daily_used"] == Decimal("1.5"), "the retry charged again")
    expect(request_rows(conn, request) == 1, "one app_requests row expected")

    # Regenerate: refunded once, however often it is retried.
    refund = app.regenerate(conn, request)
    expect(app.regenerate(conn, request) == refund, "regenerate retry must return the same refund entry")
    expect(balance(conn, account)["daily_used"] == 0, "the refund must give the 1.5 credits back")
    return (
        f"generate: charged entry {first.entry_id} once over 2 tries, {first.available} left until "
        f"{first.resets_at:%Y-%m-%d %H:%MZ}; regenerate refunded it once (entry {refund})"
    )


def test_out_of_credits_rolls_back(conn: psycopg.Connection) -> str:
    account = new_account(conn, "broke", "free")
    granted(app.generate(conn, account, f"{RUN}_big", "essay", quantity=9))
    request = f"{RUN}_denied"
    refused = app.generate(conn, account, request, "another essay", quantity=2)
    expected = app.OutOfCredits(window="daily", available=Decimal(1), needed=Decimal(2), resets_at=TOMORROW)
    if refused != expected:
        raise AssertionError(f"{expected} expected, got {refused}")
    # The transaction rolled back: neither the app's row nor a charge.
    expect(request_rows(conn, request) == 0, "the refused request's app row must be rolled back")
    expect(balance(conn, account)["daily_used"] == 9, "the refused request must charge nothing")
    return (
        f"out of credits: {expected.window} window has {expected.available}, needs {expected.needed}, "
        f"resets {expected.resets_at:%Y-%m-%d %H:%MZ}; app row rolled back"
    )


def test_agent_run(conn: psycopg.Connection) -> str:
    account = new_account(conn, "agent", "pro")

    entry = granted(app.run_agent(conn, account, f"{RUN}_run1", estimate=10, work=lambda: 2.75))
    after = balance(conn, account)
    expect(
        after["monthly_used"] == Decimal("2.75") and after["reserved"] == 0,
        f"2.75 charged and nothing held expected, got {after}",
    )

    # Settle is idempotent for the same amount, UC008 for another one.
    hold = granted(app.reserve(conn, account, 5.0, key=f"{RUN}_run2"))
    settled = app.settle(conn, hold, 1.25)
    expect(app.settle(conn, hold, 1.25) == settled, "settling again must return the same entry")
    try:
        app.settle(conn, hold, 2)
        raise AssertionError("settling for another amount must fail")
    except psycopg.Error as err:
        expect(err.sqlstate == app.HOLD_NOT_ACTIVE, f"UC008 expected, got {err.sqlstate}: {err}")

    # A failed run is released: nothing charged, nothing held.
    def crash() -> float:
        raise RuntimeError("model timed out")

    try:
        app.run_agent(conn, account, f"{RUN}_run3", estimate=20, work=crash)
        raise AssertionError("the agent's error must propagate")
    except RuntimeError:
        pass
    # settle(hold, 0) is a release too.
    zero = granted(app.reserve(conn, account, 3.0, key=f"{RUN}_run4"))
    app.settle(conn, zero, 0)
    final = balance(conn, account)
    expect(
        final["monthly_used"] == Decimal("4.00") and final["reserved"] == 0,
        f"only 2.75 + 1.25 charged expected, got {final}",
    )
    return (
        f"agent run: held 10, settled 2.75 (entry {entry}); re-settle same id, other amount UC008; failed run released"
    )


def test_listener(conn: psycopg.Connection) -> str:
    account = new_account(conn, "listen", "free")
    with connect() as listen_conn:
        listener = app.EventListener(listen_conn, reader=conn)
        # Anyone may NOTIFY: a forged event must be ignored.
        conn.execute(
            "SELECT pg_notify('credits', %s)",
            (json.dumps({"kind": "exhausted", "account_id": account, "window": "daily", "event_id": 999999999999}),),
        )
        # Run the account out, each try_debit committed on its own
        # (try_debit returns NULL instead of raising UC001).
        with connect() as spender:
            spent = 0
            while one(spender.execute("SELECT credits.try_debit(%s, 'agent', 1)", (account,)))[0] is not None:
                spent += 1
                expect(spent <= 10, "Free allows 10 a day")
        expect(spent == 10, f"10 debits expected before running out, got {spent}")

        # Every event the feed has, until a second passes without a notification.
        seen = [e for e in listener.events(timeout=1) if e["account_id"] == account]
    expect(len(seen) == 1, f"exactly one event for the account expected, got {seen}")
    event = seen[0]
    expect(
        event["kind"] == "exhausted" and event["window"] == "daily" and event["payload"]["window_key"] == "2031-03-10",
        f"a daily exhausted event expected, got {event}",
    )
    expect(event["event_id"] != 999999999999, "the forged event must never come out of the feed")
    return (
        f"listener: event {event['event_id']} {event['kind']} ({event['window']} {event['payload']['window_key']})"
        f" read from the feed at cursor {event['cursor']}; the forged notification brought nothing"
    )


TESTS: list[Callable[[psycopg.Connection], str]] = [
    test_generate_retry_and_regenerate,
    test_out_of_credits_rolls_back,
    test_agent_run,
    test_listener,
]


def main() -> int:
    with connect() as conn:
        app.create_schema(conn)
        for test in TESTS:
            try:
                print(f"  ok  {test(conn)}")
            except Exception as err:  # noqa: BLE001 (report and stop: later scenarios may depend on the state)
                print(f"  FAIL {test.__name__}: {type(err).__name__}: {err}", file=sys.stderr)
                return 1
    print(f"python examples: {len(TESTS)} scenarios passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
