'use strict';
// An application's side of the credits extension, with node-postgres (pg).
//
// Every function takes a connected pg.Client that is not inside a transaction:
// each one runs its own short transaction, so what it charges is committed or
// rolled back together with the application's own writes.
//
// Types as pg returns them: bigint ids (ledger entries, holds, events) are
// strings, so 64-bit values stay exact; numeric amounts are strings too and
// are turned into Numbers here only for display; timestamptz is a Date.

const { EventEmitter } = require('node:events');

const INSUFFICIENT_CREDITS = 'UC001'; // DETAIL: the refusing window's facts, as JSON
const HOLD_NOT_ACTIVE = 'UC008'; // settled/released/expired; DETAIL: the hold's state, as JSON
const FEATURE = 'agent';

const SCHEMA = `
CREATE SCHEMA IF NOT EXISTS app;
CREATE TABLE IF NOT EXISTS app.app_requests (
    request_id text PRIMARY KEY,
    account_id text NOT NULL,
    prompt     text NOT NULL,
    entry_id   bigint  -- the ledger entry that paid for it: what Regenerate refunds
);`;

// A pg config from a libpq DSN ("host=... port=... user=... dbname=...",
// values optionally 'quoted') or a postgres:// URL, so both tools can share
// one CREDITS_EXAMPLES_DSN.
function clientConfig(dsn) {
  if (/^postgres(ql)?:\/\//.test(dsn)) return { connectionString: dsn };
  const names = { host: 'host', port: 'port', user: 'user', dbname: 'database', password: 'password' };
  const config = {};
  for (const [, key, quoted, plain] of dsn.matchAll(/(\w+)\s*=\s*(?:'((?:[^'\\]|\\.)*)'|(\S+))/g)) {
    if (!(key in names)) throw new Error(`DSN keyword not supported by this example: ${key}`);
    config[names[key]] = quoted !== undefined ? quoted.replace(/\\(.)/g, '$1') : plain;
  }
  if (config.port !== undefined) config.port = Number(config.port);
  return config;
}

async function createSchema(client) {
  await client.query(SCHEMA); // (a simple query: several statements are allowed)
}

// Runs fn inside BEGIN ... COMMIT; any error rolls everything back and is rethrown.
async function inTransaction(client, fn) {
  await client.query('BEGIN');
  try {
    const result = await fn();
    await client.query('COMMIT');
    return result;
  } catch (err) {
    await client.query('ROLLBACK');
    throw err;
  }
}

// The structured refusal if err is UC001, else null. The DETAIL is JSON, so no
// need to parse the message's prose; the HINT says the same reset in words.
function outOfCredits(err) {
  if (err.code !== INSUFFICIENT_CREDITS || !err.detail) return null;
  const facts = JSON.parse(err.detail);
  return {
    ok: false,
    window: facts.window, // 'daily' or 'monthly'
    available: facts.available,
    needed: facts.needed,
    // ISO 8601, UTC; absent when a settle is refused by a window that has already closed
    resetsAt: facts.resets_at ? new Date(facts.resets_at) : null,
  };
}

// Rethrows anything but UC001, which becomes the refusal to show the user.
function refusalOrThrow(err) {
  const refusal = outOfCredits(err);
  if (refusal === null) throw err;
  return refusal;
}

// "Generate with the AI agent": record the request and charge it, atomically.
// Safe to retry with the same requestId: the insert does nothing the second
// time and the debit, keyed by the request id, returns the first entry without
// charging again. (The slow model call itself belongs outside this transaction,
// which holds the account's row lock until it ends; for work whose cost is
// known only at the end, see runAgent.)
async function generate(client, { accountId, requestId, prompt, quantity = 1 }) {
  try {
    return await inTransaction(client, async () => {
      // The application's own work...
      await client.query(
        `INSERT INTO app.app_requests (request_id, account_id, prompt) VALUES ($1, $2, $3)
         ON CONFLICT (request_id) DO NOTHING`,
        [requestId, accountId, prompt],
      );
      // ...and the charge, in the same transaction. A JS number goes as an
      // untyped parameter, which PostgreSQL resolves to the double precision
      // overload.
      const debit = await client.query('SELECT credits.debit($1, $2, $3, $4) AS entry_id', [
        accountId,
        FEATURE,
        quantity,
        requestId,
      ]);
      const entryId = debit.rows[0].entry_id;
      await client.query('UPDATE app.app_requests SET entry_id = $1 WHERE request_id = $2', [entryId, requestId]);
      // What is left after this charge (seen from inside the transaction).
      const left = await client.query('SELECT available, limiting_window, resets_at FROM credits.check($1, $2, 1)', [
        accountId,
        FEATURE,
      ]);
      const { available, limiting_window: window, resets_at: resetsAt } = left.rows[0];
      return { ok: true, entryId, available: Number(available), window, resetsAt };
    });
  } catch (err) {
    // inTransaction rolled back: the app_requests row is gone too.
    return refusalOrThrow(err);
  }
}

