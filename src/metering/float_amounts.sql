-- Amounts and quantities passed as double precision (a Python float, a
-- JavaScript number sent as float8): PostgreSQL has no implicit cast from
-- float8 to numeric, so without these a call fails with 42883 ("function
-- does not exist"). Each converts the value to numeric (a float8 converts
-- to the shortest decimal that reads back as the same float, so 0.1 is 0.1)
-- and calls the numeric form, which checks it like any other amount (UC004
-- beyond 4 decimal places, NaN, infinities). The quantity has no default
-- here, so a call without one is not ambiguous; an integer argument also
-- resolves here (float8 is the preferred numeric type) and converts exactly.
-- debit and try_debit are C (src/metering/fast_path.rs), as their numeric forms.

CREATE FUNCTION debit(account_id text, feature text, quantity double precision,
                      idempotency_key text DEFAULT NULL, metadata jsonb DEFAULT NULL)
RETURNS bigint
LANGUAGE c VOLATILE SECURITY DEFINER AS 'MODULE_PATHNAME', 'credits_debit_float8';

CREATE FUNCTION try_debit(account_id text, feature text, quantity double precision,
                          idempotency_key text DEFAULT NULL, metadata jsonb DEFAULT NULL)
RETURNS bigint
LANGUAGE c VOLATILE SECURITY DEFINER AS 'MODULE_PATHNAME', 'credits_try_debit_float8';

CREATE FUNCTION "check"(account_id text, feature text, quantity double precision)
RETURNS TABLE (allowed boolean, cost numeric, available numeric, limiting_window text, resets_at timestamptz)
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT * FROM credits."check"(account_id, feature, quantity::numeric);
END;

CREATE FUNCTION reserve(account_id text, feature text, amount double precision,
                        ttl interval DEFAULT '15 minutes', idempotency_key text DEFAULT NULL)
RETURNS bigint LANGUAGE sql
RETURN credits.reserve(account_id, feature, amount::numeric, ttl, idempotency_key);

CREATE FUNCTION try_reserve(account_id text, feature text, amount double precision,
                            ttl interval DEFAULT '15 minutes', idempotency_key text DEFAULT NULL)
RETURNS bigint LANGUAGE sql
RETURN credits.try_reserve(account_id, feature, amount::numeric, ttl, idempotency_key);

CREATE FUNCTION settle(hold_id bigint, amount double precision)
RETURNS bigint LANGUAGE sql
RETURN credits.settle(hold_id, amount::numeric);

CREATE FUNCTION refund(entry_id bigint, amount double precision, reason text DEFAULT NULL,
                       idempotency_key text DEFAULT NULL)
RETURNS bigint LANGUAGE sql
RETURN credits.refund(entry_id, amount::numeric, reason, idempotency_key);

CREATE FUNCTION purchase(account_id text, credits double precision, idempotency_key text DEFAULT NULL)
RETURNS bigint LANGUAGE sql
RETURN credits.purchase(account_id, credits::numeric, idempotency_key);

CREATE FUNCTION reduce_purchase(account_id text, credits double precision, idempotency_key text DEFAULT NULL)
RETURNS bigint LANGUAGE sql
RETURN credits.reduce_purchase(account_id, credits::numeric, idempotency_key);

CREATE FUNCTION "grant"(account_id text, amount double precision, kind text DEFAULT 'promotional',
                        expires_at timestamptz DEFAULT NULL, idempotency_key text DEFAULT NULL)
RETURNS bigint LANGUAGE sql
RETURN credits."grant"(account_id, amount::numeric, kind, expires_at, idempotency_key);
