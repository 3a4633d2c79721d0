-- Metering: debit, try_debit, refund.
--
-- The debit hot path is below SQL (_debit_fast, src/metering/fast_path.rs):
-- it locks the account row, checks every window against it, and writes the
-- counters, the ledger entry and the key as an UPDATE and INSERTs would.
-- Row locking makes it exact under any concurrency: at READ COMMITTED a
-- waiting debit decides on the committed row; at REPEATABLE READ /
-- SERIALIZABLE a row changed since the snapshot fails with 40001, to be
-- retried. Anything the fast path cannot decide alone (credits from
-- grants, an error to report, a replayed key) goes to _debit_slow.

-- Draw `p_need` from the valid grants of a locked account, soonest-expiring
-- first, for ledger entry `p_entry` (its grant draws).
CREATE FUNCTION credits_internal._draw_grants(p_account text, p_entry bigint, p_need numeric, p_now timestamptz)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_need numeric := p_need;
    v_take numeric;
    g      record;
BEGIN
    FOR g IN SELECT gr.grant_id, gr.remaining FROM credits.grants gr
              WHERE gr.account_id = p_account AND gr.remaining > 0 AND gr.expired_entry IS NULL
                AND (gr.expires_at IS NULL OR gr.expires_at > p_now)
              ORDER BY gr.expires_at NULLS LAST, gr.grant_id
              FOR UPDATE
    LOOP
        EXIT WHEN v_need = 0;
        v_take := least(v_need, g.remaining);
        UPDATE credits.grants gr SET remaining = gr.remaining - v_take
         WHERE gr.account_id = p_account AND gr.grant_id = g.grant_id;
        INSERT INTO credits.grant_draws (account_id, entry_id, grant_id, amount)
        VALUES (p_account, p_entry, g.grant_id, v_take);
        v_need := v_need - v_take;
    END LOOP;
END
$$;

-- Charge `p_amount` to a locked account whose state `s` was checked to fit:
-- the allowance first, then grants soonest-expiring first. Writes the 'D'
-- entry (ref = the hold it settles, if any) and returns its id. The amount
-- counts in today's daily window unless `p_today` is false (a settle whose
-- hold was placed on a day that has closed: the caller records it there).
-- Holds are promises, not earmarks (SPEC §4, issue: holds and grants): a
-- charge takes allowance that this month's holds hold before it takes a
-- grant, and those holds are backed by the grants instead, so a hold never
-- makes a debit spend a grant while allowance it did not use is left.
CREATE FUNCTION credits_internal._charge(p_account text, s credits_internal._account_state, p_feature_id smallint,
                        p_amount numeric, p_metadata jsonb, p_ref bigint, p_now timestamptz,
                        p_today boolean DEFAULT true)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_alloc numeric := least(p_amount, s.allowance_available);
    v_need  numeric := p_amount - least(p_amount, s.allowance_available);
    v_shift numeric;
    v_take  numeric;
    v_entry bigint;
    h       record;
BEGIN
    -- Allowance held by this month's holds, moved onto grants.
    v_shift := least(v_need, s.grants_available,
                     least(s.reserved_allowance, greatest(0, s.monthly_limit - s.monthly_used)));
    IF v_shift > 0 THEN
        v_alloc := v_alloc + v_shift;
        v_need := v_need - v_shift;
        FOR h IN SELECT ho.hold_id, ho.amount - ho.from_grants AS on_allowance FROM credits.holds ho
                  WHERE ho.account_id = p_account AND ho.resolved_entry IS NULL AND ho.expires_at > p_now
                    AND ho.month >= credits_internal._utc_month(p_now) AND ho.amount > ho.from_grants
                  ORDER BY ho.hold_id DESC
        LOOP
            EXIT WHEN v_shift = 0;
            v_take := least(v_shift, h.on_allowance);
            UPDATE credits.holds ho SET from_grants = ho.from_grants + v_take
             WHERE ho.account_id = p_account AND ho.hold_id = h.hold_id;
            v_shift := v_shift - v_take;
        END LOOP;
    END IF;

    INSERT INTO credits.ledger (account_id, at, kind, feature_id, amount, from_grants, ref, metadata)
    VALUES (p_account, p_now, 'D', p_feature_id, p_amount, nullif(v_need, 0), p_ref, p_metadata)
    RETURNING entry_id INTO v_entry;
    PERFORM credits_internal._count('C', s.plan, p_feature_id);
    IF v_need > 0 THEN
        PERFORM credits_internal._draw_grants(p_account, v_entry, v_need, p_now);
    END IF;

    UPDATE credits.accounts a
       SET day = credits_internal._utc_day(p_now),
           daily_used = CASE WHEN p_today THEN s.daily_used + p_amount ELSE s.daily_used END,
           month = credits_internal._utc_month(p_now),
           monthly_used = s.monthly_used + v_alloc,
           monthly_epoch = CASE WHEN a.month = credits_internal._utc_month(p_now) THEN a.monthly_epoch ELSE 0 END
     WHERE a.account_id = p_account;
    RETURN v_entry;
