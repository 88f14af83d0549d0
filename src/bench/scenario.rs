//! Load scenarios: who asks for what, in which order. Pure and seeded, so a run is reproducible
//! from its seed (the same seed gives the same requests in the same order).

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;

/// The shape of the demand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ScenarioKind {
    /// One item, stock far below demand; every user tries 1–3 times.
    Hot,
    /// Many items (≥ 1,000), modest demand each.
    Spread,
    /// Few users hammering one item, many times each.
    RetryStorm,
    /// Seed 000's experiment: one red packet, far more grabbers than shares (each user 1–3
    /// tries); shows how each path pays it out and how the shares' sizes are spread.
    RedPacket,
    /// Seed 001's experiment: stock for every request, each from a user of its own, so every
    /// request could succeed; shows each path's own cost, and the requests a path fails outright
    /// (`failed_retry`) although stock was left.
    Plenty,
}

impl ScenarioKind {
    /// Whether its item is a red packet (its stock counts shares, see [`ScenarioSpec::packet_total`]).
    pub fn is_red_packet(self) -> bool {
        self == ScenarioKind::RedPacket
    }
}

/// Sizes of a scenario.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioSpec {
    pub kind: ScenarioKind,
    /// Total purchase requests.
    pub requests: usize,
    /// Distinct buyers.
    pub users: usize,
    /// Units per item.
    pub stock_per_item: i64,
    /// Items on sale (1 for every scenario but `spread`).
    pub items: usize,
    pub seed: u64,
    /// `red-packet` only: the amount each packet pays out in all, in minor units (cents), split
    /// among its `stock_per_item` shares.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub packet_total: Option<i64>,
}

/// One purchase attempt: which item (index into the scenario's items) and which user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub item: usize,
    pub user: String,
}

impl ScenarioSpec {
    /// The attempts in the order they are sent.
    pub fn attempts(&self) -> Vec<Attempt> {
        let mut rng = StdRng::seed_from_u64(self.seed);
        let users = self.users.max(1);
        let items = self.items.max(1);
        let mut attempts = Vec::with_capacity(self.requests);
        match self.kind {
            ScenarioKind::Hot | ScenarioKind::RetryStorm | ScenarioKind::RedPacket => {
                // Each user in turn asks 1–3 times (retry-storm: many more), until the total is
                // reached; then the order is shuffled as concurrent clients would interleave.
                let (tries_min, tries_max) = match self.kind {
                    ScenarioKind::Hot | ScenarioKind::RedPacket => (1, 3),
                    _ => (self.requests / users / 2 + 1, self.requests / users * 2 + 1),
                };
                let mut user = 0;
                while attempts.len() < self.requests {
                    let tries = rng.random_range(tries_min..=tries_max);
                    for _ in 0..tries.min(self.requests - attempts.len()) {
                        attempts.push(Attempt {
                            item: 0,
                            user: format!("user-{}", user % users),
                        });
                    }
                    user += 1;
                }
            }
            ScenarioKind::Spread => {
                for _ in 0..self.requests {
                    attempts.push(Attempt {
                        item: rng.random_range(0..items),
                        user: format!("user-{}", rng.random_range(0..users)),
                    });
                }
            }
            ScenarioKind::Plenty => {
                // One request per user (while there are as many users as requests), so that no
                // request is refused for its user or for the stock: only a path can refuse it.
                for i in 0..self.requests {
                    attempts.push(Attempt {
                        item: 0,
                        user: format!("user-{}", i % users),
                    });
                }
            }
        }
        attempts.shuffle(&mut rng);
        attempts
    }

    /// The same sale grown (or cut) to `requests` requests: the scenario's attempts over and
    /// over, each round after the first by new buyers (`user-7-r2`), with the stock grown in
    /// proportion, so the share of requests that find stock left stays the scenario's.
    pub fn scaled(&self, requests: usize) -> (ScenarioSpec, Vec<Attempt>) {
        let base = self.attempts();
        let rounds_len = base.len().max(1);
        let attempts = (0..requests)
            .map(|i| {
                let a = &base[i % rounds_len];
                let round = i / rounds_len;
                Attempt {
                    item: a.item,
                    user: if round == 0 {
                        a.user.clone()
                    } else {
                        format!("{}-r{round}", a.user)
                    },
                }
            })
            .collect();
        let stock =
            (self.stock_per_item.max(1) as u64 * requests as u64).div_ceil(rounds_len as u64);
        let stock_per_item = (stock as i64).max(1);
        let spec = ScenarioSpec {
            requests,
            users: self.users * requests.div_ceil(rounds_len),
            stock_per_item,
            packet_total: self.packet_total_for(stock_per_item),
            ..self.clone()
        };
        (spec, attempts)
    }

