-- ledger_balance: an account's balance rebuilt from its ledger rows alone
-- (SPEC §1 "an append-only ledger from which every balance can be
-- recomputed"), as of `at`. An auditor's second opinion on balance(): it
-- shares no state with the tables that balance() reads (accounts, grants,
-- holds, grant_draws), only the plan catalog for the plan's limits.
--
-- It replays the entries in the order they were written (entry ids: every
-- write to an account holds its lock) by the rules of SPEC §1 and §4:
--   S  plan and purchases carried; a change restarts the monthly window at
--      the usage it recorded (0 for an upgrade);
--   P  purchase; one that recorded a usage set the window to it (§4.2);
--   G  a grant (amount, expiry in its metadata);
--   D  a charge: today's and this month's windows, or its hold's (§4.3); its
--      grant part drawn from the valid grants, soonest-expiring first;
--   R  a refund: back to the windows of its debit while they are current,
--      back to the grants drawn while they are valid (§4.5);
--   H  a hold; D or X with ref = the hold resolves it.
-- (E and F entries record what expired or was forfeited: no balance moves.)
CREATE FUNCTION ledger_balance(account_id text, at timestamptz DEFAULT NULL)
RETURNS TABLE (plan text, purchased numeric, daily_used numeric, monthly_used numeric,
               granted_remaining numeric, reserved numeric)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    p_account  text := ledger_balance.account_id;
    v_now      timestamptz := coalesce(ledger_balance.at, credits.now());
    l          credits.ledger;
    v_day      date;      -- the account's windows, as the entries move them
    v_month    date;
    v_daily    numeric := 0;
    v_monthly  numeric := 0;
    v_epoch    bigint := 0;
    v_plan     text;
    v_purchased numeric := 0;
    v_win      timestamptz;  -- the instant whose windows a charge counts in
    v_need     numeric;
    v_take     numeric;
    i          integer;
    -- grants: id, remaining, expiry, expired by an expiry entry
    g_id  bigint[] := '{}';  g_rem numeric[] := '{}';  g_exp timestamptz[] := '{}';  g_gone boolean[] := '{}';
    -- holds: id, amount, expiry, placed at, open
    h_id  bigint[] := '{}';  h_amt numeric[] := '{}';  h_exp timestamptz[] := '{}';  h_at timestamptz[] := '{}';
    h_open boolean[] := '{}';
    -- grant draws of each charge (refunds subtract): entry, grant, amount
    d_entry bigint[] := '{}';  d_grant bigint[] := '{}';  d_amt numeric[] := '{}';
    -- charges: entry, the instant whose windows it counted in
    c_entry bigint[] := '{}';  c_win timestamptz[] := '{}';
BEGIN
    PERFORM credits_internal._check_text(p_account, 'account_id');
    FOR l IN SELECT * FROM credits.ledger le WHERE le.account_id = p_account ORDER BY le.entry_id LOOP
        -- Windows only move forward (§4.6): entries stamped at an earlier
        -- deadline or boundary (E, X, F) do not move them back.
        IF v_day IS NULL OR credits_internal._utc_day(l.at) > v_day THEN
            v_day := credits_internal._utc_day(l.at);
            v_daily := 0;
        END IF;
        IF v_month IS NULL OR credits_internal._utc_month(l.at) > v_month THEN
            v_month := credits_internal._utc_month(l.at);
            v_monthly := 0;
            v_epoch := 0;
        END IF;
        CASE l.kind
        WHEN 'S' THEN
            v_plan := l.metadata ->> 'plan';
            v_purchased := (l.metadata ->> 'purchased')::numeric;
            IF l.metadata ? 'monthly_used' OR (l.metadata ->> 'upgrade')::boolean THEN
                v_monthly := coalesce((l.metadata ->> 'monthly_used')::numeric, 0);
                v_epoch := l.entry_id;
            END IF;
        WHEN 'P' THEN
            v_purchased := v_purchased + l.amount;
            IF l.metadata ? 'monthly_used' THEN
                v_monthly := (l.metadata ->> 'monthly_used')::numeric;
                v_epoch := l.entry_id;
            END IF;
        WHEN 'G' THEN
            g_id := g_id || l.entry_id;
            g_rem := g_rem || l.amount;
            g_exp := g_exp || (l.metadata ->> 'expires_at')::timestamptz;
            g_gone := g_gone || false;
        WHEN 'E' THEN
            IF NOT l.metadata ? 'refund' THEN
                g_gone[array_position(g_id, l.ref)] := true;
            END IF;
        WHEN 'H' THEN
            h_id := h_id || l.entry_id;
            h_amt := h_amt || l.amount;
            h_exp := h_exp || (l.metadata ->> 'expires_at')::timestamptz;
            h_at := h_at || l.at;
            h_open := h_open || true;
        WHEN 'X' THEN
            h_open[array_position(h_id, l.ref)] := false;
        WHEN 'D' THEN
            v_win := l.at;
            IF l.ref IS NOT NULL THEN
                i := array_position(h_id, l.ref);
                h_open[i] := false;
                v_win := h_at[i];
            END IF;
            c_entry := c_entry || l.entry_id;
            c_win := c_win || v_win;
            IF credits_internal._utc_day(v_win) = v_day THEN
                v_daily := v_daily + l.amount;
            END IF;
            IF credits_internal._utc_month(v_win) = v_month THEN
                v_monthly := v_monthly + l.amount - coalesce(l.from_grants, 0);
            END IF;
            -- its grant part, soonest-expiring first
            v_need := coalesce(l.from_grants, 0);
            CONTINUE WHEN v_need = 0;
            FOR i IN SELECT k FROM generate_subscripts(g_id, 1) k
                      WHERE g_rem[k] > 0 AND NOT g_gone[k] AND (g_exp[k] IS NULL OR g_exp[k] > l.at)
                      ORDER BY g_exp[k] NULLS LAST, g_id[k] LOOP
                EXIT WHEN v_need = 0;
                v_take := least(v_need, g_rem[i]);
                g_rem[i] := g_rem[i] - v_take;
                d_entry := d_entry || l.entry_id;  d_grant := d_grant || g_id[i];  d_amt := d_amt || v_take;
                v_need := v_need - v_take;
            END LOOP;
        WHEN 'R' THEN
            v_win := c_win[array_position(c_entry, l.ref)];
            IF credits_internal._utc_day(v_win) = v_day THEN
                v_daily := v_daily - l.amount;
            END IF;
            IF credits_internal._utc_month(v_win) = v_month AND l.ref > v_epoch THEN
                v_monthly := v_monthly - (l.amount - coalesce(l.from_grants, 0));
            END IF;
            -- back to the grants its debit drew, latest-expiring first, while valid
            v_need := coalesce(l.from_grants, 0);
            CONTINUE WHEN v_need = 0;
            FOR i IN SELECT k FROM generate_subscripts(g_id, 1) k
                      WHERE (SELECT coalesce(sum(d_amt[m]), 0) FROM generate_subscripts(d_entry, 1) m
                              WHERE d_entry[m] = l.ref AND d_grant[m] = g_id[k]) > 0
                      ORDER BY g_exp[k] DESC NULLS FIRST, g_id[k] DESC LOOP
                EXIT WHEN v_need = 0;
                SELECT least(v_need, sum(d_amt[m])) INTO v_take FROM generate_subscripts(d_entry, 1) m
                 WHERE d_entry[m] = l.ref AND d_grant[m] = g_id[i];
                d_entry := d_entry || l.ref;  d_grant := d_grant || g_id[i];  d_amt := d_amt || -v_take;
                IF NOT g_gone[i] AND (g_exp[i] IS NULL OR g_exp[i] > l.at) THEN
                    g_rem[i] := g_rem[i] + v_take;
                END IF;
                v_need := v_need - v_take;
            END LOOP;
        ELSE
            NULL;  -- F: forfeited, nothing moves
        END CASE;
    END LOOP;
    IF v_plan IS NULL THEN
        PERFORM credits_internal._raise_unknown_account(p_account);
    END IF;

    -- As of `at`, or the account's own time if that is later.
    v_now := greatest(v_now, (SELECT max(le.at) FROM credits.ledger le WHERE le.account_id = p_account));
    plan := v_plan;
    purchased := v_purchased;
    daily_used := CASE WHEN credits_internal._utc_day(v_now) = v_day THEN v_daily ELSE 0 END;
    monthly_used := CASE WHEN credits_internal._utc_month(v_now) = v_month THEN v_monthly ELSE 0 END;
    granted_remaining := coalesce((SELECT sum(g_rem[k]) FROM generate_subscripts(g_id, 1) k
                                    WHERE NOT g_gone[k] AND (g_exp[k] IS NULL OR g_exp[k] > v_now)), 0);
    reserved := coalesce((SELECT sum(h_amt[k]) FROM generate_subscripts(h_id, 1) k
                           WHERE h_open[k] AND h_exp[k] > v_now), 0);
    RETURN NEXT;
END
$$;
