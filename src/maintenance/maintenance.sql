-- Maintenance (SPEC §3): make window resets durable and expire what has a
-- deadline. The extension is correct without it: every call brings its own
-- account up to date first (_lock_account). Maintenance does the same work
-- for every account, at the boundary, in batches.
--
-- One piece of logic per job, shared by the lazy path and the batches:
-- window closing is Rust (src/maintenance/close.rs; the debit fast path
-- closes its own account's windows with it, a batch is one scan), and
-- _expire_due takes an array of accounts, one for the lazy path.

-- Has a window of this account ended by `at` with something left to record?
-- A daily window with nothing used has nothing to close.
CREATE FUNCTION credits_internal._windows_passed(a credits.accounts, p_at timestamptz) RETURNS boolean
LANGUAGE sql IMMUTABLE
RETURN (a.day < credits_internal._utc_day(p_at) AND a.daily_used > 0) OR a.month < credits_internal._utc_month(p_at);

-- Close the ended windows of locked accounts: one closed_windows row per
-- window (every missed month, in order, each once), an 'F' entry for the
-- monthly allowance it forfeits, a reset event where the window had run out,
-- and the counters moved to the window of `at`. Returns the windows closed.
-- In Rust (src/maintenance/close.rs), one copy with the debit fast path,
-- which closes an account's windows in the same writes as its debit.
CREATE FUNCTION credits_internal._close_windows(p_accounts text[], p_at timestamptz) RETURNS integer
LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'credits_close_windows';

-- A maintenance batch: the ended windows of up to `p_accounts` accounts that
-- have one, the first after `p_after` in key order (NULL: from the first),
-- each locked as the scan reaches it, so locks are taken in key order; an
-- account another transaction holds is skipped, never waited for.
-- Returns the last account closed (NULL: none was left), how many, the
-- windows recorded, and the accounts skipped. Rust
-- (src/maintenance/close.rs), as _close_windows.
CREATE FUNCTION credits_internal._close_windows_after(p_after text, p_at timestamptz, p_accounts integer,
                                     OUT last_account text, OUT accounts integer, OUT windows integer,
                                     OUT skipped text[])
LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'credits_close_windows_after';

-- Expire, for locked accounts, the holds and grants whose deadline is at or
-- before `at`: holds are freed ('X', reason expired), grants with credits
-- left are closed by an 'E' entry, both stamped at their deadline whoever
-- sees it first. Each resolves once. An account a grant's expiry leaves
-- with nothing available gets an exhausted event. Returns how many.
CREATE FUNCTION credits_internal._expire_due(p_accounts text[], p_at timestamptz) RETURNS integer
LANGUAGE plpgsql SET jit = off AS $$
DECLARE
    v_n       integer := 0;
    v_account text;
    v_hold    credits.holds;
    v_holds   credits.holds[];
    v_grant   credits.grants;
    v_entry   bigint;
    v_entries bigint[];
    v_last    bigint;
    v_freed   numeric;
    v_acct    credits.accounts;
    v_state   credits_internal._account_state;
BEGIN
    -- An account at a time, every statement on its rows alone (on Citus:
    -- on its shard, where Citus routes each).
    FOREACH v_account IN ARRAY p_accounts LOOP
        -- Holds: freed ('X'), then what each kept aside of a month that has
        -- closed, or of an allowance an upgrade has replaced since, is
        -- forfeited (_hold_resolved).
        v_holds := '{}';
        v_entries := '{}';
        v_freed := 0;
        FOR v_hold IN SELECT * FROM credits.holds h
                       WHERE h.account_id = v_account AND h.resolved_entry IS NULL AND h.expires_at <= p_at
                       ORDER BY h.hold_id LOOP
            INSERT INTO credits.ledger (account_id, at, kind, feature_id, amount, ref, metadata)
            VALUES (v_account, v_hold.expires_at, 'X', v_hold.feature_id, v_hold.amount, v_hold.hold_id,
                    '{"reason": "expired"}')
            RETURNING entry_id INTO v_entry;
            UPDATE credits.holds h SET resolved_entry = v_entry
             WHERE h.account_id = v_account AND h.hold_id = v_hold.hold_id;
            v_holds := v_holds || v_hold;
            v_entries := v_entries || v_entry;
            v_freed := v_freed + v_hold.amount;
        END LOOP;
        IF v_freed > 0 THEN
            UPDATE credits.accounts a SET reserved = a.reserved - v_freed WHERE a.account_id = v_account;
        END IF;
        FOR i IN 1 .. coalesce(array_length(v_holds, 1), 0) LOOP
            PERFORM credits_internal._hold_resolved(v_holds[i], v_entries[i], 0, 0, p_at);
        END LOOP;
        v_n := v_n + coalesce(array_length(v_holds, 1), 0);

        -- Grants: what is left expires ('E'); one that ran its account out
        -- (its last expiry entry) makes an exhausted event.
        v_last := NULL;
        FOR v_grant IN SELECT * FROM credits.grants g
                        WHERE g.account_id = v_account AND g.expired_entry IS NULL AND g.expires_at <= p_at
                        ORDER BY g.expires_at, g.grant_id LOOP
            v_entry := 0;
            IF v_grant.remaining > 0 THEN
                INSERT INTO credits.ledger (account_id, at, kind, amount, ref, metadata)
                VALUES (v_account, v_grant.expires_at, 'E', v_grant.remaining, v_grant.grant_id,
                        jsonb_build_object('grant_kind', v_grant.kind))
                RETURNING entry_id INTO v_entry;
                v_last := v_entry;
            END IF;
            UPDATE credits.grants g SET expired_entry = v_entry
             WHERE g.account_id = v_account AND g.grant_id = v_grant.grant_id;
            v_n := v_n + 1;
        END LOOP;
        IF v_last IS NOT NULL THEN
            SELECT * INTO v_acct FROM credits.accounts ac WHERE ac.account_id = v_account;
            v_state := credits_internal._state(v_acct, p_at);
            IF v_state.allowance_available + v_state.grants_available = 0 THEN
                PERFORM credits_internal._emit(v_acct, 'exhausted', 'monthly', NULL, p_at, v_state, v_last);
            END IF;
        END IF;
    END LOOP;
    RETURN v_n;
END
$$;

-- Does this account have a hold or grant whose deadline has passed unrecorded?
-- plpgsql: a SQL function with subqueries is not inlined, and would be
-- planned again in every transaction (see _state).
CREATE FUNCTION credits_internal._expiry_due(a credits.accounts, p_at timestamptz) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (a.reserved > 0 AND EXISTS (SELECT 1 FROM credits.holds h
                                        WHERE h.account_id = a.account_id AND h.resolved_entry IS NULL
                                          AND h.expires_at <= p_at))
        OR EXISTS (SELECT 1 FROM credits.grants g
                    WHERE g.account_id = a.account_id AND g.expired_entry IS NULL AND g.expires_at <= p_at);
END
$$;

-- Fold a locked account's stripes back into its counters: what their
-- budgets did not spend is no longer used, and the stripes are empty until
-- a debit refills them (_stripes_refill). The caller holds the stripes
-- (_lock_account takes them before the row); one created since (set_stripes
-- racing) is not waited for while the row is held: 40001, to retry.
CREATE FUNCTION credits_internal._fold_stripes(a credits.accounts) RETURNS credits.accounts
LANGUAGE plpgsql AS $$
DECLARE
    v_unspent numeric;
    v_last    timestamptz;
BEGIN
    BEGIN
        SELECT coalesce(sum(s.budget - s.spent), 0), max(s.last_at) INTO v_unspent, v_last
          FROM (SELECT st.budget, st.spent, st.last_at FROM credits.stripes st
                 WHERE st.account_id = a.account_id FOR UPDATE NOWAIT) s;
    EXCEPTION WHEN lock_not_available THEN
        RAISE EXCEPTION 'could not serialize access to account %: its stripes changed meanwhile',
                        quote_literal(a.account_id) USING ERRCODE = '40001';
    END;
    UPDATE credits.stripes st SET budget = 0, spent = 0
     WHERE st.account_id = a.account_id AND (st.budget <> 0 OR st.spent <> 0);
    UPDATE credits.accounts ac
       SET daily_used = trim_scale(ac.daily_used - v_unspent), monthly_used = trim_scale(ac.monthly_used - v_unspent),
           stripe_budget = 0, last_at = greatest(ac.last_at, v_last)
     WHERE ac.account_id = a.account_id
    RETURNING * INTO a;
    RETURN a;
END
$$;

-- Lock an account row (every write to an account goes through this lock,
-- which also orders its ledger entries) and fail with UC002 if it is missing.
-- The account is brought up to `p_now` (or its own time, if that is later:
-- _account_now) before anyone decides: ended windows closed, holds and
-- grants past their deadline expired. Callers then decide at the returned
-- row's last_at.
CREATE FUNCTION credits_internal._lock_account(p_account text, p_now timestamptz) RETURNS credits.accounts
LANGUAGE plpgsql AS $$
DECLARE
    v credits.accounts;
BEGIN
    -- A striped account's stripes first, then its row: every path that
    -- waits for both takes them in this order (src/metering/stripes.rs).
    PERFORM FROM credits.stripes s WHERE s.account_id = p_account ORDER BY s.stripe FOR UPDATE;
    -- Locked by moving its time on: the account's time is the latest any
    -- call decided at, including one that writes nothing else (a denial),
    -- so what it expires or closes now stays expired and closed for a call
    -- whose clock is behind. (Callers decide at last_at, and write no other.)
    UPDATE credits.accounts a SET last_at = credits_internal._time_of(a.last_at, a.day, a.month, p_now)
     WHERE a.account_id = p_account
    RETURNING * INTO v;
    IF NOT FOUND THEN
        PERFORM credits_internal._raise_unknown_account(p_account);
    END IF;
    IF credits_internal._distributed() THEN
        PERFORM credits_internal._follow_history(p_account);
    END IF;
    IF v.stripe_budget > 0 THEN
        v := credits_internal._fold_stripes(v);
    END IF;
    p_now := v.last_at;
    IF credits_internal._windows_passed(v, p_now) THEN
        -- (through the account's row: on Citus, the query runs on the node
        -- holding the account, where _close_windows finds its shards)
        PERFORM credits_internal._close_windows(ARRAY[a.account_id], p_now)
           FROM credits.accounts a WHERE a.account_id = p_account;
        SELECT * INTO v FROM credits.accounts a WHERE a.account_id = p_account;
    END IF;
    IF credits_internal._expiry_due(v, p_now) THEN
        PERFORM credits_internal._expire_due(ARRAY[p_account], p_now);
        SELECT * INTO v FROM credits.accounts a WHERE a.account_id = p_account;
    END IF;
    RETURN v;
END
$$;

-------------------------------------------------------------------------------
-- Runs. A run takes everything due at its instant: first the windows of
-- every account (a pass over the accounts in key order, `batch` at a time,
-- only when a UTC day boundary passed since the last run), then the holds
-- and grants past their deadline (found by their expiry indexes).
-------------------------------------------------------------------------------

-- The earliest instant at which something is or was due after `done_through`:
-- the next UTC day boundary, the next hold or grant deadline.
CREATE FUNCTION credits_internal._next_due(p_done_through timestamptz) RETURNS timestamptz
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$  -- used by the status view
DECLARE
    -- the first deadline of a hold or grant not expired yet (on Citus, of
    -- this node's shards, read directly: every node expires its own)
    v_query text := $q$SELECT least((SELECT min(h.expires_at) FROM credits.holds h WHERE h.resolved_entry IS NULL),
                                    (SELECT min(g.expires_at) FROM credits.grants g
                                      WHERE g.expired_entry IS NULL AND g.expires_at IS NOT NULL))$q$;
    v_due   timestamptz := CASE WHEN p_done_through IS NULL THEN '-infinity'::timestamptz
                                ELSE (credits_internal._utc_day(p_done_through) + 1)::timestamp AT TIME ZONE 'UTC' END;
    v_some  timestamptz;
    v_sql   text;
BEGIN
    FOR v_sql IN SELECT credits_internal._on_local_shards(v_query) LOOP
        EXECUTE v_sql INTO v_some;
        v_due := least(v_due, v_some);
    END LOOP;
    RETURN v_due;
END
$$;

-- The accounts with a hold or grant past its deadline at `p_at`: up to
-- `p_batch` of each kind, the earliest deadlines first. On Citus, those of
-- this node's shards (read directly: every node expires its own).
CREATE FUNCTION credits_internal._due_accounts(p_at timestamptz, p_batch integer) RETURNS text[]
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    -- (one query: as it is on a single server, on each of this node's
    -- shard groups on Citus)
    v_query text := $q$SELECT ARRAY((SELECT h.account_id FROM credits.holds h
                                      WHERE h.resolved_entry IS NULL AND h.expires_at <= $1
                                      ORDER BY h.expires_at LIMIT $2)
                                    UNION
                                    (SELECT g.account_id FROM credits.grants g
                                      WHERE g.expired_entry IS NULL AND g.expires_at <= $1
                                      ORDER BY g.expires_at LIMIT $2))$q$;
    v_due   text[] := '{}';
    v_some  text[];
    v_sql   text;
BEGIN
    FOR v_sql IN SELECT credits_internal._on_local_shards(v_query) LOOP
        EXECUTE v_sql INTO v_some USING p_at, p_batch;
        v_due := v_due || v_some;
    END LOOP;
    RETURN v_due;
END
$$;

-- Of the accounts `p_ids`, those no other transaction holds, locked (for the
-- rest of the transaction), in key order; with `p_unstriped`, only those
-- with no budgets out on stripes. (On Citus an account at a time: Citus
-- locks rows of one shard per statement.)
CREATE FUNCTION credits_internal._lock_free(p_ids text[], p_unstriped boolean) RETURNS text[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_free text[] := '{}';
    v_one  text;
BEGIN
    IF NOT credits_internal._distributed() THEN
        RETURN ARRAY(SELECT a.account_id FROM credits.accounts a
                      WHERE a.account_id = ANY (p_ids) AND (NOT p_unstriped OR a.stripe_budget = 0)
                      ORDER BY a.account_id
                        FOR UPDATE SKIP LOCKED);
    END IF;
    FOR v_one IN SELECT DISTINCT x FROM unnest(p_ids) x ORDER BY x LOOP
        -- (one whose shards moved away since: its new node's maintenance takes it)
        CONTINUE WHEN credits_internal._elsewhere(v_one);
        PERFORM FROM credits.accounts a
          WHERE a.account_id = v_one AND (NOT p_unstriped OR a.stripe_budget = 0)
            FOR UPDATE SKIP LOCKED;
        IF FOUND THEN
            -- (this node's ids past the account's, as _lock_account makes them)
            PERFORM credits_internal._follow_history(v_one);
            v_free := v_free || v_one;
        END IF;
    END LOOP;
    RETURN v_free;
END
$$;

-- One step of maintenance at instant `p_at`, in the caller's transaction:
-- starts a run if something is due, or does one batch of the run in
-- progress (which keeps its own instant, so a run cut short resumes as it
-- began). Returns the seconds until more is due: 0 = call again now.
CREATE FUNCTION credits_internal._maintenance_step(p_at timestamptz, p_batch integer) RETURNS double precision
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET jit = off AS $$
DECLARE
    st       credits.maintenance_state;
    run      credits.maintenance_runs;
    v_done   record;
    v_ids    text[];
    v_n      integer;
    v_one    text;
    v_free   boolean;
BEGIN
    IF p_at IS NULL OR NOT isfinite(p_at) THEN
        RAISE EXCEPTION 'invalid maintenance instant: %', coalesce(p_at::text, 'NULL') USING ERRCODE = 'UC009';
    END IF;
    IF p_batch IS NULL OR p_batch < 1 THEN
        RAISE EXCEPTION 'invalid batch size: %', coalesce(p_batch::text, 'NULL') USING ERRCODE = 'UC009';
    END IF;
    -- One maintenance step at a time: the worker and a manual run interleave safely.
    -- (On Citus every node runs its own: these tables are the node's, and
    -- each batch works on the node's shards.)
    SELECT * INTO st FROM credits.maintenance_state FOR UPDATE;

    IF st.run_id IS NULL THEN
        IF credits_internal._next_due(st.done_through) > p_at THEN
            RETURN greatest(0, extract(epoch FROM credits_internal._next_due(greatest(st.done_through, p_at)) - p_at));
        END IF;
        INSERT INTO credits.maintenance_runs (run_at, previous, phase)
        VALUES (p_at, st.done_through,
                CASE WHEN st.done_through IS NULL OR credits_internal._utc_day(st.done_through) < credits_internal._utc_day(p_at)
                     THEN 'windows' ELSE 'expiries' END)
        RETURNING * INTO run;
        UPDATE credits.maintenance_state SET run_id = run.run_id;
    ELSE
        SELECT * INTO run FROM credits.maintenance_runs r WHERE r.run_id = st.run_id;
    END IF;

    IF run.phase = 'windows' THEN
        -- One batch per transaction, locks taken in key order; accounts
        -- held by another transaction are noted and closed once free.
        SELECT * INTO v_done FROM credits_internal._close_windows_after(run.cursor, run.run_at, p_batch);
        INSERT INTO credits.maintenance_waiting (run_id, account_id, since)
        SELECT run.run_id, s.id, clock_timestamp() FROM unnest(v_done.skipped) s(id)
        ON CONFLICT DO NOTHING;
        IF v_done.last_account IS NULL THEN
            UPDATE credits.maintenance_runs r SET phase = 'expiries' WHERE r.run_id = run.run_id;
        ELSE
            UPDATE credits.maintenance_runs r
               SET cursor = v_done.last_account, batches = r.batches + 1,
                   accounts = r.accounts + v_done.accounts, windows = r.windows + v_done.windows
             WHERE r.run_id = run.run_id;
        END IF;
        RETURN 0;
    END IF;

    -- Expiries: the accounts with a hold or grant past its deadline, a batch
    -- at a time (one another transaction holds is left for a later step).
    v_ids := credits_internal._lock_free(credits_internal._due_accounts(run.run_at, p_batch), false);
    IF v_ids <> '{}' THEN
        v_n := credits_internal._expire_due(v_ids, run.run_at);
        UPDATE credits.maintenance_runs r SET batches = r.batches + 1, expired = r.expired + v_n
         WHERE r.run_id = run.run_id;
        RETURN 0;
    END IF;

    -- The accounts skipped because a transaction held them, once free.
    -- Striped ones with budgets out go through _lock_account (which folds
    -- them back before closing) when their stripes, then their row, can be
    -- taken without waiting (the order every path takes them in).
    v_n := 0;
    FOR v_one IN SELECT w.account_id FROM credits.maintenance_waiting w
                  WHERE w.run_id = run.run_id ORDER BY w.account_id
    LOOP
        CONTINUE WHEN NOT coalesce((SELECT a.stripe_budget > 0 FROM credits.accounts a WHERE a.account_id = v_one), false);
        SELECT count(*) = (SELECT count(*) FROM credits.stripes s WHERE s.account_id = v_one) INTO v_free
          FROM (SELECT FROM credits.stripes s WHERE s.account_id = v_one FOR UPDATE SKIP LOCKED) x;
        IF v_free THEN
            PERFORM FROM credits.accounts a WHERE a.account_id = v_one FOR UPDATE SKIP LOCKED;
            IF FOUND THEN
                PERFORM credits_internal._lock_account(v_one, run.run_at);
                DELETE FROM credits.maintenance_waiting w WHERE w.run_id = run.run_id AND w.account_id = v_one;
                v_n := v_n + 1;
            END IF;
        END IF;
    END LOOP;
    IF v_n > 0 THEN
        UPDATE credits.maintenance_runs r SET batches = r.batches + 1, accounts = r.accounts + v_n
         WHERE r.run_id = run.run_id;
        RETURN 0;
    END IF;
    v_ids := credits_internal._lock_free(ARRAY(SELECT w.account_id FROM credits.maintenance_waiting w
                                                 WHERE w.run_id = run.run_id), true);
    IF v_ids <> '{}' THEN
        v_n := credits_internal._close_windows(v_ids, run.run_at);
        DELETE FROM credits.maintenance_waiting w WHERE w.run_id = run.run_id AND w.account_id = ANY (v_ids);
        UPDATE credits.maintenance_runs r
           SET batches = r.batches + 1, accounts = r.accounts + cardinality(v_ids), windows = r.windows + v_n
         WHERE r.run_id = run.run_id;
        RETURN 0;
    END IF;
    -- Still held (or still with a deadline to expire): come back in a second;
    -- every other account is done, and the held ones are correct at their
    -- next call meanwhile.
    IF EXISTS (SELECT FROM credits.maintenance_waiting w WHERE w.run_id = run.run_id)
       OR credits_internal._due_accounts(run.run_at, 1) <> '{}' THEN
        RETURN 1;
    END IF;

    UPDATE credits.maintenance_runs r SET phase = 'done', finished_at = clock_timestamp()
     WHERE r.run_id = run.run_id;
    UPDATE credits.maintenance_state
       SET run_id = NULL, done_through = greatest(done_through, run.run_at);
    RETURN greatest(0, extract(epoch FROM credits_internal._next_due(greatest(st.done_through, run.run_at)) - p_at));
END
$$;

-- The worker's step: like _maintenance_step, but an error is recorded in
-- maintenance_state (and the server log) instead of ending the worker, which
-- retries after `p_retry` seconds: returns -p_retry.
-- (The worker runs as the bootstrap superuser: every name it resolves, in
-- the exception handler too, comes from pg_catalog, never from a schema a
-- user can create objects in.)
CREATE FUNCTION credits_internal._worker_step(p_batch integer, p_retry double precision) RETURNS double precision
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN credits_internal._maintenance_step(credits.now(), p_batch);
EXCEPTION WHEN OTHERS THEN
    UPDATE credits.maintenance_state
       SET last_error = format('%s (SQLSTATE %s)', SQLERRM, SQLSTATE), last_error_at = clock_timestamp();
    RAISE WARNING 'credits maintenance: % (SQLSTATE %), retrying in % s', SQLERRM, SQLSTATE, p_retry;
    RETURN -p_retry;
END
$$;

-- One line on the latest run, for run_maintenance's NOTICEs.
CREATE FUNCTION credits_internal._maintenance_progress() RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
RETURN (SELECT format('credits maintenance: run %s at %s, %s: %s accounts, %s windows closed, %s expired; done through %s',
                      r.run_id, credits_internal._utc_text(r.run_at), r.phase, r.accounts, r.windows, r.expired,
                      coalesce(credits_internal._utc_text(s.done_through), 'never'))
          FROM credits.maintenance_state s
          LEFT JOIN LATERAL (SELECT * FROM credits.maintenance_runs mr ORDER BY mr.run_id DESC LIMIT 1) r ON true);

-- run_maintenance: do everything due at `at` (default credits.now()) now,
-- committing after each batch; a NOTICE reports progress. Idempotent: a
-- second call for the same instant finds nothing due. Call it outside a
-- transaction block (CALL credits.run_maintenance()), by hand or from pg_cron.
CREATE PROCEDURE run_maintenance(at timestamptz DEFAULT NULL)
-- (No SET search_path: a procedure with one cannot COMMIT. Every name is qualified.)
LANGUAGE plpgsql AS $$
DECLARE
    v_at    timestamptz := coalesce(run_maintenance.at, credits.now());
    v_batch integer := coalesce(nullif(pg_catalog.current_setting('credits.maintenance_batch_size', true), ''), '2000')::integer;
    v_steps integer := 0;
BEGIN
    -- (each batch is idempotent, so it commits without waiting for the WAL flush)
    WHILE pg_catalog.set_config('synchronous_commit', 'off', true) IS NOT NULL
          AND credits_internal._maintenance_step(v_at, v_batch) = 0 LOOP
        COMMIT;
        v_steps := v_steps + 1;
        IF v_steps % 10 = 0 THEN
            RAISE NOTICE '%', credits_internal._maintenance_progress();
        END IF;
    END LOOP;
    COMMIT;
    RAISE NOTICE '%', credits_internal._maintenance_progress();
END
$$;

-- maintenance_status: what the worker did last and what is due next.
--   lag = how long something has been due without being done (0 when caught up).
-- The pid of the worker serving this database (NULL: none does). Readers
-- without pg_monitor cannot see other roles' backends in pg_stat_activity,
-- hence SECURITY DEFINER.
CREATE FUNCTION credits_internal._worker_pid() RETURNS integer
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
RETURN (SELECT a.pid FROM pg_catalog.pg_stat_activity a
         WHERE a.backend_type = 'credits maintenance' AND a.datname = pg_catalog.current_database()
         LIMIT 1);

CREATE VIEW maintenance_status AS
SELECT credits_internal._worker_pid() AS worker_pid,
       s.done_through,
       s.run_id IS NOT NULL AS running,
       r.run_id AS last_run_id,
       r.run_at AS last_run_at,
       r.started_at AS last_run_started,
       r.finished_at AS last_run_finished,
       r.accounts AS last_run_accounts,
       r.windows AS last_run_windows,
       r.expired AS last_run_expired,
       greatest(d.next_due, credits.now()) AS next_run,
       -- NULL until the first run: nothing has been done to be late with
       CASE WHEN isfinite(d.next_due) THEN greatest(interval '0', credits.now() - d.next_due) END AS lag,
       s.last_error,
       s.last_error_at,
       -- accounts the current run skipped because a transaction held them
       w.accounts AS waiting_accounts,
       w.since AS waiting_since,
       -- the database the worker serves (credits.database; NULL when the
       -- library is not preloaded): another one's worker_pid is NULL
       pg_catalog.current_setting('credits.database', true) AS worker_database
  FROM credits.maintenance_state s
  CROSS JOIN LATERAL (SELECT credits_internal._next_due(s.done_through) AS next_due) d
  LEFT JOIN LATERAL (SELECT * FROM credits.maintenance_runs mr ORDER BY mr.run_id DESC LIMIT 1) r ON true
  CROSS JOIN LATERAL (SELECT count(*) AS accounts, min(mw.since) AS since FROM credits.maintenance_waiting mw
                       WHERE mw.run_id = s.run_id) w;