// The user did not like the answer: give the request's credits back. Returns
// the refund's ledger entry; a retry (same idempotency key) returns the same
// entry and refunds once. The key is prefixed so it can never be mistaken for
// the debit's key.
async function regenerate(client, requestId) {
  return inTransaction(client, async () => {
    const request = await client.query('SELECT entry_id FROM app.app_requests WHERE request_id = $1', [requestId]);
    if (request.rowCount !== 1) throw new Error(`unknown request ${requestId}`);
    const refund = await client.query(
      // NULL amount: all that is left of the debit.
      "SELECT credits.refund($1, NULL, 'regenerate', $2) AS refund_id",
      [request.rows[0].entry_id, `regenerate:${requestId}`],
    );
    return refund.rows[0].refund_id;
  });
}

// Hold `estimate` credits for up to 15 minutes: { ok: true, holdId } or the refusal.
async function reserve(client, accountId, estimate, key) {
  try {
    const { rows } = await client.query("SELECT credits.reserve($1, $2, $3, interval '15 minutes', $4) AS hold_id", [
      accountId,
      FEATURE,
      estimate,
      key,
    ]);
    return { ok: true, holdId: rows[0].hold_id };
  } catch (err) {
    return refusalOrThrow(err);
  }
}

// Charge the actual cost and free the rest of the hold; the debit's entry id.
// Settling again for the same amount returns the same id; another amount
// throws UC008 (HOLD_NOT_ACTIVE). settle(hold, 0) is a release.
async function settle(client, holdId, actual) {
  const { rows } = await client.query('SELECT credits.settle($1, $2) AS entry_id', [holdId, actual]);
  return rows[0].entry_id;
}

// Free the whole hold, charging nothing.
async function release(client, holdId) {
  await client.query('SELECT credits.release($1)', [holdId]);
}

// An agent run whose cost is known only at the end. The hold is committed
// before the run, so no transaction (and no lock) stays open while the agent
// works, and the estimate is unavailable to concurrent requests meanwhile.
// work() resolves to the actual cost; if it throws, the hold is released and
// the error propagates. Resolves to { ok: true, entryId } or the refusal.
async function runAgent(client, { accountId, runId, estimate, work }) {
  const hold = await reserve(client, accountId, estimate, `agent-run:${runId}`);
  if (!hold.ok) return hold;
  let actual;
  try {
    actual = await work();
  } catch (err) {
    await release(client, hold.holdId);
    throw err;
  }
  // (More than the estimate is charged if available; if not, settle throws
  // UC001 and the hold stays open until it is settled again or expires.)
  return { ok: true, entryId: await settle(client, hold.holdId, actual) };
}

// LISTEN credits as a wake-up call, and read the feed itself with
// credits.read_events. A notification is only a hint: anyone who can connect
// may pg_notify('credits', ...), and a NOTIFY sent while nobody listened is
// lost. So the listener emits 'event' only for what read_events returns,
// following its cursor: every committed event exactly once and in order,
// whatever order their transactions committed in, behind a privilege
// (credits_app may call it). Persist `cursor` to resume after a restart; a
// notification that brings nothing new (a forged one) is emitted as 'ignored'.
class EventListener extends EventEmitter {
  constructor(listenClient, reader, cursor = '0') {
    super();
    this.client = listenClient;
    this.reader = reader; // not used for transactions meanwhile
    this.cursor = cursor; // a bigint, as a string
    this.reading = Promise.resolve(); // one catch-up at a time, in order
  }

  async start() {
    this.client.on('notification', (msg) => {
      if (msg.channel !== 'credits') return;
      this.reading = this.reading.then(async () => {
        let events = await this.catchUp();
        if (events.length === 0) {
          // (an event still in flight holds the feed back for a moment)
          await new Promise((resolve) => setTimeout(resolve, 100));
          events = await this.catchUp();
        }
        if (events.length === 0) this.emit('ignored', msg.payload);
        for (const event of events) this.emit('event', event);
      }).catch((err) => this.emit('error', err));
    });
    await this.client.query('LISTEN credits');
  }

  // The events committed after the cursor (and the cursor moved past them).
  async catchUp() {
    const events = [];
    for (;;) {
      const { rows } = await this.reader.query(
        'SELECT "cursor", event_id, kind, account_id, "window", at, payload FROM credits.read_events($1, 100)',
        [this.cursor],
      );
      if (rows.length === 0) return events;
      this.cursor = rows[rows.length - 1].cursor;
      events.push(...rows);
    }
  }

  // The first event for which predicate is true, or null after timeoutMs.
  waitFor(predicate, timeoutMs) {
    return new Promise((resolve) => {
      const onEvent = (event) => predicate(event) && done(event);
      const timer = setTimeout(() => done(null), timeoutMs);
      const done = (event) => {
        clearTimeout(timer);
        this.off('event', onEvent);
        resolve(event);
      };
      this.on('event', onEvent);
    });
  }
}

module.exports = {
  INSUFFICIENT_CREDITS,
  HOLD_NOT_ACTIVE,
  clientConfig,
  createSchema,
  generate,
  regenerate,
  reserve,
  settle,
  release,
  runAgent,
  outOfCredits,
  EventListener,
};
