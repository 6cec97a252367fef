//! A hard USD cap per run and per expert. Before a request is sent its worst case
//! (prices x token bounds) is reserved; the reply settles it at `usage.cost` (or at
//! the cost its token counts give, or at the worst case when the server says nothing,
//! or when a timeout leaves it unknown whether the work was done). Spent plus reserved
//! never exceeds a cap, however many requests are in flight, so spend cannot either
//! as long as no server charges more than the worst case it was quoted for.
//!
//! ```
//! use openrouter_gen::budget::Budget;
//!
//! let budget = Budget::new(1.0);
//! budget.set_expert_cap("arithmetic", 0.5);
//! let first = budget.reserve("arithmetic", 0.4).unwrap();
//! assert!(budget.reserve("arithmetic", 0.2).is_err()); // 0.6 > the expert's 0.5
//! budget.settle(first, 0.1);
//! assert!((budget.spent() - 0.1).abs() < 1e-12);
//! assert!(budget.reserve("arithmetic", 0.2).is_ok());
//! ```

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// Spend and reservations of one account (the run or an expert).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Account {
    /// The cap in USD (infinite when unset).
    pub cap: f64,
    /// Settled spend.
    pub spent: f64,
    /// Reserved by requests in flight.
    pub reserved: f64,
    /// Most ever reserved at once.
    pub peak_reserved: f64,
    /// Settled requests that cost more than their reservation (a server charging past
    /// its quoted prices). Always 0 unless prices are wrong.
    pub overruns: u64,
}

impl Account {
    fn unlimited() -> Account {
        Account {
            cap: f64::INFINITY,
            ..Account::default()
        }
    }

    fn fits(&self, amount: f64) -> bool {
        self.spent + self.reserved + amount <= self.cap + 1e-12
    }
}

/// A reserved amount, to be settled or released exactly once.
#[derive(Debug)]
#[must_use = "a reservation must be settled or released"]
pub struct Reservation {
    expert: String,
    amount: f64,
}

impl Reservation {
    /// USD reserved.
    pub fn amount(&self) -> f64 {
        self.amount
    }
}

/// Why a reservation was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "{account} cap ${cap:.4} reached: ${spent:.4} spent, ${reserved:.4} reserved, ${wanted:.4} more wanted"
)]
pub struct Exhausted {
    /// `run` or `expert <name>`.
    pub account: String,
    /// Its cap.
    pub cap: f64,
    /// Spent.
    pub spent: f64,
    /// Reserved.
    pub reserved: f64,
    /// What the refused request needed.
    pub wanted: f64,
}

#[derive(Debug)]
struct Ledger {
    run: Account,
    experts: BTreeMap<String, Account>,
}

/// The budget, shared by every worker thread.
#[derive(Debug)]
pub struct Budget {
    ledger: Mutex<Ledger>,
}

