'use strict';
// Exercise credits_app against a real server: node test_examples.js
// Needs CREDITS_EXAMPLES_DSN (a libpq DSN or a postgres:// URL, superuser,
// credits installed). Prints one line per scenario; exits 1 with a message on
// the first failure.

const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const pg = require('pg');
const app = require('./credits_app');

// Every session sees this instant as "now" (superuser-only setting), so the
// windows and their resets are the same whenever the test runs.
const NOW = '2031-03-10 12:00:00+00';
const TOMORROW = new Date('2031-03-11T00:00:00Z');
const RUN = `js${process.pid}_${crypto.randomBytes(3).toString('hex')}`; // unique names per run

const clients = [];

async function connect() {
  const client = new pg.Client(app.clientConfig(process.env.CREDITS_EXAMPLES_DSN));
  await client.connect();
  clients.push(client);
  // (SET takes no parameters: set_config is the parameterised form)
  await client.query("SELECT set_config('credits.clock_override', $1, false)", [NOW]);
  return client;
}

async function newAccount(client, name, plan) {
  const accountId = `${RUN}_${name}`;
  await client.query('SELECT credits.subscribe($1, $2)', [accountId, plan]);
  return accountId;
}

// Amounts as Numbers (pg returns numeric as strings).
async function balance(client, accountId) {
  const { rows } = await client.query('SELECT daily_used, monthly_used, reserved, available FROM credits.balance($1)', [
    accountId,
  ]);
  return Object.fromEntries(Object.entries(rows[0]).map(([k, v]) => [k, Number(v)]));
}

async function requestRows(client, requestId) {
  const { rows } = await client.query('SELECT count(*)::int AS n FROM app.app_requests WHERE request_id = $1', [
    requestId,
  ]);
  return rows[0].n;
}

// The result of a call that must not have been refused.
function granted(result) {
  assert.ok(result.ok, `refused: ${JSON.stringify(result)}`);
  return result;
}

const utc = (date) => date.toISOString().slice(0, 16).replace('T', ' ') + 'Z';

async function generateRetryAndRegenerate(db) {
  const accountId = await newAccount(db, 'gen', 'free');
  const requestId = `${RUN}_req1`;
  const request = { accountId, requestId, prompt: 'draw a cat', quantity: 1.5 }; // a fractional quantity
  const first = granted(await app.generate(db, request));
  assert.equal(first.available, 8.5, '8.5 left today expected');
  assert.equal(first.window, 'daily');
  assert.deepEqual(first.resetsAt, TOMORROW);

  // The client retries (timeout, double click): charged once, one row.
  const retry = granted(await app.generate(db, request));
  assert.equal(retry.entryId, first.entryId, 'a retry must return the same ledger entry');
  assert.equal((await balance(db, accountId)).daily_used, 1.5, 'the retry charged again');
  assert.equal(await requestRows(db, requestId), 1, 'one app_requests row expected');

  // Regenerate: refunded once, however often it is retried.
  const refundId = await app.regenerate(db, requestId);
  assert.equal(await app.regenerate(db, requestId), refundId, 'a regenerate retry must return the same refund');
  assert.equal((await balance(db, accountId)).daily_used, 0, 'the refund must give the 1.5 credits back');
  return (
    `generate: charged entry ${first.entryId} once over 2 tries, ${first.available} left until ` +
    `${utc(first.resetsAt)}; regenerate refunded it once (entry ${refundId})`
  );
}

async function outOfCreditsRollsBack(db) {
  const accountId = await newAccount(db, 'broke', 'free');
  granted(await app.generate(db, { accountId, requestId: `${RUN}_big`, prompt: 'essay', quantity: 9 }));
  const requestId = `${RUN}_denied`;
  const refused = await app.generate(db, { accountId, requestId, prompt: 'another essay', quantity: 2 });
  assert.deepEqual(refused, { ok: false, window: 'daily', available: 1, needed: 2, resetsAt: TOMORROW });
  // The transaction rolled back: neither the app's row nor a charge.
  assert.equal(await requestRows(db, requestId), 0, "the refused request's app row must be rolled back");
  assert.equal((await balance(db, accountId)).daily_used, 9, 'the refused request must charge nothing');
  return (
    `out of credits: ${refused.window} window has ${refused.available}, needs ${refused.needed}, ` +
    `resets ${utc(refused.resetsAt)}; app row rolled back`
  );
}