END
$$;

-- The fingerprint a debit's idempotency key is stored with (UC005 on a
-- mismatch): feature, quantity and metadata (src/metering/requests.rs).
CREATE FUNCTION credits_internal._debit_request(p_feature text, p_quantity numeric, p_metadata jsonb) RETURNS uuid
LANGUAGE c STABLE PARALLEL SAFE AS 'MODULE_PATHNAME', 'credits_debit_request';

-- A feature by key, UC003 if unknown.
CREATE FUNCTION credits_internal._feature(p_feature text) RETURNS credits.features
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v credits.features;
BEGIN
    PERFORM credits_internal._check_text(p_feature, 'feature');
    SELECT * INTO v FROM credits.features f WHERE f.feature = p_feature;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown feature: %', quote_literal(p_feature) USING ERRCODE = 'UC003',
            HINT = 'Features are listed in credits.features.';
    END IF;
    RETURN v;
END
$$;

-- What `p_quantity` of a feature costs: UC004 unless the quantity is a valid
-- amount and the charge is exact to 4 decimal places.
CREATE FUNCTION credits_internal._cost(p_feature credits.features, p_quantity numeric) RETURNS numeric
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v_amount numeric;
BEGIN
    PERFORM credits_internal._check_amount(p_quantity, 'quantity');
    v_amount := trim_scale(p_feature.cost * p_quantity);
    IF scale(v_amount) > 4 THEN
        RAISE EXCEPTION 'invalid amount: % (cost % x quantity %)', v_amount, p_feature.cost, p_quantity
            USING ERRCODE = 'UC004', DETAIL = 'the charge must be exact to 4 decimal places';
    END IF;
    RETURN v_amount;
END
$$;

-- The slow path: full validation, grants, precise errors.
CREATE FUNCTION credits_internal._debit_slow(p_account text, p_feature text, p_quantity numeric, p_key text,
                            p_metadata jsonb, p_raise boolean, p_now timestamptz)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_feature credits.features;
    v_amount  numeric;
    v_acct    credits.accounts;
    v_state   credits_internal._account_state;
    v_request uuid;
    v_entry   bigint;
BEGIN
    PERFORM credits_internal._check_text(p_account, 'account_id');
    v_feature := credits_internal._feature(p_feature);
    v_amount := credits_internal._cost(v_feature, p_quantity);
    PERFORM credits_internal._check_metadata(p_metadata);
    IF p_key IS NOT NULL THEN
        PERFORM credits_internal._check_text(p_key, 'idempotency_key');
    END IF;

    v_acct := credits_internal._lock_account(p_account, p_now);
    p_now := v_acct.last_at;  -- the account's time (_lock_account)
    IF p_key IS NOT NULL THEN
        v_request := credits_internal._debit_request(p_feature, p_quantity, p_metadata);
        v_entry := credits_internal._replay(p_account, p_key, v_request);
        IF v_entry IS NOT NULL THEN
            RETURN v_entry;
        END IF;
    END IF;

    v_state := credits_internal._state(v_acct, p_now);
    IF credits_internal._lacking_window(v_state, v_amount) IS NOT NULL THEN
        PERFORM credits_internal._count('N', v_state.plan, v_feature.feature_id);
        IF NOT p_raise THEN
            PERFORM credits_internal._denied(p_account, v_amount, p_now);
            RETURN NULL;
        END IF;
        PERFORM credits_internal._raise_insufficient(v_amount, p_feature, v_state, p_now);
    END IF;
    v_entry := credits_internal._charge(p_account, v_state, v_feature.feature_id, v_amount, p_metadata, NULL, p_now);
    PERFORM credits_internal._after_write(p_account, p_now, v_entry, v_state);

    IF p_key IS NOT NULL THEN
        PERFORM credits_internal._remember_key(p_account, p_key, v_entry, v_request);
    END IF;
    RETURN v_entry;
