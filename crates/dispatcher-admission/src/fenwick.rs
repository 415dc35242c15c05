//! A growable Fenwick (binary indexed) tree over sequence numbers: O(log n) rank of a waiting ticket.

/// Counts of present sequence numbers, 1-based, growing as sequence numbers are issued.
#[derive(Debug, Default, Clone)]
pub(crate) struct Fenwick {
    tree: Vec<i64>,
}

impl Fenwick {
    /// Sum of values at indices 1..=i.
    pub(crate) fn prefix(&self, mut i: usize) -> i64 {
        i = i.min(self.tree.len());
        let mut s = 0;
        while i > 0 {
            s += self.tree[i - 1];
            i &= i - 1;
        }
        s
    }

    /// Adds `delta` at index `i` (1-based), growing the tree as needed.
    pub(crate) fn add(&mut self, i: usize, delta: i64) {
        debug_assert!(i > 0);
        while self.tree.len() < i {
            // Appending index n: its node covers (n - lowbit(n), n], all zero at the new index itself.
            let n = self.tree.len() + 1;
            let low = n & n.wrapping_neg();
            let covered = self.prefix(n - 1) - self.prefix(n - low);
            self.tree.push(covered);
        }
        let mut j = i;
        while j <= self.tree.len() {
            self.tree[j - 1] += delta;
            j += j & j.wrapping_neg();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn prefix_matches_naive(ops in proptest::collection::vec((1usize..300, -3i64..4), 0..200)) {
            let mut f = Fenwick::default();
            let mut naive = vec![0i64; 301];
            for (i, d) in ops {
                f.add(i, d);
                naive[i] += d;
                for q in [0usize, 1, i / 2, i, 150, 300] {
                    let want: i64 = naive[1..=q.min(300)].iter().sum();
                    prop_assert_eq!(f.prefix(q), want);
                }
            }
        }
    }
}