async function agentRun(db) {
  const accountId = await newAccount(db, 'agent', 'pro');

  const run = granted(
    await app.runAgent(db, { accountId, runId: `${RUN}_run1`, estimate: 10, work: async () => 2.75 }),
  );
  const after = await balance(db, accountId);
  assert.equal(after.monthly_used, 2.75, '2.75 charged expected');
  assert.equal(after.reserved, 0, 'nothing held expected');

  // Settle is idempotent for the same amount, UC008 for another one.
  const { holdId } = granted(await app.reserve(db, accountId, 5, `${RUN}_run2`));
  const settled = await app.settle(db, holdId, 1.25);
  assert.equal(await app.settle(db, holdId, 1.25), settled, 'settling again must return the same entry');
  await assert.rejects(app.settle(db, holdId, 2), { code: app.HOLD_NOT_ACTIVE });

  // A failed run is released: nothing charged, nothing held.
  const crash = async () => {
    throw new Error('model timed out');
  };
  await assert.rejects(app.runAgent(db, { accountId, runId: `${RUN}_run3`, estimate: 20, work: crash }), /timed out/);
  // settle(hold, 0) is a release too.
  const zero = granted(await app.reserve(db, accountId, 3, `${RUN}_run4`));
  await app.settle(db, zero.holdId, 0);
  const final = await balance(db, accountId);
  assert.equal(final.monthly_used, 4, 'only 2.75 + 1.25 charged expected');
  assert.equal(final.reserved, 0, 'nothing held expected');
  return `agent run: held 10, settled 2.75 (entry ${run.entryId}); re-settle same id, other amount UC008; failed run released`;
}

async function listener(db) {
  const accountId = await newAccount(db, 'listen', 'free');
  // A reader of its own: the listener's look-ups must not land in someone's transaction.
  const reader = await connect();
  // Start at the end of the feed: the events from now on.
  const { rows } = await reader.query('SELECT coalesce(max("cursor"), 0) AS c FROM credits.read_events(0, 1000)');
  const events = new app.EventListener(await connect(), reader, rows[0].c);
  await events.start();
  const received = events.waitFor((event) => event.account_id === accountId, 5000);

  // Anyone may NOTIFY: a forged event must be ignored.
  const forged = { kind: 'exhausted', account_id: accountId, window: 'daily', event_id: 999999999999 };
  await db.query("SELECT pg_notify('credits', $1)", [JSON.stringify(forged)]);
  // Run the account out, each try_debit committed on its own (try_debit
  // returns NULL instead of raising UC001).
  const spender = await connect();
  let spent = 0;
  while ((await spender.query("SELECT credits.try_debit($1, 'agent', 1) AS e", [accountId])).rows[0].e !== null) {
    spent += 1;
    assert.ok(spent <= 10, 'Free allows 10 a day');
  }
  assert.equal(spent, 10, '10 debits expected before running out');

  const event = await received;
  assert.ok(event, 'no event for the account received within 5 s');
  assert.equal(event.kind, 'exhausted');
  assert.equal(event.window, 'daily');
  assert.equal(event.payload.window_key, '2031-03-10');
  assert.notEqual(event.event_id, '999999999999', 'the forged event must never come out of the feed');
  await events.reading; // (the notifications still being read, before the clients close)
  return `listener: event ${event.event_id} ${event.kind} (${event.window} ${event.payload.window_key}) read from the feed at cursor ${event.cursor}; the forged notification brought nothing`;
}

const TESTS = [generateRetryAndRegenerate, outOfCreditsRollsBack, agentRun, listener];

async function main() {
  try {
    const db = await connect();
    await app.createSchema(db);
    for (const test of TESTS) {
      try {
        console.log(`  ok  ${await test(db)}`);
      } catch (err) {
        // report and stop: later scenarios may depend on the state
        console.error(`  FAIL ${test.name}: ${err.stack || err}`);
        return 1;
      }
    }
    console.log(`node examples: ${TESTS.length} scenarios passed`);
    return 0;
  } finally {
    await Promise.all(clients.map((c) => c.end()));
  }
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (err) => {
    console.error(`  FAIL: ${err.stack || err}`);
    process.exitCode = 1;
  },
);