END
$$;

-- The fast path, below SQL (src/metering/fast_path.rs): the common debit
-- (allowance enough, key new, arguments valid; windows that ended are
-- closed in the same writes) decided and written without executing a
-- statement; NULL, with nothing written, for anything else.
CREATE FUNCTION credits_internal._debit_fast(p_account text, p_feature text, p_quantity numeric, p_key text,
                            p_metadata jsonb, p_now timestamptz)
RETURNS bigint
LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'credits_debit_fast';

-- A debit the fast path declined (debit and try_debit try it first). An
-- account with a hold or grant past its deadline, or a window to close that
-- had run out (whose reset event is emitted in SQL), is brought up to date,
-- and the fast path tried once more;
-- anything else is the slow path's.
CREATE FUNCTION credits_internal._debit(p_account text, p_feature text, p_quantity numeric, p_key text,
                       p_metadata jsonb, p_raise boolean)
RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_now   timestamptz := credits.now();
    v_entry bigint;
    a       credits.accounts;
BEGIN
    -- On Citus, away from the account's node (a debit inside a transaction
    -- on the coordinator): the whole debit runs on that node, in this
    -- transaction, in one round trip (src/distributed/distribute.sql).
    IF credits_internal._elsewhere(p_account) THEN
        SELECT credits_internal._debit_there(ac.account_id, p_feature, p_quantity, p_key, p_metadata, p_raise)
          INTO v_entry FROM credits.accounts ac WHERE ac.account_id = p_account;
        IF NOT FOUND THEN
            PERFORM credits_internal._raise_unknown_account(p_account);
        END IF;
        RETURN v_entry;
    END IF;
    -- (the row read first, then asked about: Citus cannot ship a query
    -- that passes a whole row of a distributed table to a function)
    SELECT * INTO a FROM credits.accounts ac WHERE ac.account_id = p_account;
    IF FOUND AND (credits_internal._windows_passed(a, v_now) OR credits_internal._expiry_due(a, v_now)) THEN
        PERFORM credits_internal._lock_account(p_account, v_now);
        v_entry := credits_internal._debit_fast(p_account, p_feature, p_quantity, p_key, p_metadata, v_now);
    END IF;
    IF v_entry IS NULL THEN
        v_entry := credits_internal._debit_slow(p_account, p_feature, p_quantity, p_key, p_metadata, p_raise, v_now);
    END IF;
    -- A striped account's stripes, emptied on the way here, get budgets for
    -- the debits after this one (nothing for any other account).
    PERFORM credits_internal._stripes_refill(p_account, v_now);
    RETURN v_entry;
END
$$;

-- Hand a striped account's stripes budgets again (src/metering/stripes.rs):
-- each an equal part of half what the account can spend before any event
-- (a threshold, its alert, a full day). The caller holds the account and its
-- stripes, folded (_lock_account). Returns what it handed out.
CREATE FUNCTION credits_internal._stripes_refill(p_account text, p_now timestamptz) RETURNS numeric
LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'credits_stripes_refill';

-- debit: charge cost x quantity; UC001 when any window lacks credits.
-- In Rust (src/metering/fast_path.rs): the fast path, then credits_internal._debit,
-- which pins the search_path (nothing before it depends on one).
CREATE FUNCTION debit(account_id text, feature text, quantity numeric DEFAULT 1,
                      idempotency_key text DEFAULT NULL, metadata jsonb DEFAULT NULL)
RETURNS bigint
LANGUAGE c VOLATILE SECURITY DEFINER AS 'MODULE_PATHNAME', 'credits_debit';

-- try_debit: like debit, but NULL instead of UC001.
CREATE FUNCTION try_debit(account_id text, feature text, quantity numeric DEFAULT 1,
                          idempotency_key text DEFAULT NULL, metadata jsonb DEFAULT NULL)
RETURNS bigint
LANGUAGE c VOLATILE SECURITY DEFINER AS 'MODULE_PATHNAME', 'credits_try_debit';

