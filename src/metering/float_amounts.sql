-- Amounts and quantities passed as double precision (a Python float, a
-- JavaScript number; an untyped string resolves here too, as PostgreSQL
-- prefers double precision among numeric types): without these a call
-- fails with 42883 ("function does not exist"), as there is no implicit
-- cast from double precision to numeric. Each converts the value
-- (credits_internal._from_float8: exact below 10^11 or whole, UC004 for a
-- fraction on a larger value) and calls the numeric form, which checks it
-- like any other amount (UC004 beyond 4 decimal places, NaN, infinities).
-- Each is inlined into the calling statement, so a debit this way takes
-- the same fast path. The quantity has no default here, so a call without
-- one is not ambiguous.

CREATE FUNCTION debit(account_id text, feature text, quantity double precision,
                      idempotency_key text DEFAULT NULL, metadata jsonb DEFAULT NULL)
RETURNS bigint LANGUAGE sql
RETURN credits.debit(account_id, feature, credits_internal._from_float8(quantity, 'quantity'),
                     idempotency_key, metadata);

CREATE FUNCTION try_debit(account_id text, feature text, quantity double precision,
                          idempotency_key text DEFAULT NULL, metadata jsonb DEFAULT NULL)
RETURNS bigint LANGUAGE sql
RETURN credits.try_debit(account_id, feature, credits_internal._from_float8(quantity, 'quantity'),
                         idempotency_key, metadata);

-- (not inlined, for its SET: on Citus, `SELECT * FROM` this function
-- inlined into a delegated call crashes the coordinator (Citus 13.2); not
-- inlined, it is delegated itself)
CREATE FUNCTION "check"(account_id text, feature text, quantity double precision)
RETURNS TABLE (allowed boolean, cost numeric, available numeric, limiting_window text, resets_at timestamptz)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT * FROM credits."check"(account_id, feature, credits_internal._from_float8(quantity, 'quantity'));
END;

CREATE FUNCTION reserve(account_id text, feature text, amount double precision,
                        ttl interval DEFAULT '15 minutes', idempotency_key text DEFAULT NULL)
RETURNS bigint LANGUAGE sql
RETURN credits.reserve(account_id, feature, credits_internal._from_float8(amount, 'amount'), ttl, idempotency_key);

CREATE FUNCTION try_reserve(account_id text, feature text, amount double precision,
                            ttl interval DEFAULT '15 minutes', idempotency_key text DEFAULT NULL)
RETURNS bigint LANGUAGE sql
RETURN credits.try_reserve(account_id, feature, credits_internal._from_float8(amount, 'amount'), ttl,
                           idempotency_key);

CREATE FUNCTION settle(hold_id bigint, amount double precision)
RETURNS bigint LANGUAGE sql
RETURN credits.settle(hold_id, credits_internal._from_float8(amount, 'amount'));

CREATE FUNCTION settle_for(account_id text, hold_id bigint, amount double precision)
RETURNS bigint LANGUAGE sql
RETURN credits.settle_for(account_id, hold_id, credits_internal._from_float8(amount, 'amount'));

CREATE FUNCTION refund(entry_id bigint, amount double precision, reason text DEFAULT NULL,
                       idempotency_key text DEFAULT NULL)
RETURNS bigint LANGUAGE sql
RETURN credits.refund(entry_id, credits_internal._from_float8(amount, 'amount'), reason, idempotency_key);

CREATE FUNCTION refund_for(account_id text, entry_id bigint, amount double precision, reason text DEFAULT NULL,
                           idempotency_key text DEFAULT NULL)
RETURNS bigint LANGUAGE sql
RETURN credits.refund_for(account_id, entry_id, credits_internal._from_float8(amount, 'amount'), reason,
                          idempotency_key);

CREATE FUNCTION purchase(account_id text, credits double precision, idempotency_key text DEFAULT NULL)
RETURNS bigint LANGUAGE sql
RETURN credits.purchase(account_id, credits_internal._from_float8(credits, 'credits'), idempotency_key);

CREATE FUNCTION reduce_purchase(account_id text, credits double precision, idempotency_key text DEFAULT NULL)
RETURNS bigint LANGUAGE sql
RETURN credits.reduce_purchase(account_id, credits_internal._from_float8(credits, 'credits'), idempotency_key);

CREATE FUNCTION "grant"(account_id text, amount double precision, kind text DEFAULT 'promotional',
                        expires_at timestamptz DEFAULT NULL, idempotency_key text DEFAULT NULL)
RETURNS bigint LANGUAGE sql
RETURN credits."grant"(account_id, credits_internal._from_float8(amount, 'amount'), kind, expires_at,
                       idempotency_key);
