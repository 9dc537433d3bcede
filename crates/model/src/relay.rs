//! The relay tree of one sync (`[cluster] fanout`): the MN sends each payload to one root SN,
//! and every SN forwards what it receives to at most `fanout` children. Pure.

/// The parent of each SN (indexes into `racks`, which lists the SNs of one sync in config order
/// with their `rack`): `None` for the root (fed by the MN). Breadth first, so the depth is about
/// log_k(n); each parent takes its children from its own rack first, in config order, then from
/// the others. `fanout = 0` (star): every SN's parent is the MN.
pub fn tree(racks: &[Option<&str>], fanout: usize) -> Vec<Option<usize>> {
    let mut parent = vec![None; racks.len()];
    if fanout == 0 || racks.is_empty() {
        return parent;
    }
    let mut left: Vec<usize> = (1..racks.len()).collect();
    let mut queue = std::collections::VecDeque::from([0usize]);
    while let Some(p) = queue.pop_front() {
        if left.is_empty() {
            break;
        }
        let mut picked = Vec::with_capacity(fanout);
        // Same rack first (an SN without a rack matches none), then whoever is next.
        for same in [true, false] {
            let mut i = 0;
            while i < left.len() && picked.len() < fanout {
                let c = left[i];
                let local = racks[p].is_some() && racks[c] == racks[p];
                if local == same {
                    picked.push(left.remove(i));
                } else {
                    i += 1;
                }
            }
        }
        for c in picked {
            parent[c] = Some(p);
            queue.push_back(c);
        }
    }
    parent
}

#[cfg(test)]
mod tests {
    use super::*;

    fn depth(parent: &[Option<usize>], mut i: usize) -> usize {
        let mut d = 0;
        while let Some(p) = parent[i] {
            i = p;
            d += 1;
        }
        d
    }

    #[test]
    fn star_when_fanout_is_zero() {
        assert_eq!(tree(&[None; 4], 0), vec![None; 4]);
        assert!(tree(&[], 2).is_empty());
    }

    #[test]
    fn a_chain_for_fanout_one() {
        assert_eq!(tree(&[None; 4], 1), vec![None, Some(0), Some(1), Some(2)]);
    }

    #[test]
    fn balanced_with_one_root_and_at_most_k_children() {
        // Fanout 2 over 7 SNs is the complete binary tree: 0 -> 1, 2; 1 -> 3, 4; 2 -> 5, 6.
        assert_eq!(tree(&[None; 7], 2), vec![None, Some(0), Some(0), Some(1), Some(1), Some(2), Some(2)]);
        for (n, k) in [(64, 2), (64, 3), (64, 8), (1000, 4), (5, 16)] {
            let t = tree(&vec![None; n], k);
            assert_eq!(t.iter().filter(|p| p.is_none()).count(), 1, "one root (the MN's one copy)");
            for p in 0..n {
                assert!(t.iter().filter(|q| **q == Some(p)).count() <= k, "n={n} k={k}: {p} has too many");
            }
            // Breadth first: the depth of a complete k-ary tree, ceil(log_k(n(k-1)+1)) - 1.
            let mut most = 0;
            let (mut cap, mut level) = (1usize, 1usize);
            while cap < n {
                level *= k;
                cap += level;
                most += 1;
            }
            assert!((0..n).all(|i| depth(&t, i) <= most), "n={n} k={k}: deeper than {most}");
        }
    }

    #[test]
    fn children_come_from_the_parents_rack_first() {
        let r = [Some("a"), Some("b"), Some("a"), Some("b"), Some("a"), None];
        let t = tree(&r, 2);
        // The root (rack a) takes 2 and 4 (rack a) before 1; 2 takes 1 (none left in a), then 3;
        // 4 takes 5; 1 (rack b) is left nothing.
        assert_eq!(t, vec![None, Some(2), Some(0), Some(2), Some(0), Some(4)]);
        // Every rack-b SN hangs off rack b once a rack-b parent exists with room.
        let r = [Some("a"), Some("b"), Some("b"), Some("b"), Some("a")];
        let t = tree(&r, 1);
        assert_eq!(t, vec![None, Some(4), Some(1), Some(2), Some(0)]);
    }
}
