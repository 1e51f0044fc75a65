//! The acknowledgement point of one gateway: the highest sequence number with every batch up to
//! it committed. Batches of one gateway reach different replicas and commit in any order, so a
//! replica acknowledges only this contiguous prefix, never the batch it just stored: a gap is a
//! batch still in flight elsewhere (or lost with a replica), which the gateway must keep.

/// `acked` advanced over `committed`, the committed sequence numbers above it in ascending
/// order: as far as they follow one another without a gap.
#[must_use]
pub fn advance(acked: u64, committed: impl IntoIterator<Item = u64>) -> u64 {
    let mut upto = acked;
    for seq in committed {
        if seq <= upto {
            continue; // at or below the point already: nothing to add
        }
        if seq != upto + 1 {
            break;
        }
        upto = seq;
    }
    upto
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn stops_at_the_first_gap() {
        assert_eq!(advance(0, [1, 2, 3, 5]), 3);
        assert_eq!(advance(0, [2, 3]), 0);
        assert_eq!(advance(4, [5, 6, 8]), 6);
        assert_eq!(advance(4, []), 4);
        assert_eq!(advance(4, [3, 4, 5]), 5);
    }

    proptest! {
        /// Whatever order batches commit in, the point is the largest n with 1..=n all
        /// committed, and it never moves back.
        #[test]
        fn is_the_contiguous_prefix_in_any_commit_order(
            seqs in proptest::collection::vec(1u64..40, 0..60)
        ) {
            let mut committed = BTreeSet::new();
            let mut acked = 0;
            for seq in seqs {
                committed.insert(seq);
                let next = advance(acked, committed.range(acked + 1..).copied());
                prop_assert!(next >= acked);
                acked = next;
                let expected = (1..).take_while(|n| committed.contains(n)).last().unwrap_or(0);
                prop_assert_eq!(acked, expected);
            }
        }
    }
}
