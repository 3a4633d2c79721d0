-- The baselines credits.debit() is measured against (bench/run).
--
-- floor: the least a debit can be: one UPDATE of a balance row guarded by
-- balance >= n and one INSERT of a ledger row, in one transaction.
--
-- base_debit(): what a user would otherwise write by hand in PL/pgSQL with
-- the same checks as credits.debit: UTC daily and monthly windows, an
-- idempotency key, a ledger row. Straightforward, not tuned.

CREATE TABLE floor_balance (account_id text PRIMARY KEY, balance numeric NOT NULL);
CREATE TABLE floor_ledger (entry_id bigserial PRIMARY KEY, account_id text NOT NULL,
                           amount numeric NOT NULL, at timestamptz NOT NULL DEFAULT now());
CREATE INDEX ON floor_ledger (account_id, entry_id);

CREATE TABLE base_accounts (
    account_id    text PRIMARY KEY,
    daily_limit   numeric,
    monthly_limit numeric NOT NULL,
    day           date NOT NULL,
    daily_used    numeric NOT NULL DEFAULT 0,
    month         date NOT NULL,
    monthly_used  numeric NOT NULL DEFAULT 0
);
CREATE TABLE base_ledger (
    entry_id   bigserial PRIMARY KEY,
    account_id text NOT NULL,
    at         timestamptz NOT NULL,
    amount     numeric NOT NULL,
    idem_key   text
);
CREATE INDEX ON base_ledger (account_id, entry_id);
CREATE UNIQUE INDEX ON base_ledger (account_id, idem_key) WHERE idem_key IS NOT NULL;

CREATE FUNCTION base_debit(p_account text, p_amount numeric, p_key text DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    a       base_accounts;
    v_entry bigint;
    v_today date := (now() AT TIME ZONE 'UTC')::date;
    v_month date := date_trunc('month', now() AT TIME ZONE 'UTC')::date;
BEGIN
    IF p_amount IS NULL OR p_amount <= 0 THEN
        RAISE EXCEPTION 'invalid amount %', p_amount;
    END IF;
    SELECT * INTO a FROM base_accounts WHERE account_id = p_account FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown account %', p_account;
    END IF;
    IF p_key IS NOT NULL THEN
        SELECT entry_id INTO v_entry FROM base_ledger WHERE account_id = p_account AND idem_key = p_key;
        IF FOUND THEN
            RETURN v_entry;
        END IF;
    END IF;
    IF a.day <> v_today THEN
        a.day := v_today;
        a.daily_used := 0;
    END IF;
    IF a.month <> v_month THEN
        a.month := v_month;
        a.monthly_used := 0;
    END IF;
    IF a.daily_limit IS NOT NULL AND a.daily_used + p_amount > a.daily_limit THEN
        RAISE EXCEPTION 'daily limit reached for %', p_account;
    END IF;
    IF a.monthly_used + p_amount > a.monthly_limit THEN
        RAISE EXCEPTION 'monthly limit reached for %', p_account;
    END IF;
    UPDATE base_accounts
       SET day = a.day, daily_used = a.daily_used + p_amount,
           month = a.month, monthly_used = a.monthly_used + p_amount
     WHERE account_id = p_account;
    INSERT INTO base_ledger (account_id, at, amount, idem_key)
    VALUES (p_account, now(), p_amount, p_key)
    RETURNING entry_id INTO v_entry;
    RETURN v_entry;
END
$$;
