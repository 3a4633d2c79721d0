//! Model-based property test: random sequences of subscribe, purchase,
//! grant, debit, try_debit, refund, reserve, settle, release, set_stripes
//! (which must change no outcome) and clock moves
//! (minutes, hours, days, month ends, Feb 29, and back: a clock behind an
//! account's windows, as a transaction that began before a boundary has)
//! run against the extension and against a small in-memory model of the
//! rules (SPEC §1 and §4) written here from scratch. After every step the
//! outcome (entry or SQLSTATE) and every account's balance() must agree,
//! and so must the balance rebuilt from the ledger alone
//! (credits.ledger_balance).
//!
//! Reproduce a failure: CREDITS_MODEL_SEED=<seed> cargo test --test model
//! More seeds (a soak): CREDITS_MODEL_SEEDS=500 CREDITS_MODEL_STEPS=1000 ...
//! (CREDITS_MODEL_FIRST_SEED=N starts at seed N, to split a soak over servers)

mod common;

use common::*;
use postgres::Client;
use std::collections::BTreeMap;

/// Amounts in ten-thousandths of a credit (the extension is exact to 4 places).
type Amount = i64;
const UNIT: Amount = 10_000;
const DAY_MS: i64 = 86_400_000;

// ---------------------------------------------------------------- calendar

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

fn day_of(ms: i64) -> i64 {
    ms.div_euclid(DAY_MS)
}

fn month_of(ms: i64) -> (i64, i64) {
    let (y, m, _) = civil_from_days(day_of(ms));
    (y, m)
}