-- The batch's fast path, below SQL (src/metering/fast_path.rs): each row's
-- new entry id; NULL for a row the SQL path decides, and for the later rows
-- of its account.
CREATE FUNCTION credits_internal._debit_many_fast(p_accounts text[], p_features text[], p_quantities numeric[],
                                                  p_keys text[], p_metadata jsonb[], p_now timestamptz)
RETURNS bigint[]
LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'credits_debit_many_fast';

-- debit_many: many debits in one call (a metering pipeline posting usage
-- after the fact), each row as try_debit would decide it, in the order
-- given for each account; one result row per input row, in input order:
--   outcome  charged | replayed (its key was used before by the same
--            request: entry_id is the first entry) | refused (UC001: its
--            denied or exhausted event is kept, as try_debit's) | rejected
--            (another documented error: nothing written for that row);
--   sqlstate, message, detail: the error of a refused or rejected row
--            (detail as JSON where the error gives JSON).
-- Arrays of one length (quantities NULL: 1 each; keys, metadata NULL:
-- none), at most 10,000 rows; UC009 otherwise, with nothing written.
-- An error outside the UC class (a serialization failure, a cancel) fails
-- the whole call.
CREATE FUNCTION debit_many(account_ids text[], features text[], quantities numeric[] DEFAULT NULL,
                           idempotency_keys text[] DEFAULT NULL, metadata jsonb[] DEFAULT NULL)
RETURNS TABLE (ordinality integer, entry_id bigint, outcome text, sqlstate text, message text, detail jsonb)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_now      timestamptz := credits.now();
    v_n        integer := cardinality(account_ids);
    v_entries  bigint[];
    v_decided  bigint[];
    v_outcome  text[];
    v_code     text[];
    v_message  text[];
    v_detail   jsonb[];
    v_prior    bigint;
    v_entry    bigint;
    v_sqlstate text;
    v_text     text;
    v_more     text;
    r          record;
BEGIN
    IF account_ids IS NULL OR features IS NULL THEN
        RAISE EXCEPTION 'invalid argument: account_ids and features must not be NULL' USING ERRCODE = 'UC009';
    END IF;
    IF v_n > 10000 THEN
        RAISE EXCEPTION 'invalid argument: % rows, at most 10000 per call', v_n USING ERRCODE = 'UC009';
    END IF;
    -- Every array one-dimensional (or empty) and as long as account_ids.
    IF coalesce(array_ndims(account_ids), 1) > 1 OR coalesce(array_ndims(features), 1) > 1
       OR coalesce(array_ndims(quantities), 1) > 1 OR coalesce(array_ndims(idempotency_keys), 1) > 1
       OR coalesce(array_ndims(metadata), 1) > 1 THEN
        RAISE EXCEPTION 'invalid argument: the arrays must be one-dimensional' USING ERRCODE = 'UC009';
    END IF;
    IF cardinality(features) <> v_n OR cardinality(quantities) <> v_n
       OR cardinality(idempotency_keys) <> v_n OR cardinality(metadata) <> v_n THEN
        RAISE EXCEPTION 'invalid argument: arrays of different lengths (account_ids %, features %, quantities %, idempotency_keys %, metadata %)',
                        v_n, cardinality(features), coalesce(cardinality(quantities)::text, 'NULL'),
                        coalesce(cardinality(idempotency_keys)::text, 'NULL'), coalesce(cardinality(metadata)::text, 'NULL')
            USING ERRCODE = 'UC009', DETAIL = 'account_ids, features and each array given must have one element per row';
    END IF;
    IF v_n = 0 THEN
        RETURN;
    END IF;
    IF quantities IS NULL THEN
        quantities := array_fill(1::numeric, ARRAY[v_n]);
    END IF;

    v_entries := credits_internal._debit_many_fast(account_ids, features, quantities, idempotency_keys,
                                                   metadata, v_now);

    -- The rows the fast path left, each account's in the order given, the
    -- accounts in key order (as the fast path locked them).
    IF array_position(v_entries, NULL) IS NULL THEN
        RETURN QUERY SELECT u.i::integer, u.entry_id, 'charged', NULL::text, NULL::text, NULL::jsonb
                       FROM unnest(v_entries) WITH ORDINALITY AS u(entry_id, i);
        RETURN;
    END IF;
    FOR r IN SELECT u.i, u.account_id, u.feature, u.quantity, u.key, u.meta
               FROM unnest(v_entries, account_ids, features, quantities, idempotency_keys, metadata)
                    WITH ORDINALITY AS u(entry_id, account_id, feature, quantity, key, meta, i)
              WHERE u.entry_id IS NULL
              ORDER BY u.account_id COLLATE "C", u.i
    LOOP
        IF v_outcome IS NULL THEN
            v_outcome := array_fill(NULL::text, ARRAY[v_n]);
            v_code := v_outcome;
            v_message := v_outcome;
            v_detail := array_fill(NULL::jsonb, ARRAY[v_n]);
            v_decided := array_fill(NULL::bigint, ARRAY[v_n]);
        END IF;
        v_prior := NULL;
        IF r.key IS NOT NULL THEN
            SELECT k.entry_id INTO v_prior FROM credits.idempotency k
             WHERE k.account_id = r.account_id AND k.idempotency_key = r.key;
        END IF;
        v_sqlstate := NULL;
        BEGIN
            v_entry := credits_internal._debit(r.account_id, r.feature, r.quantity, r.key, r.meta, true);
            v_decided[r.i] := v_entry;
            v_outcome[r.i] := CASE WHEN v_entry = v_prior THEN 'replayed' ELSE 'charged' END;
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS v_sqlstate = RETURNED_SQLSTATE, v_text = MESSAGE_TEXT, v_more = PG_EXCEPTION_DETAIL;
            IF v_sqlstate NOT LIKE 'UC%' THEN
                RAISE;
            END IF;
            v_outcome[r.i] := CASE v_sqlstate WHEN 'UC001' THEN 'refused' ELSE 'rejected' END;
            v_code[r.i] := v_sqlstate;
            v_message[r.i] := v_text;
            v_detail[r.i] := CASE WHEN v_more LIKE '{%' THEN v_more::jsonb END;
        END;
        IF v_sqlstate = 'UC001' THEN
            -- As try_debit keeps it (the refusal's own writes rolled back with the row).
            PERFORM credits_internal._denied(r.account_id, (v_detail[r.i] ->> 'needed')::numeric,
                                             (credits_internal._lock_account(r.account_id, v_now)).last_at);
        END IF;
    END LOOP;

    RETURN QUERY
    SELECT u.i::integer, coalesce(u.entry_id, u.decided), coalesce(u.outcome, 'charged'), u.code, u.message, u.detail
      FROM unnest(v_entries, v_decided, v_outcome, v_code, v_message, v_detail)
           WITH ORDINALITY AS u(entry_id, decided, outcome, code, message, detail, i);
END
$$;

-- check: what a debit of `quantity` of `feature` would do now, writing
-- nothing (the same state and rules as debit; no lock, so a debit right
-- after may still be refused by a concurrent one).
--   allowed          whether the debit would succeed;
--   cost             what it would charge;
--   available        what a debit could take now (every window, grants, holds);
--   limiting_window  the window that refuses it, or when allowed the one
--                    that caps `available` (daily or monthly);
--   resets_at        when that window resets.
CREATE FUNCTION "check"(account_id text, feature text, quantity numeric DEFAULT 1)
RETURNS TABLE (allowed boolean, cost numeric, available numeric, limiting_window text, resets_at timestamptz)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_now     timestamptz := credits.now();
    v_acct    credits.accounts;
    v_feature credits.features;
    s         credits_internal._account_state;
    v_lacking text;
BEGIN
    -- (on Citus, away from the account's node: on the node, in one round
    -- trip, as balance)
    IF credits_internal._elsewhere($1) THEN
        RETURN QUERY SELECT c.* FROM credits.accounts a CROSS JOIN LATERAL credits_internal._check_there(a.account_id, $2, $3) c
                      WHERE a.account_id = $1;
        IF NOT FOUND THEN
            PERFORM credits_internal._raise_unknown_account($1);
        END IF;
        RETURN;
    END IF;
    v_acct := credits_internal._account($1);
    v_feature := credits_internal._feature($2);
    cost := credits_internal._cost(v_feature, $3);
    v_now := credits_internal._reader_now(v_acct, v_now);
    s := credits_internal._state(v_acct, v_now);
    v_lacking := credits_internal._lacking_window(s, cost);
    allowed := v_lacking IS NULL;
    available := trim_scale(credits_internal._available(s));
    limiting_window := coalesce(v_lacking, credits_internal._limiting_window(s));
    resets_at := credits_internal._resets_at(limiting_window, v_now);
    RETURN NEXT;
END
$$;

-- refund: give back (part of) a debit to where it came from.
--   Grants first (they were drawn last), back to the very grants drawn
--   while they are still valid: a draw from a grant that has expired since
--   is recorded as expired at once ('E', SPEC §4.5), not restored;
--   then the allowance, back to the window of the debit: today's daily
--   window if the debit was today, this month's monthly window if the debit
--   was in it. A window that has since closed stays closed (no rollover):
--   that part is recorded in the ledger but not made available again.
--   amount NULL refunds what is left; repeating it returns the same entry.
--   idempotency_key (per account) makes a partial refund safe to retry.
--   refund_for takes the debit's account too: on Citus it is delegated to
--   the account's node, where refund(entry_id) looks the entry up on every
--   node first (docs/citus.md).
CREATE FUNCTION refund(entry_id bigint, amount numeric DEFAULT NULL, reason text DEFAULT NULL,
                       idempotency_key text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN credits_internal._refund(NULL, $1, $2, $3, $4);
END
$$;

CREATE FUNCTION refund_for(account_id text, entry_id bigint, amount numeric DEFAULT NULL, reason text DEFAULT NULL,
                           idempotency_key text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM credits_internal._check_text($1, 'account_id');
    RETURN credits_internal._refund($1, $2, $3, $4, $5);
END
$$;

-- (the entry of the account `p_account`, or of any account when NULL)
CREATE FUNCTION credits_internal._refund(p_account text, p_entry bigint, p_amount numeric, p_reason text, p_key text)
RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_request uuid;
    v_now     timestamptz := credits.now();
    v_debit   credits.ledger;
    v_debit_at timestamptz;  -- the instant whose windows the debit counted in
    v_acct    credits.accounts;
    v_done    numeric;
    v_grants_done numeric;
    v_left    numeric;
    v_last    bigint;
    v_to_grants numeric;
    v_need    numeric;
    v_take    numeric;
    v_entry   bigint;
    g         record;
BEGIN
    IF p_entry IS NULL THEN
        RAISE EXCEPTION 'invalid entry_id: NULL' USING ERRCODE = 'UC009';
    END IF;
    IF p_amount IS NOT NULL THEN
        PERFORM credits_internal._check_amount(p_amount, 'amount');
        p_amount := trim_scale(p_amount);
    END IF;
    IF p_reason IS NOT NULL THEN
        PERFORM credits_internal._check_text(p_reason, 'reason');
    END IF;
    IF p_key IS NOT NULL THEN
        PERFORM credits_internal._check_text(p_key, 'idempotency_key');
    END IF;
    IF p_account IS NULL THEN
        SELECT * INTO v_debit FROM credits.ledger l WHERE l.entry_id = p_entry;
    ELSE
        SELECT * INTO v_debit FROM credits.ledger l WHERE l.account_id = p_account AND l.entry_id = p_entry;
    END IF;
    IF NOT FOUND OR v_debit.kind <> 'D' THEN
        PERFORM credits_internal._raise_wrong_entry(p_entry, 'a debit', p_account);
    END IF;
    v_acct := credits_internal._lock_account(v_debit.account_id, v_now);
    v_now := v_acct.last_at;  -- the account's time (_lock_account)
    IF p_key IS NOT NULL THEN
        v_request := credits_internal._fingerprint('refund', p_entry::text, p_amount::text, p_reason);
        v_entry := credits_internal._replay(v_debit.account_id, p_key, v_request);
        IF v_entry IS NOT NULL THEN
            RETURN v_entry;
        END IF;
    END IF;
    -- (a settle counted in the windows of its hold, SPEC §4.3)
    v_debit_at := coalesce((SELECT h.at FROM credits.ledger h
                             WHERE h.account_id = v_debit.account_id AND h.entry_id = v_debit.ref AND h.kind = 'H'),
                           v_debit.at);

    SELECT coalesce(sum(r.amount), 0), coalesce(sum(r.from_grants), 0), max(r.entry_id)
      INTO v_done, v_grants_done, v_last
      FROM credits.ledger r WHERE r.account_id = v_debit.account_id AND r.ref = p_entry AND r.kind = 'R';
    v_left := v_debit.amount - v_done;
    IF p_amount IS NULL THEN
        IF v_left = 0 THEN
            IF p_key IS NOT NULL THEN
                PERFORM credits_internal._remember_key(v_debit.account_id, p_key, v_last, v_request);
            END IF;
            RETURN v_last;
        END IF;
        p_amount := v_left;
    ELSIF p_amount > v_left THEN
        RAISE EXCEPTION 'refund of % exceeds what is left of debit %: %', p_amount, p_entry, trim_scale(v_left)
            USING ERRCODE = 'UC007',
                  DETAIL = jsonb_build_object('entry_id', p_entry, 'debited', trim_scale(v_debit.amount),
                                              'refunded', trim_scale(v_done), 'left', trim_scale(v_left))::text;
    END IF;

    v_to_grants := least(p_amount, coalesce(v_debit.from_grants, 0) - v_grants_done);
    PERFORM credits_internal._count('R', v_acct.plan, v_debit.feature_id);
    INSERT INTO credits.ledger (account_id, at, kind, feature_id, amount, from_grants, ref, metadata)
    VALUES (v_debit.account_id, v_now, 'R', v_debit.feature_id, p_amount, nullif(v_to_grants, 0), p_entry,
            CASE WHEN p_reason IS NOT NULL THEN jsonb_build_object('reason', p_reason) END)
    RETURNING ledger.entry_id INTO v_entry;

    -- Give back to the grants this debit drew from, latest-expiring first.
    -- (_lock_account recorded every grant past its deadline as expired.)
    v_need := v_to_grants;
    FOR g IN SELECT d.grant_id, sum(d.amount) AS net, gr.kind,
                    gr.expired_entry IS NOT NULL OR gr.expires_at <= v_now AS expired
               FROM credits.grant_draws d
               JOIN credits.grants gr ON gr.account_id = d.account_id AND gr.grant_id = d.grant_id
              WHERE d.account_id = v_debit.account_id
                AND (d.entry_id = p_entry
                     OR d.entry_id IN (SELECT r.entry_id FROM credits.ledger r
                                       WHERE r.account_id = d.account_id AND r.ref = p_entry AND r.kind = 'R'))
              GROUP BY d.grant_id, gr.expires_at, gr.kind, gr.expired_entry
             HAVING sum(d.amount) > 0
              ORDER BY gr.expires_at DESC NULLS FIRST, d.grant_id DESC
    LOOP
        EXIT WHEN v_need = 0;
        v_take := least(v_need, g.net);
        INSERT INTO credits.grant_draws (account_id, entry_id, grant_id, amount)
        VALUES (v_debit.account_id, v_entry, g.grant_id, -v_take);
        IF g.expired THEN
            -- Given back and expired at once: the grant stays as it expired.
            INSERT INTO credits.ledger (account_id, at, kind, amount, ref, metadata)
            VALUES (v_debit.account_id, v_now, 'E', v_take, g.grant_id,
                    jsonb_build_object('grant_kind', g.kind, 'refund', v_entry))
            RETURNING ledger.entry_id INTO v_last;
            INSERT INTO credits.grant_draws (account_id, entry_id, grant_id, amount)
            VALUES (v_debit.account_id, v_last, g.grant_id, v_take);
        ELSE
            UPDATE credits.grants gr SET remaining = gr.remaining + v_take
             WHERE gr.account_id = v_debit.account_id AND gr.grant_id = g.grant_id;
        END IF;
        v_need := v_need - v_take;
    END LOOP;

    UPDATE credits.accounts a
       SET daily_used = CASE WHEN a.day = credits_internal._utc_day(v_debit_at) AND a.day = credits_internal._utc_day(v_now)
                             THEN a.daily_used - p_amount ELSE a.daily_used END,
           monthly_used = CASE WHEN a.month = credits_internal._utc_month(v_debit_at) AND a.month = credits_internal._utc_month(v_now)
                                    AND p_entry > a.monthly_epoch
                               THEN a.monthly_used - (p_amount - v_to_grants) ELSE a.monthly_used END
     WHERE a.account_id = v_debit.account_id;
    IF p_key IS NOT NULL THEN
        PERFORM credits_internal._remember_key(v_debit.account_id, p_key, v_entry, v_request);
    END IF;
    RETURN v_entry;
END
$$;