impl Budget {
    /// A budget with a run cap in USD (`f64::INFINITY` for none).
    pub fn new(run_cap: f64) -> Budget {
        Budget {
            ledger: Mutex::new(Ledger {
                run: Account {
                    cap: run_cap,
                    ..Account::unlimited()
                },
                experts: BTreeMap::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ledger> {
        // A worker that panicked mid-update cannot leave the ledger inconsistent:
        // every update is a handful of float additions done before the guard drops.
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Caps `expert`'s own spend too.
    pub fn set_expert_cap(&self, expert: &str, cap: f64) {
        let mut ledger = self.lock();
        ledger
            .experts
            .entry(expert.to_owned())
            .or_insert_with(Account::unlimited)
            .cap = cap;
    }

    /// Reserves `amount` for a request of `expert`, or says which cap it would break.
    pub fn reserve(&self, expert: &str, amount: f64) -> Result<Reservation, Exhausted> {
        let amount = if amount.is_finite() {
            amount.max(0.0)
        } else {
            f64::INFINITY
        };
        let mut ledger = self.lock();
        let refuse = |account: String, a: &Account| Exhausted {
            account,
            cap: a.cap,
            spent: a.spent,
            reserved: a.reserved,
            wanted: amount,
        };
        if !ledger.run.fits(amount) {
            return Err(refuse("run".into(), &ledger.run));
        }
        let account = ledger
            .experts
            .entry(expert.to_owned())
            .or_insert_with(Account::unlimited);
        if !account.fits(amount) {
            return Err(refuse(format!("expert `{expert}`"), account));
        }
        let Ledger { run, experts } = &mut *ledger;
        let expert_account = experts.get_mut(expert).expect("inserted above");
        for account in [run, expert_account] {
            account.reserved += amount;
            account.peak_reserved = account.peak_reserved.max(account.reserved);
        }
        Ok(Reservation {
            expert: expert.to_owned(),
            amount,
        })
    }

    /// Settles a reservation at what the request actually cost.
    pub fn settle(&self, reservation: Reservation, actual: f64) {
        let actual = if actual.is_finite() && actual >= 0.0 {
            actual
        } else {
            reservation.amount
        };
        let mut ledger = self.lock();
        let Ledger { run, experts } = &mut *ledger;
        let expert = experts
            .get_mut(&reservation.expert)
            .expect("reserved accounts exist");
        for account in [run, expert] {
            account.reserved = (account.reserved - reservation.amount).max(0.0);
            account.spent += actual;
            if actual > reservation.amount + 1e-12 {
                account.overruns += 1;
            }
        }
    }

    /// Releases a reservation whose request was never sent or certainly not charged.
    pub fn release(&self, reservation: Reservation) {
        self.settle(reservation, 0.0);
    }

    /// USD spent by the run.
    pub fn spent(&self) -> f64 {
        self.lock().run.spent
    }

    /// The run's account.
    pub fn run_account(&self) -> Account {
        self.lock().run
    }

    /// Every expert's account.
    pub fn expert_accounts(&self) -> BTreeMap<String, Account> {
        self.lock().experts.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;

    #[test]
    fn unknown_cost_keeps_the_reservation() {
        let budget = Budget::new(1.0);
        let r = budget.reserve("e", 0.3).unwrap();
        budget.settle(r, f64::NAN);
        assert!((budget.spent() - 0.3).abs() < 1e-12);
        let r = budget.reserve("e", 0.3).unwrap();
        budget.release(r);
        assert!((budget.spent() - 0.3).abs() < 1e-12);
        assert_eq!(budget.run_account().reserved, 0.0);
    }

    #[test]
    fn refusal_names_the_account() {
        let budget = Budget::new(1.0);
        budget.set_expert_cap("code", 0.1);
        let e = budget.reserve("code", 0.2).unwrap_err();
        assert_eq!(e.account, "expert `code`");
        let e = budget.reserve("other", 2.0).unwrap_err();
        assert_eq!(e.account, "run");
        assert!(e.to_string().contains("run cap $1.0000 reached"), "{e}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Random concurrency, prices and failures: spend never exceeds the caps when
        /// no server charges past its quote.
        #[test]
        fn spend_never_exceeds_the_caps(
            threads in 1usize..12,
            requests in 1usize..60,
            run_cap in 0.01f64..2.0,
            expert_cap in 0.01f64..2.0,
            seed in any::<u64>(),
        ) {
            let budget = Arc::new(Budget::new(run_cap));
            budget.set_expert_cap("a", expert_cap);
            let handles: Vec<_> = (0..threads).map(|t| {
                let budget = Arc::clone(&budget);
                std::thread::spawn(move || {
                    let mut rng = synth_tasks::Rng::new(seed ^ t as u64);
                    for _ in 0..requests {
                        let expert = if rng.chance(0.5) { "a" } else { "b" };
                        let worst = (rng.next_u64() % 1000) as f64 / 4000.0;
                        if let Ok(r) = budget.reserve(expert, worst) {
                            let run = budget.run_account();
                            assert!(run.spent + run.reserved <= run_cap + 1e-9);
                            match rng.next_u64() % 4 {
                                0 => budget.release(r),               // failed, not charged
                                1 => budget.settle(r, f64::NAN),      // cost unknown: worst
                                _ => {
                                    let fraction = (rng.next_u64() % 1001) as f64 / 1000.0;
                                    budget.settle(r, worst * fraction)
                                }
                            }
                        }
                    }
                })
            }).collect();
            for h in handles {
                h.join().unwrap();
            }
            let run = budget.run_account();
            prop_assert!(run.spent <= run_cap + 1e-9, "{} > {}", run.spent, run_cap);
            prop_assert!(run.reserved.abs() < 1e-9);
            let experts = budget.expert_accounts();
            if let Some(a) = experts.get("a") {
                prop_assert!(a.spent <= expert_cap + 1e-9);
            }
            prop_assert_eq!(run.overruns, 0);
        }
    }
}