fn next_month_start(ms: i64) -> i64 {
    let (y, m) = month_of(ms);
    let (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    days_from_civil(y, m, 1) * DAY_MS
}

fn timestamp(ms: i64) -> String {
    let (y, mo, d) = civil_from_days(day_of(ms));
    let t = ms.rem_euclid(DAY_MS);
    format!(
        "{y:04}-{mo:02}-{d:02} {:02}:{:02}:{:02}.{:03}+00",
        t / 3_600_000,
        t / 60_000 % 60,
        t / 1000 % 60,
        t % 1000
    )
}

fn text(a: Amount) -> String {
    let sign = if a < 0 { "-" } else { "" };
    let a = a.abs();
    let frac = format!("{:04}", a % UNIT);
    let frac = frac.trim_end_matches('0');
    if frac.is_empty() {
        format!("{sign}{}", a / UNIT)
    } else {
        format!("{sign}{}.{frac}", a / UNIT)
    }
}

// ---------------------------------------------------------------- the model

#[derive(Clone, Copy, PartialEq)]
struct Plan {
    name: &'static str,
    daily_limit: Option<Amount>,
    allowance: Amount,
    may_purchase: bool,
}

const PLANS: [Plan; 3] = [
    Plan {
        name: "free",
        daily_limit: Some(10 * UNIT),
        allowance: 25 * UNIT,
        may_purchase: false,
    },
    Plan {
        name: "pro",
        daily_limit: None,
        allowance: 100 * UNIT,
        may_purchase: true,
    },
    Plan {
        name: "legacy_basic",
        daily_limit: None,
        allowance: 0,
        may_purchase: true,
    },
];

#[derive(Clone)]
struct Grant {
    id: i64,
    remaining: Amount,
    expires: Option<i64>,
    /// Voided: gone, as if expired; its expiry still orders draws and refunds.
    voided: bool,
}

impl Grant {
    /// Usable at `now`.
    fn live(&self, now: i64) -> bool {
        !self.voided && self.expires.is_none_or(|e| e > now)
    }
}

#[derive(Clone)]
struct Hold {
    id: i64,
    amount: Amount,
    expires: i64,
    open: bool,
    /// How it resolved: settling or releasing it again the same way
    /// returns the first result, any other way is UC008.
    resolved: Option<Resolved>,
    /// Placed at (the windows it belongs to, SPEC §4.3).
    at: i64,
    /// The part held on grants; the rest is on the allowance of its month.
    from_grants: Amount,
}

#[derive(Clone, PartialEq)]
enum Resolved {
    Settled(Amount),
    Released,
    Expired,
}

#[derive(Clone)]
struct Debit {
    at: i64,
    seq: u64,
    amount: Amount,
    from_grants: Amount,
    draws: Vec<(i64, Amount)>, // grant id, net drawn (refunds subtract)
    refunded: Amount,
    grants_refunded: Amount,
}

#[derive(Clone)]
struct Account {
    plan: Plan,
    purchased: Amount,
    day: i64,
    daily_used: Amount,
    month: (i64, i64),
    monthly_used: Amount,
    epoch_seq: u64, // a plan change or capping purchase in `month` restarted the window at this step
    /// This month's plan changes (SPEC §4.1): (month, largest limit held, allowance used before the window)
    held: Option<((i64, i64), Amount, Amount)>,
    /// The instant the last write to the account decided at.
    last_at: i64,
    grants: Vec<Grant>,
    holds: Vec<Hold>,
}

struct State {
    daily_used: Amount,
    monthly_limit: Amount,
    monthly_used: Amount,
    granted: Amount,
    reserved: Amount,
    reserved_allowance: Amount,
    daily_available: Option<Amount>,
    allowance_available: Amount,
    grants_available: Amount,
}

impl Account {
    /// Time only moves forward per account (SPEC §4.6): a clock behind the
    /// account's windows or its last write counts at the later of the two.
    fn now(&self, now: i64) -> i64 {
        let (y, m) = self.month;
        now.max(self.last_at)
            .max(self.day * DAY_MS)
            .max(days_from_civil(y, m, 1) * DAY_MS)
    }

    /// (largest limit held this month, allowance used before the window), given the current limit.
    fn month_record(&self, now: i64, limit: Amount) -> (Amount, Amount) {
        match self.held {
            Some((month, peak, before)) if month == month_of(now) => (peak.max(limit), before),
            _ => (limit, 0),
        }
    }

    fn state(&self, now: i64) -> State {
        let daily_used = if self.day == day_of(now) {
            self.daily_used
        } else {
            0
        };
        let monthly_used = if self.month == month_of(now) {
            self.monthly_used
        } else {
            0
        };
        let monthly_limit = self.plan.allowance + self.purchased;
        let granted = self
            .grants
            .iter()
            .filter(|g| g.remaining > 0 && g.live(now))
            .map(|g| g.remaining)
            .sum();
        // Open holds are promises (SPEC §4.3, §4.4): today's against the
        // daily limit, this month's against the allowance (less what they
        // hold on grants), every hold's grant part against grants.
        let open: Vec<&Hold> = self
            .holds
            .iter()
            .filter(|h| h.open && h.expires > now)
            .collect();
        let reserved = open.iter().map(|h| h.amount).sum();
        let held_today: Amount = open
            .iter()
            .filter(|h| day_of(h.at) >= day_of(now))
            .map(|h| h.amount)
            .sum();
        let reserved_allowance: Amount = open
            .iter()
            .filter(|h| month_of(h.at) >= month_of(now))
            .map(|h| h.amount - h.from_grants)
            .sum();
        let reserved_grants: Amount = open.iter().map(|h| h.from_grants).sum();
        State {
            daily_used,
            monthly_limit,
            monthly_used,
            granted,
            reserved,
            reserved_allowance,
            daily_available: self
                .plan
                .daily_limit
                .map(|l| (l - daily_used - held_today).max(0)),
            allowance_available: (monthly_limit - monthly_used - reserved_allowance).max(0),
            grants_available: (granted - reserved_grants).max(0),
        }
    }

    fn fits(&self, now: i64, amount: Amount) -> bool {
        let s = self.state(now);
        s.daily_available.is_none_or(|d| amount <= d)
            && amount <= s.allowance_available + s.grants_available
    }

    /// What every write does first: windows that ended are closed, holds past their deadline freed.
    /// (Every call that locks the account moves its time on.)
    fn lock(&mut self, now: i64) {
        self.last_at = self.last_at.max(now);
        if self.day < day_of(now) && self.daily_used > 0 {
            self.day = day_of(now);
            self.daily_used = 0;
        }
        if self.month < month_of(now) {
            self.month = month_of(now);
            self.monthly_used = 0;
            self.epoch_seq = 0;
        }
        for h in self.holds.iter_mut().filter(|h| h.open && h.expires <= now) {
            h.open = false;
            h.resolved = Some(Resolved::Expired);
        }
    }

    /// Charge a checked amount: allowance first, then grants soonest-expiring first.
    fn charge(&mut self, now: i64, seq: u64, amount: Amount) -> Debit {
        let s = self.state(now);
        self.charge_with(now, seq, amount, s, now, true)
    }

    /// Charge `amount` given the availability `s`: allowance first — taking
    /// what this month's holds hold before any grant, those holds then
    /// backed by grants instead — then grants. `window_at`: the instant whose
    /// windows the debit counts in; `today`: whether today's counter counts it.
    fn charge_with(
        &mut self,
        now: i64,
        seq: u64,
        amount: Amount,
        s: State,
        window_at: i64,
        today: bool,
    ) -> Debit {
        let mut alloc = amount.min(s.allowance_available);
        let mut need = amount - alloc;
        let allowance_left = (s.monthly_limit - s.monthly_used).max(0);
        let mut shift = need
            .min(s.grants_available)
            .min(s.reserved_allowance.min(allowance_left));
        alloc += shift;
        need -= shift;
        let mut ids: Vec<usize> = (0..self.holds.len())
            .filter(|&i| {
                let h = &self.holds[i];
                h.open
                    && h.expires > now
                    && month_of(h.at) >= month_of(now)
                    && h.amount > h.from_grants
            })
            .collect();
        ids.sort_by_key(|&i| std::cmp::Reverse(self.holds[i].id));
        for i in ids {
            let take = shift.min(self.holds[i].amount - self.holds[i].from_grants);
            self.holds[i].from_grants += take;
            shift -= take;
        }
        let (from_grants, draws) = self.draw_grants(now, need);
        self.day = day_of(now);
        self.daily_used = s.daily_used + if today { amount } else { 0 };
        if self.month != month_of(now) {
            self.epoch_seq = 0;
        }
        self.month = month_of(now);
        self.monthly_used = s.monthly_used + alloc;
        Debit {
            at: window_at,
            seq,
            amount,
            from_grants,
            draws,
            refunded: 0,
            grants_refunded: 0,
        }
    }

    /// settle(hold, amount) on a locked account: the debit, or the SQLSTATE.
    /// Up to its amount a hold is charged whatever the limits say now (it
    /// keeps what it reserved, SPEC §4.4); a hold whose day has closed counts
    /// in its own windows and settles for at most its amount (§4.3).
    fn settle(
        &mut self,
        now: i64,
        seq: u64,
        id: i64,
        amount: Amount,
    ) -> Result<Debit, &'static str> {
        let i = self
            .holds
            .iter()
            .position(|h| h.id == id && h.open)
            .ok_or("UC008")?;
        self.holds[i].open = false;
        let hold = self.holds[i].clone();
        let mut s = self.state(now);
        let own = hold.amount - hold.from_grants;
        if day_of(hold.at) >= day_of(now) {
            if amount <= hold.amount {
                s.daily_available = s.daily_available.map(|d| d.max(amount));
                s.allowance_available = s.allowance_available.max(amount.min(own));
            }
            if s.daily_available.is_some_and(|d| amount > d)
                || amount > s.allowance_available + s.grants_available
            {
                return Err("UC001");
            }
            return Ok(self.charge_with(now, seq, amount, s, hold.at, true));
        }
        if amount > hold.amount {
            return Err("UC001");
        }
        let alloc = amount.min(own);
        if month_of(hold.at) >= month_of(now) {
            s.allowance_available = s.allowance_available.max(alloc);
            if amount > s.allowance_available + s.grants_available {
                return Err("UC001");
            }
            return Ok(self.charge_with(now, seq, amount, s, hold.at, false));
        }
        // its month has closed: the allowance part is charged there
        if amount - alloc > s.grants_available {
            return Err("UC001");
        }
        let (from_grants, draws) = self.draw_grants(now, amount - alloc);
        Ok(Debit {
            at: hold.at,
            seq,
            amount,
            from_grants,
            draws,
            refunded: 0,
            grants_refunded: 0,
        })
    }

    /// Draw `need` from the valid grants, soonest-expiring first.
    fn draw_grants(&mut self, now: i64, mut need: Amount) -> (Amount, Vec<(i64, Amount)>) {
        let from_grants = need;
        let mut order: Vec<usize> = (0..self.grants.len())
            .filter(|&i| self.grants[i].remaining > 0 && self.grants[i].live(now))
            .collect();
        order.sort_by_key(|&i| {
            (
                self.grants[i].expires.unwrap_or(i64::MAX),
                self.grants[i].id,
            )
        });
        let mut draws = Vec::new();
        for i in order {
            if need == 0 {
                break;
            }
            let take = need.min(self.grants[i].remaining);
            self.grants[i].remaining -= take;
            draws.push((self.grants[i].id, take));
            need -= take;
        }
        (from_grants, draws)
    }
}

