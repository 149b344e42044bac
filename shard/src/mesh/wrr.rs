//! Smooth weighted round-robin (PROTOCOL.md 9.8 step 2): the choice among peer links that
//! advertise a procedure, weighted by their provider counts, spread as evenly as the weights
//! allow (nginx's smooth weighting: each pick adds every weight to its candidate's credit,
//! takes the largest credit, and charges it the total).

/// The credits of one (realm, procedure) on one shard, indexed like the candidates passed to
/// [`SmoothWrr::pick`].
#[derive(Clone, Debug, Default)]
pub struct SmoothWrr {
    credit: Vec<i64>,
}

impl SmoothWrr {
    /// Picks among `weights` (one per candidate, in a stable order; 0: not a candidate) and
    /// returns the chosen index, or `None` when every weight is 0. When the candidates change,
    /// credits of indexes that no longer exist are dropped and new ones start at 0. The
    /// weights are read twice and nothing is allocated once the credits have their length.
    pub fn pick<I>(&mut self, weights: I) -> Option<usize>
    where
        I: IntoIterator<Item = u32>,
        I::IntoIter: Clone + ExactSizeIterator,
    {
        let weights = weights.into_iter();
        self.credit.resize(weights.len(), 0);
        let total: i64 = weights.clone().map(i64::from).sum();
        if total == 0 {
            return None;
        }
        let mut best: Option<usize> = None;
        for (i, w) in weights.enumerate() {
            if w == 0 {
                self.credit[i] = 0;
                continue;
            }
            self.credit[i] += i64::from(w);
            if best.is_none_or(|b| self.credit[i] > self.credit[b]) {
                best = Some(i);
            }
        }
        let chosen = best?;
        self.credit[chosen] -= total;
        Some(chosen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_candidate_with_weight_means_no_pick() {
        assert_eq!(SmoothWrr::default().pick([]), None);
        assert_eq!(SmoothWrr::default().pick([0, 0]), None);
    }

    #[test]
    fn picks_follow_the_weights_to_within_one_over_any_window() {
        for weights in [
            &[1u32, 1][..],
            &[3, 1],
            &[5, 1, 1],
            &[2, 0, 7, 1],
            &[1, 2, 3, 4],
        ] {
            let total: u32 = weights.iter().sum();
            let mut wrr = SmoothWrr::default();
            let mut counts = vec![0u32; weights.len()];
            for n in 1..=(total * 20) {
                counts[wrr.pick(weights.iter().copied()).unwrap()] += 1;
                for (i, &w) in weights.iter().enumerate() {
                    // Each candidate's share after n picks is within one of n * w / total.
                    let expected = f64::from(n) * f64::from(w) / f64::from(total);
                    let got = f64::from(counts[i]);
                    assert!(
                        (got - expected).abs() <= 1.0,
                        "{weights:?} after {n} picks: candidate {i} got {got}, expected {expected}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_candidate_whose_count_drops_to_zero_is_no_longer_picked() {
        let mut wrr = SmoothWrr::default();
        for _ in 0..5 {
            wrr.pick([1, 1]);
        }
        for _ in 0..10 {
            assert_eq!(wrr.pick([0, 3]), Some(1));
        }
    }
}