    /// The packet's total grown (or cut) with its shares, so the average share stays the same;
    /// never below one minor unit per share.
    fn packet_total_for(&self, shares: i64) -> Option<i64> {
        let total = self.packet_total?;
        let grown = (i128::from(total) * i128::from(shares))
            .div_euclid(i128::from(self.stock_per_item.max(1)));
        Some(i64::try_from(grown).unwrap_or(i64::MAX).max(shares))
    }

    /// Units on sale in total.
    pub fn stock_total(&self) -> i64 {
        self.stock_per_item * self.items.max(1) as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    fn spec(kind: ScenarioKind) -> ScenarioSpec {
        ScenarioSpec {
            kind,
            requests: 3000,
            users: 1000,
            stock_per_item: 5,
            items: if kind == ScenarioKind::Spread {
                1000
            } else {
                1
            },
            seed: 42,
            packet_total: None,
        }
    }

    #[test]
    fn same_seed_same_attempts_other_seed_other_order() {
        let a = spec(ScenarioKind::Hot).attempts();
        assert_eq!(a, spec(ScenarioKind::Hot).attempts());
        let other = ScenarioSpec {
            seed: 43,
            ..spec(ScenarioKind::Hot)
        }
        .attempts();
        assert_ne!(a, other);
    }

    #[test]
    fn hot_is_one_item_each_user_one_to_three_times() {
        let a = spec(ScenarioKind::Hot).attempts();
        assert_eq!(a.len(), 3000);
        assert!(a.iter().all(|x| x.item == 0));
        let mut per_user: HashMap<&str, usize> = HashMap::new();
        for x in &a {
            *per_user.entry(&x.user).or_default() += 1;
        }
        // Users wrap around once the list is exhausted, so allow up to 2 rounds of 3.
        assert!(
            per_user.values().all(|&n| (1..=6).contains(&n)),
            "{per_user:?}"
        );
        assert!(per_user.len() >= 900, "most users take part");
    }

    #[test]
    fn a_scaled_sale_keeps_its_share_of_stock_and_its_first_round() {
        let s = spec(ScenarioKind::Hot);
        let (same, attempts) = s.scaled(3000);
        assert_eq!(attempts, s.attempts());
        assert_eq!(same.stock_per_item, 5);
        let (grown, attempts) = s.scaled(7500);
        assert_eq!(attempts.len(), 7500);
        assert_eq!(grown.stock_per_item, 13, "5 × 2.5, rounded up");
        assert_eq!(attempts[..3000], s.attempts()[..]);
        assert_eq!(attempts[3000].user, format!("{}-r1", attempts[0].user));
        assert_eq!(attempts[6000].user, format!("{}-r2", attempts[0].user));
        let (cut, _) = s.scaled(300);
        assert_eq!(cut.stock_per_item, 1);
    }

    #[test]
    fn a_scaled_red_packet_keeps_its_average_share() {
        let s = ScenarioSpec {
            packet_total: Some(500),
            ..spec(ScenarioKind::RedPacket)
        };
        let (grown, attempts) = s.scaled(7500);
        assert_eq!(attempts.len(), 7500);
        assert_eq!(grown.stock_per_item, 13);
        assert_eq!(grown.packet_total, Some(1300), "100 per share, as before");
        let (cut, _) = s.scaled(300);
        assert_eq!((cut.stock_per_item, cut.packet_total), (1, Some(100)));
        assert_eq!(spec(ScenarioKind::Hot).scaled(6000).0.packet_total, None);
    }

    #[test]
    fn plenty_asks_once_per_user_so_every_request_could_buy() {
        let s = ScenarioSpec {
            users: 3000,
            stock_per_item: 3000,
            ..spec(ScenarioKind::Plenty)
        };
        let a = s.attempts();
        let users: HashSet<_> = a.iter().map(|x| x.user.clone()).collect();
        assert_eq!(users.len(), 3000, "every request from a user of its own");
        assert!(a.iter().all(|x| x.item == 0));
        let (grown, more) = s.scaled(7000);
        let users: HashSet<_> = more.iter().map(|x| x.user.clone()).collect();
        assert_eq!(users.len(), 7000, "new buyers in each round");
        assert!(grown.stock_total() >= 7000, "stock for every request");
    }

    #[test]
    fn spread_covers_many_items() {
        let a = spec(ScenarioKind::Spread).attempts();
        let items: HashSet<_> = a.iter().map(|x| x.item).collect();
        assert!(items.len() > 900, "{}", items.len());
        assert!(a.iter().all(|x| x.item < 1000));
    }

    #[test]
    fn retry_storm_is_few_users_many_times() {
        let s = ScenarioSpec {
            users: 20,
            ..spec(ScenarioKind::RetryStorm)
        };
        let a = s.attempts();
        assert_eq!(a.len(), 3000);
        let users: HashSet<_> = a.iter().map(|x| x.user.clone()).collect();
        assert!(users.len() <= 20);
        assert!(a.len() / users.len() >= 50);
    }
}