/// What a call returned: an entry id (or NULL) or a SQLSTATE.
#[derive(Debug, PartialEq)]
enum Outcome {
    Entry,
    Null,
    Error(String),
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

fn call(client: &mut Client, now: i64, sql: &str) -> (Outcome, Option<i64>) {
    client
        .batch_execute(&format!(
            "SET credits.clock_override = '{}'",
            timestamp(now)
        ))
        .unwrap();
    match client.query_one(sql, &[]) {
        Ok(row) => match row.try_get::<_, Option<i64>>(0) {
            Ok(Some(id)) => (Outcome::Entry, Some(id)),
            Ok(None) => (Outcome::Null, None),
            Err(_) => (Outcome::Entry, None), // void
        },
        Err(e) => (
            Outcome::Error(
                e.code()
                    .map(|c| c.code().to_string())
                    .unwrap_or_else(|| e.to_string()),
            ),
            None,
        ),
    }
}

fn run_seed(seed: u64, steps: usize) {
    let replay_every: usize = std::env::var("CREDITS_MODEL_REPLAY_EVERY")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let mut client = connect();
    let mut rng = Rng(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1);
    let names: Vec<String> = (0..3).map(|i| format!("m{seed}_{i}")).collect();
    let mut model: BTreeMap<String, Account> = BTreeMap::new();
    let mut debits: BTreeMap<i64, (String, Debit)> = BTreeMap::new();
    // 2028 is a leap year: the walk crosses Feb 29 and two month ends.
    let mut now = days_from_civil(2028, 2, 27) * DAY_MS + 9 * 3_600_000;
    let quantities = [UNIT / 2, UNIT, 3 * UNIT, 15 * UNIT / 2, 12 * UNIT, 1];

    for step in 0..steps {
        let seq = step as u64 + 1;
        let who = names[rng.below(names.len())].clone();
        let op = rng.below(100);
        let context = format!("seed {seed}, step {step}, at {}", timestamp(now));
        let (sql, expected): (String, Outcome);
        type Apply = Box<
            dyn FnMut(
                &mut BTreeMap<String, Account>,
                Option<i64>,
                &mut BTreeMap<i64, (String, Debit)>,
            ),
        >;
        let mut on_success: Apply;

        if op < 8 {
            // the clock moves
            now += match rng.below(8) {
                0 => 60_000,
                1 => 3 * 3_600_000,
                2 => DAY_MS,
                3 => next_month_start(now) - now - 1, // 23:59:59.999 on the month's last day
                4 => 2,                               // across that boundary by a millisecond
                5 => 17 * 60_000,
                // back: a transaction that began before a boundary another
                // session crossed, or a clock set back
                6 => -1_000,
                _ => -3 * 3_600_000,
            };
            continue;
        } else if !model.contains_key(&who) || op < 12 {
            let plan = rng.pick(&PLANS);
            // the caller's billing system decides, now and then (SPEC §4.1)
            let fresh = rng.pick(&[None, None, Some(true), Some(false)]);
            sql = format!(
                "SELECT credits.subscribe('{who}', '{}', {})",
                plan.name,
                fresh.map_or("NULL".to_string(), |f| f.to_string())
            );
            expected = Outcome::Entry;
            let (who2, now2) = (who.clone(), now);
            on_success = Box::new(move |m, _, _| match m.get_mut(&who2) {
                None => {
                    m.insert(
                        who2.clone(),
                        Account {
                            plan,
                            purchased: 0,
                            day: day_of(now2),
                            daily_used: 0,
                            month: month_of(now2),
                            monthly_used: 0,
                            epoch_seq: 0,
                            held: None,
                            last_at: now2,
                            grants: vec![],
                            holds: vec![],
                        },
                    );
                }
                Some(a) => {
                    let now2 = a.now(now2);
                    a.lock(now2);
                    if a.plan == plan {
                        return;
                    }
                    let old = a.state(now2);
                    let purchased = if plan.may_purchase { a.purchased } else { 0 };
                    let new_limit = plan.allowance + purchased;
                    // an upgrade only above every limit held this month
                    let (peak, before) = a.month_record(now2, old.monthly_limit);
                    let upgrade = fresh.unwrap_or(new_limit > peak);
                    let used_so_far = before + old.monthly_used;
                    a.held = Some((
                        month_of(now2),
                        peak.max(new_limit),
                        if upgrade { used_so_far } else { 0 },
                    ));
                    a.plan = plan;
                    a.purchased = purchased;
                    a.month = month_of(now2);
                    a.monthly_used = if upgrade { 0 } else { used_so_far };
                    a.epoch_seq = seq;
                    a.last_at = now2;
                }
            });
        } else {
            let acct = model.get(&who).unwrap().clone();
            let mut locked = acct.clone();
            let anow = acct.now(now);
            locked.lock(anow);
            match op {
                16..=17 => {
                    // lower the recurring purchase from next month on: this
                    // month keeps what it had, as a grant until it ends
                    let amount = rng.pick(&[5 * UNIT, 41 * UNIT / 2]);
                    sql = format!("SELECT credits.reduce_purchase('{who}', {})", text(amount));
                    expected = if amount <= locked.purchased {
                        Outcome::Entry
                    } else {
                        Outcome::Error("UC013".into())
                    };
                    let (who2, now2) = (who.clone(), now);
                    on_success = Box::new(move |m, id, _| {
                        let a = m.get_mut(&who2).unwrap();
                        let now2 = a.now(now2);
                        a.lock(now2);
                        let keep = amount.min(a.state(now2).allowance_available);
                        a.purchased -= amount;
                        if keep > 0 {
                            // (its grant is the entry after the reduction's)
                            a.grants.push(Grant {
                                id: id.unwrap() + 1,
                                remaining: keep,
                                expires: Some(next_month_start(now2)),
                                voided: false,
                            });
                        }
                        a.last_at = now2;
                    });
                }
                24..=25 if !acct.grants.is_empty() => {
                    // void a grant: what is left of it goes, as an expiry would
                    let grant = acct.grants[rng.below(acct.grants.len())].id;
                    let live = locked.grants.iter().any(|g| g.id == grant && g.live(anow));
                    let voided = locked.grants.iter().any(|g| g.id == grant && g.voided);
                    sql = format!("SELECT credits.void_grant({grant})");
                    expected = if live || voided {
                        Outcome::Entry
                    } else {
                        Outcome::Error("UC012".into())
                    };
                    let (who2, now2) = (who.clone(), now);
                    on_success = Box::new(move |m, _, _| {
                        let a = m.get_mut(&who2).unwrap();
                        let now2 = a.now(now2);
                        a.lock(now2);
                        a.last_at = now2;
                        for g in a.grants.iter_mut().filter(|g| g.id == grant) {
                            g.voided = true;
                        }
                    });
                }
                12..=17 => {
                    let amount = rng.pick(&[5 * UNIT, 41 * UNIT / 2]);
                    sql = format!("SELECT credits.purchase('{who}', {})", text(amount));
                    expected = if locked.plan.may_purchase {
                        Outcome::Entry
                    } else {
                        Outcome::Error("UC006".into())
                    };
                    let (who2, now2) = (who.clone(), now);
                    on_success = Box::new(move |m, _, _| {
                        let a = m.get_mut(&who2).unwrap();
                        let now2 = a.now(now2);
                        a.lock(now2);
                        // worth its full amount at once (SPEC §4.2)
                        let s = a.state(now2);
                        let set_aside = (s.monthly_used - s.monthly_limit).max(0);
                        if set_aside > 0 {
                            a.monthly_used = s.monthly_limit;
                            a.epoch_seq = seq;
                        }
                        // (what it set aside still counts as used this month)
                        let (peak, before) = a.month_record(now2, s.monthly_limit + amount);
                        a.held = Some((month_of(now2), peak, before + set_aside));
                        a.purchased += amount;
                        a.last_at = now2;
                    });
                }
                18..=25 => {
                    let amount = rng.pick(&[3 * UNIT, 29 * UNIT / 4]);
                    let expires = rng
                        .pick(&[None, Some(2 * 3_600_000), Some(3 * DAY_MS)])
                        .map(|d| now + d);
                    sql = format!(
                        "SELECT credits.grant('{who}', {}, 'promotional', {})",
                        text(amount),
                        expires
                            .map(|e| format!("'{}'", timestamp(e)))
                            .unwrap_or("NULL".into())
                    );
                    expected = Outcome::Entry;
                    let (who2, now2) = (who.clone(), now);
                    on_success = Box::new(move |m, id, _| {
                        let a = m.get_mut(&who2).unwrap();
                        let now2 = a.now(now2);
                        a.lock(now2);
                        a.last_at = now2;
                        a.grants.push(Grant {
                            id: id.unwrap(),
                            remaining: amount,
                            expires,
                            voided: false,
                        });
                    });
                }
                26..=60 => {
                    let amount = rng.pick(&quantities);
                    let raise = rng.below(2) == 0;
                    let fits = locked.fits(anow, amount);
                    sql = format!(
                        "SELECT credits.{}('{who}', 'agent', {})",
                        if raise { "debit" } else { "try_debit" },
                        text(amount)
                    );
                    expected = match (fits, raise) {
                        (true, _) => Outcome::Entry,
                        (false, true) => Outcome::Error("UC001".into()),
                        (false, false) => Outcome::Null,
                    };
                    let (who2, now2) = (who.clone(), now);
                    on_success = Box::new(move |m, id, d| {
                        // a denial commits too, with the windows it closed
                        let a = m.get_mut(&who2).unwrap();
                        let now2 = a.now(now2);
                        a.lock(now2);
                        if let Some(id) = id {
                            let debit = a.charge(now2, seq, amount);
                            a.last_at = now2;
                            d.insert(id, (who2.clone(), debit));
                        }
                    });
                }
                61..=74 => {
                    let mine: Vec<i64> = debits
                        .iter()
                        .filter(|(_, (w, _))| *w == who)
                        .map(|(id, _)| *id)
                        .collect();
                    if mine.is_empty() {
                        continue;
                    }
                    let entry = mine[rng.below(mine.len())];
                    let amount = rng.pick(&[None, Some(UNIT / 4), Some(UNIT)]);
                    let left = debits[&entry].1.amount - debits[&entry].1.refunded;
                    sql = format!(
                        "SELECT credits.refund({entry}, {})",
                        amount.map(text).unwrap_or("NULL".into())
                    );
                    expected = match amount {
                        Some(a) if a > left => Outcome::Error("UC007".into()),
                        _ => Outcome::Entry,
                    };
                    let (who2, now2) = (who.clone(), now);
                    on_success = Box::new(move |m, _, d| {
                        let a = m.get_mut(&who2).unwrap();
                        let now2 = a.now(now2);
                        a.lock(now2);
                        let debit = &mut d.get_mut(&entry).unwrap().1;
                        let left = debit.amount - debit.refunded;
                        let amount = amount.unwrap_or(left);
                        if amount == 0 {
                            return; // nothing left: the last refund is returned again
                        }
                        let to_grants = amount.min(debit.from_grants - debit.grants_refunded);
                        // back to the grants drawn, latest-expiring (never-expiring) first
                        let mut order: Vec<(i64, Amount)> = debit
                            .draws
                            .iter()
                            .filter(|(_, n)| *n > 0)
                            .cloned()
                            .collect();
                        let expiry = |id: i64, a: &Account| {
                            a.grants.iter().find(|g| g.id == id).unwrap().expires
                        };
                        order.sort_by_key(|(id, _)| {
                            (
                                std::cmp::Reverse(expiry(*id, a).unwrap_or(i64::MAX)),
                                std::cmp::Reverse(*id),
                            )
                        });
                        let mut need = to_grants;
                        for (id, net) in order {
                            if need == 0 {
                                break;
                            }
                            let take = need.min(net);
                            // a grant that has expired since gets nothing back (SPEC §4.5)
                            let grant = a.grants.iter_mut().find(|g| g.id == id).unwrap();
                            if grant.live(now2) {
                                grant.remaining += take;
                            }
                            debit.draws.iter_mut().find(|(g, _)| *g == id).unwrap().1 -= take;
                            need -= take;
                        }
                        if a.day == day_of(debit.at) && a.day == day_of(now2) {
                            a.daily_used -= amount;
                        }
                        if a.month == month_of(debit.at)
                            && a.month == month_of(now2)
                            && debit.seq > a.epoch_seq
                        {
                            a.monthly_used -= amount - to_grants;
                        }
                        debit.refunded += amount;
                        debit.grants_refunded += to_grants;
                        a.last_at = now2;
                    });
                }
                75..=86 => {
                    let amount = rng.pick(&[UNIT, 9 * UNIT / 2, 20 * UNIT]);
                    let ttl = rng.pick(&[30 * 60_000, 2 * 3_600_000]);
                    let raise = rng.below(2) == 0;
                    let fits = locked.fits(anow, amount);
                    sql = format!(
                        "SELECT credits.{}('{who}', 'agent', {}, '{} milliseconds')",
                        if raise { "reserve" } else { "try_reserve" },
                        text(amount),
                        ttl
                    );
                    expected = match (fits, raise) {
                        (true, _) => Outcome::Entry,
                        (false, true) => Outcome::Error("UC001".into()),
                        (false, false) => Outcome::Null,
                    };
                    let (who2, now2) = (who.clone(), now);
                    on_success = Box::new(move |m, id, _| {
                        let a = m.get_mut(&who2).unwrap();
                        let now2 = a.now(now2);
                        a.lock(now2);
                        if let Some(id) = id {
                            let s = a.state(now2);
                            a.last_at = now2;
                            a.holds.push(Hold {
                                id,
                                amount,
                                expires: now2 + ttl,
                                open: true,
                                resolved: None,
                                at: now2,
                                from_grants: amount - amount.min(s.allowance_available),
                            });
                        }
                    });
                }
                87..=88 => {
                    // stripes on or off: an account's debits spread over
                    // stripes decide exactly as they would without
                    let stripes = rng.pick(&[0, 2, 4]);
                    sql = format!("SELECT credits.set_stripes('{who}', {stripes})");
                    expected = Outcome::Entry;
                    let (who2, now2) = (who.clone(), now);
                    on_success = Box::new(move |m, _, _| {
                        let a = m.get_mut(&who2).unwrap();
                        let now2 = a.now(now2);
                        a.lock(now2);
                        a.last_at = now2;
                    });
                }
                _ => {
                    if acct.holds.is_empty() {
                        continue;
                    }
                    let hold = acct.holds[rng.below(acct.holds.len())].clone();
                    let still_open = locked.holds.iter().any(|h| h.id == hold.id && h.open);
                    let settle = rng.below(3) != 0;
                    let amount = rng.pick(&[UNIT / 2, hold.amount, hold.amount + UNIT]);
                    sql = if settle {
                        format!("SELECT credits.settle({}, {})", hold.id, text(amount))
                    } else {
                        format!("SELECT credits.release({})", hold.id)
                    };
                    let resolved = locked
                        .holds
                        .iter()
                        .find(|h| h.id == hold.id)
                        .and_then(|h| h.resolved.clone());
                    let same_way = if settle {
                        resolved == Some(Resolved::Settled(amount))
                    } else {
                        resolved == Some(Resolved::Released)
                    };
                    let outcome = if same_way {
                        Ok(())
                    } else if settle {
                        locked
                            .clone()
                            .settle(anow, seq, hold.id, amount)
                            .map(|_| ())
                    } else if still_open {
                        Ok(())
                    } else {
                        Err("UC008")
                    };
                    expected = match outcome {
                        Ok(()) => Outcome::Entry,
                        Err(code) => Outcome::Error(code.into()),
                    };
                    let (who2, now2) = (who.clone(), now);
                    on_success = Box::new(move |m, id, d| {
                        let a = m.get_mut(&who2).unwrap();
                        let now2 = a.now(now2);
                        a.lock(now2);
                        a.last_at = now2;
                        if same_way {
                            // a replay: the first result, nothing changes
                        } else if settle {
                            let debit = a.settle(now2, seq, hold.id, amount).unwrap();
                            d.insert(id.unwrap(), (who2.clone(), debit));
                            a.holds
                                .iter_mut()
                                .filter(|h| h.id == hold.id)
                                .for_each(|h| h.resolved = Some(Resolved::Settled(amount)));
                        } else {
                            a.holds
                                .iter_mut()
                                .filter(|h| h.id == hold.id)
                                .for_each(|h| {
                                    h.open = false;
                                    h.resolved = Some(Resolved::Released);
                                });
                        }
                    });
                }
            }
        }

        let (got, id) = call(&mut client, now, &sql);
        assert_eq!(got, expected, "{context}: {sql}");
        if !matches!(got, Outcome::Error(_)) {
            on_success(&mut model, id, &mut debits);
        }
        // Every account agrees with the model after every step.
        for (name, a) in &model {
            let s = a.state(a.now(now));
            let total = s.allowance_available + s.grants_available;
            let want = format!(
                "plan={} daily_used={} monthly_limit={} monthly_used={} granted={} reserved={} available={}",
                a.plan.name,
                a.plan.daily_limit.map(|_| text(s.daily_used)).unwrap_or_default(),
                text(s.monthly_limit),
                text(s.monthly_used),
                text(s.granted),
                text(s.reserved),
                text(s.daily_available.unwrap_or(total).min(total)),
            );
            let have: String = client
                .query_one(
                    "SELECT format('plan=%s daily_used=%s monthly_limit=%s monthly_used=%s granted=%s reserved=%s available=%s',
                                   plan, daily_used, monthly_limit, monthly_used, granted_remaining, reserved, available)
                       FROM credits.balance($1)",
                    &[name],
                )
                .unwrap()
                .get(0);
            assert_eq!(have, want, "{context}: after {sql}, account {name}");
            // The ledger alone implies the same balance (credits.ledger_balance;
            // a soak checks it every CREDITS_MODEL_REPLAY_EVERY steps and last).
            if (step + 1) % replay_every != 0 && step + 1 != steps {
                continue;
            }
            let account_at = timestamp(a.now(now));
            let [from_ledger, shown]: [String; 2] = [
                // as of the account's time: a call that wrote nothing (a
                // denial) may have moved its windows on, and the clock back since
                "credits.ledger_balance($1, $2::text::timestamptz)",
                "(SELECT b.*, b.monthly_limit - p.monthly_allowance AS purchased
                    FROM credits.balance($1) b JOIN credits.plans p USING (plan))",
            ]
            .map(|source| {
                client
                    .query_one(
                        &format!(
                            "SELECT format('plan=%s daily_used=%s purchased=%s monthly_used=%s granted=%s reserved=%s',
                                           x.plan, CASE WHEN p.daily_limit IS NOT NULL THEN trim_scale(x.daily_used) END,
                                           trim_scale(x.purchased), trim_scale(x.monthly_used),
                                           trim_scale(x.granted_remaining), trim_scale(x.reserved))
                               FROM {source} x JOIN credits.plans p ON p.plan = x.plan WHERE $2::text IS NOT NULL"
                        ),
                        &[name, &account_at],
                    )
                    .unwrap()
                    .get(0)
            });
            assert_eq!(
                from_ledger, shown,
                "{context}: after {sql}, account {name}: ledger_balance"
            );
        }
    }
    assert_verified(&mut client);
}

#[test]
fn the_extension_agrees_with_the_model_over_random_operation_sequences() {
    let steps: usize = std::env::var("CREDITS_MODEL_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(250);
    let seeds: Vec<u64> = match std::env::var("CREDITS_MODEL_SEED") {
        Ok(seed) => vec![seed.parse().expect("CREDITS_MODEL_SEED is a number")],
        Err(_) => {
            let n: u64 = std::env::var("CREDITS_MODEL_SEEDS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(8);
            // (a soak split over several servers: CREDITS_MODEL_FIRST_SEED)
            let first: u64 = std::env::var("CREDITS_MODEL_FIRST_SEED")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(1);
            (first..first + n).collect()
        }
    };
    for seed in seeds {
        run_seed(seed, steps);
    }
}
