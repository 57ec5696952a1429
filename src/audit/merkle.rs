//! RFC 9162 (Certificate Transparency v2) Merkle tree over audit events: leaf hashes,
//! tree heads, inclusion and consistency proofs, and their verification.
//!
//! `leaf = SHA-256(0x00 ‖ entry)`, `node = SHA-256(0x01 ‖ left ‖ right)`, empty tree =
//! SHA-256(""). Proof generation follows RFC 6962 §2.1.1–2.1.2 (PATH, SUBPROOF); verification
//! RFC 9162 §2.1.3.2 and §2.1.4.2. Everything here is a pure function of leaf hashes.

use ring::digest::{digest, Context, SHA256};

pub type Hash = [u8; 32];

fn sha256(parts: &[&[u8]]) -> Hash {
    let mut ctx = Context::new(&SHA256);
    for p in parts {
        ctx.update(p);
    }
    ctx.finish()
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
}

pub fn leaf_hash(entry: &[u8]) -> Hash {
    sha256(&[&[0x00], entry])
}

/// A leaf hash begun on the first bytes of its entry: `LeafPrefix::new(p).finish(&[r])` is
/// `leaf_hash(p ‖ r)`. It keeps the SHA-256 state after the prefix, so finishing costs only the
/// blocks the rest touches: the group-commit writer finishes events whose sequence number only
/// it knows, and their callers have hashed everything before it.
#[derive(Clone)]
pub struct LeafPrefix(Context);

impl LeafPrefix {
    pub fn new(prefix: &[u8]) -> Self {
        let mut ctx = Context::new(&SHA256);
        ctx.update(&[0x00]);
        ctx.update(prefix);
        Self(ctx)
    }

    pub fn finish(&self, rest: &[&[u8]]) -> Hash {
        let mut ctx = self.0.clone();
        for r in rest {
            ctx.update(r);
        }
        ctx.finish()
            .as_ref()
            .try_into()
            .expect("SHA-256 is 32 bytes")
    }
}

impl std::fmt::Debug for LeafPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LeafPrefix(SHA-256 state)")
    }
}

pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    sha256(&[&[0x01], left, right])
}

pub fn empty_root() -> Hash {
    digest(&SHA256, b"")
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
}

/// The largest power of two strictly smaller than `n` (n ≥ 2).
fn split(n: usize) -> usize {
    debug_assert!(n >= 2);
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// MTH(D[n]): the root of the tree over these leaf hashes.
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split(n);
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// The right edge of a growing tree: the roots of its perfect subtrees, largest first (at most
/// log2(n) + 1 of them). Leaves are pushed in order and [`CompactRange::root`] is MTH of all of
/// them, so a tree head is computed while streaming the leaves, in O(log n) memory.
#[derive(Debug, Clone, Default)]
pub struct CompactRange {
    size: u64,
    /// (subtree root, height): heights strictly decrease from the first to the last.
    peaks: Vec<(Hash, u32)>,
}

impl CompactRange {
    pub fn push(&mut self, leaf: Hash) {
        self.push_noting(leaf, |_, _, _| {});
    }

    /// Pushes `leaf`, telling `completed` of every complete subtree of two leaves or more it
    /// closes, smallest first: (level, index, root), where node (level, index) covers leaves
    /// `index * 2^level .. (index + 1) * 2^level`.
    pub fn push_noting(&mut self, leaf: Hash, mut completed: impl FnMut(u32, u64, &Hash)) {
        let end = self.size + 1;
        let mut node = (leaf, 0u32);
        while let Some(&(left, height)) = self.peaks.last() {
            if height != node.1 {
                break;
            }
            self.peaks.pop();
            node = (node_hash(&left, &node.0), height + 1);
            completed(node.1, (end >> node.1) - 1, &node.0);
        }
        self.peaks.push(node);
        self.size = end;
    }

    /// The compact range of the first `size` leaves from its peaks (subtree root and level,
    /// largest first), as a stored tree holds them.
    pub fn from_peaks(size: u64, peaks: Vec<(Hash, u32)>) -> Option<Self> {
        let levels: u64 = peaks.iter().map(|(_, l)| 1u64 << l).sum();
        let decreasing = peaks.windows(2).all(|w| w[0].1 > w[1].1);
        (levels == size && decreasing).then_some(Self { size, peaks })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The subtree roots and their levels, largest first.
    pub fn peaks(&self) -> &[(Hash, u32)] {
        &self.peaks
    }

    /// MTH of the leaves pushed so far (RFC 9162 §2.1.1: the right part nests to the right).
    pub fn root(&self) -> Hash {
        match self.peaks.split_last() {
            None => empty_root(),
            Some((last, rest)) => rest
                .iter()
                .rev()
                .fold(last.0, |acc, (left, _)| node_hash(left, &acc)),
        }
    }
}

/// PATH(m, D[n]): the inclusion proof of leaf `m` in the tree over `leaves`.
pub fn inclusion_proof(m: usize, leaves: &[Hash]) -> Option<Vec<Hash>> {
    Some(roots_of(&inclusion_ranges(m, leaves.len())?, leaves))
}

/// The leaf ranges whose roots make up PATH(m, D[n]), in proof order: every hash of a proof is
/// the root (MTH) of a contiguous run of leaves, so a proof can also be computed while the
/// leaves stream past ([`ProofFolder`]), in O(log² n) memory.
pub fn inclusion_ranges(m: usize, n: usize) -> Option<Vec<std::ops::Range<usize>>> {
    if m >= n {
        return None;
    }
    let mut out = Vec::new();
    path(m, 0..n, &mut out);
    Some(out)
}

fn path(m: usize, leaves: std::ops::Range<usize>, out: &mut Vec<std::ops::Range<usize>>) {
    let n = leaves.len();
    if n <= 1 {
        return;
    }
    let k = split(n);
    let mid = leaves.start + k;
    if m < k {
        path(m, leaves.start..mid, out);
        out.push(mid..leaves.end);
    } else {
        path(m - k, mid..leaves.end, out);
        out.push(leaves.start..mid);
    }
}

fn roots_of(ranges: &[std::ops::Range<usize>], leaves: &[Hash]) -> Vec<Hash> {
    ranges.iter().map(|r| root(&leaves[r.clone()])).collect()
}

/// Computes the roots of given leaf ranges (a proof's, from [`inclusion_ranges`] or
/// [`consistency_ranges`]) from leaves pushed in order, keeping one [`CompactRange`] per range
/// that is still open: a proof over a log of any size in O(log² n) memory.
#[derive(Debug)]
pub struct ProofFolder {
    /// (range, position in the proof), by range start.
    ranges: Vec<(std::ops::Range<usize>, usize)>,
    open: Vec<Option<CompactRange>>,
    roots: Vec<Option<Hash>>,
    pushed: usize,
    next: usize,
}

impl ProofFolder {
    pub fn new(ranges: Vec<std::ops::Range<usize>>) -> Self {
        let n = ranges.len();
        let mut by_start: Vec<_> = ranges
            .into_iter()
            .enumerate()
            .map(|(i, r)| (r, i))
            .collect();
        by_start.sort_by_key(|(r, _)| r.start);
        Self {
            ranges: by_start,
            open: vec![None; n],
            roots: vec![None; n],
            pushed: 0,
            next: 0,
        }
    }

    /// Leaf number `pushed` (0-based, in order).
    pub fn push(&mut self, leaf: Hash) {
        let i = self.pushed;
        self.pushed += 1;
        // Ranges are disjoint: at most one holds leaf i, the first not yet passed.
        while self.next < self.ranges.len() && self.ranges[self.next].0.end <= i {
            self.next += 1;
        }
        let Some((range, at)) = self.ranges.get(self.next) else {
            return;
        };
        if !range.contains(&i) {
            return;
        }
        let at = *at;
        let compact = self.open[at].get_or_insert_with(CompactRange::default);
        compact.push(leaf);
        if i + 1 == range.end {
            self.roots[at] = Some(compact.root());
            self.open[at] = None;
        }
    }

    /// The roots in proof order; None if some range was not pushed to its end.
    pub fn finish(self) -> Option<Vec<Hash>> {
        self.roots.into_iter().collect()
    }
}

/// Every level of the tree over some leaves, built once (O(n) hashes, about 2n kept) so that
/// each inclusion proof then takes O(log n): for exports that prove many events.
///
/// Level k+1 pairs up level k from the left and promotes a last, unpaired node unchanged.
/// Since RFC 9162 splits every tree at the largest power of two below its size, its left
/// subtrees are perfect and this builds the same tree.
#[derive(Debug, Clone)]
pub struct Tree {
    levels: Vec<Vec<Hash>>,
}

impl Tree {
    pub fn new(leaves: Vec<Hash>) -> Self {
        let mut levels = vec![leaves];
        while let Some(below) = levels.last().filter(|l| l.len() > 1) {
            let above = below
                .chunks(2)
                .map(|pair| match pair.get(1) {
                    Some(right) => node_hash(&pair[0], right),
                    None => pair[0],
                })
                .collect();
            levels.push(above);
        }
        Self { levels }
    }

    /// MTH of the leaves.
    pub fn root(&self) -> Hash {
        match self.levels.last().and_then(|top| top.first()) {
            Some(root) if !self.levels[0].is_empty() => *root,
            _ => empty_root(),
        }
    }

    /// PATH(m, D[n]), as [`inclusion_proof`] computes it.
    pub fn inclusion_proof(&self, m: usize) -> Option<Vec<Hash>> {
        if m >= self.levels[0].len() {
            return None;
        }
        let mut proof = Vec::new();
        let mut index = m;
        for level in &self.levels[..self.levels.len() - 1] {
            let sibling = index ^ 1;
            // No sibling: the node is promoted unchanged, and the proof has no step here.
            if let Some(hash) = level.get(sibling) {
                proof.push(*hash);
            }
            index /= 2;
        }
        Some(proof)
    }
}

/// PROOF(m, D[n]): the consistency proof from the tree of the first `m` leaves to all of them.
pub fn consistency_proof(m: usize, leaves: &[Hash]) -> Option<Vec<Hash>> {
    Some(roots_of(&consistency_ranges(m, leaves.len())?, leaves))
}

/// The leaf ranges whose roots make up PROOF(m, D[n]), in proof order (see
/// [`inclusion_ranges`]).
pub fn consistency_ranges(m: usize, n: usize) -> Option<Vec<std::ops::Range<usize>>> {
    if m == 0 || m > n {
        return None;
    }
    let mut out = Vec::new();
    subproof(m, 0..n, true, &mut out);
    Some(out)
}

fn subproof(
    m: usize,
    leaves: std::ops::Range<usize>,
    whole: bool,
    out: &mut Vec<std::ops::Range<usize>>,
) {
    let n = leaves.len();
    if m == n {
        if !whole {
            out.push(leaves);
        }
        return;
    }
    let k = split(n);
    let mid = leaves.start + k;
    if m <= k {
        subproof(m, leaves.start..mid, whole, out);
        out.push(mid..leaves.end);
    } else {
        subproof(m - k, mid..leaves.end, false, out);
        out.push(leaves.start..mid);
    }
}

/// RFC 9162 §2.1.3.2: does `proof` show `leaf` at `index` in the tree of `size` with `root`?
pub fn verify_inclusion(index: u64, size: u64, leaf: &Hash, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    snode == 0 && &r == root
}

/// RFC 9162 §2.1.4.2: does `proof` show the tree (`size1`, `root1`) is a prefix of
/// (`size2`, `root2`)?
pub fn verify_consistency(
    size1: u64,
    size2: u64,
    root1: &Hash,
    root2: &Hash,
    proof: &[Hash],
) -> bool {
    if size1 > size2 {
        return false;
    }
    if size1 == size2 {
        return proof.is_empty() && root1 == root2;
    }
    if size1 == 0 {
        // The empty tree is a prefix of every tree; nothing to prove.
        return proof.is_empty();
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if size1.is_power_of_two() {
        path.push(*root1);
    }
    path.extend_from_slice(proof);
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    let (mut fnode, mut snode) = (size1 - 1, size2 - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    &fr == root1 && &sr == root2 && snode == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushing_names_every_completed_subtree_and_peaks_rebuild_the_range() {
        let leaves: Vec<Hash> = (0u8..70).map(|i| leaf_hash(&[i])).collect();
        let mut range = CompactRange::default();
        let mut seen = 0;
        for (i, leaf) in leaves.iter().enumerate() {
            range.push_noting(*leaf, |level, idx, hash| {
                let width = 1usize << level;
                let first = idx as usize * width;
                assert_eq!(first + width, i + 1, "the subtree ends at the leaf pushed");
                assert_eq!(*hash, root(&leaves[first..first + width]), "{level} {idx}");
                seen += 1;
            });
            assert_eq!(range.root(), root(&leaves[..=i]));
            let again = CompactRange::from_peaks(range.size(), range.peaks.clone()).unwrap();
            assert_eq!(again.root(), range.root());
        }
        // Every subtree of 2, 4, 8, … leaves that fits in 70 is named once.
        assert_eq!(seen, 35 + 17 + 8 + 4 + 2 + 1);
        assert!(CompactRange::from_peaks(5, vec![(leaves[0], 1), (leaves[1], 1)]).is_none());
        assert!(CompactRange::from_peaks(3, vec![(leaves[0], 1)]).is_none());
    }

    fn fold(ranges: Vec<std::ops::Range<usize>>, leaves: &[Hash]) -> Option<Vec<Hash>> {
        let mut folder = ProofFolder::new(ranges);
        for leaf in leaves {
            folder.push(*leaf);
        }
        folder.finish()
    }

    #[test]
    fn proofs_folded_from_streamed_leaves_match_and_verify() {
        let leaves: Vec<Hash> = (0..70u8).map(|i| leaf_hash(&[i])).collect();
        for n in 1..=leaves.len() {
            let all = &leaves[..n];
            let tree = Tree::new(all.to_vec());
            let head = root(all);
            for m in 0..n {
                let folded = fold(inclusion_ranges(m, n).unwrap(), all).unwrap();
                // The level tree is an independent construction of the same proofs.
                assert_eq!(Some(folded.clone()), tree.inclusion_proof(m), "{m} in {n}");
                assert!(verify_inclusion(
                    m as u64, n as u64, &all[m], &folded, &head
                ));
            }
            for m in 1..=n {
                let folded = fold(consistency_ranges(m, n).unwrap(), all).unwrap();
                assert_eq!(
                    Some(folded.clone()),
                    consistency_proof(m, all),
                    "{m} to {n}"
                );
                assert!(
                    verify_consistency(m as u64, n as u64, &root(&all[..m]), &head, &folded),
                    "{m} to {n}"
                );
            }
        }
        // Too few leaves pushed: no proof, not a wrong one.
        assert_eq!(fold(inclusion_ranges(0, 8).unwrap(), &leaves[..7]), None);
        assert!(inclusion_ranges(8, 8).is_none() && consistency_ranges(0, 8).is_none());
    }

    #[test]
    fn the_level_tree_has_the_recursive_root_and_proofs() {
        for n in 0..=70usize {
            let leaves: Vec<Hash> = (0..n as u32).map(|i| leaf_hash(&i.to_be_bytes())).collect();
            let tree = Tree::new(leaves.clone());
            assert_eq!(tree.root(), root(&leaves), "n = {n}");
            for m in 0..=n {
                assert_eq!(
                    tree.inclusion_proof(m),
                    inclusion_proof(m, &leaves),
                    "n = {n}, m = {m}"
                );
            }
        }
    }

    #[test]
    fn a_compact_range_has_the_root_of_every_prefix() {
        let leaves: Vec<Hash> = (0u32..300).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        let mut range = CompactRange::default();
        assert_eq!(range.root(), empty_root());
        for (i, leaf) in leaves.iter().enumerate() {
            range.push(*leaf);
            assert_eq!(range.size(), i as u64 + 1);
            assert_eq!(range.root(), root(&leaves[..=i]), "size {}", i + 1);
            assert!(range.peaks.len() <= 64 - (i as u64 + 1).leading_zeros() as usize);
        }
    }

    fn h(s: &str) -> Hash {
        crate::domain::unhex(s).unwrap().try_into().unwrap()
    }

    /// The leaves of the Certificate Transparency reference tests.
    fn ct_leaves() -> Vec<Hash> {
        [
            "",
            "00",
            "10",
            "2021",
            "3031",
            "40414243",
            "5051525354555657",
            "606162636465666768696a6b6c6d6e6f",
        ]
        .iter()
        .map(|s| leaf_hash(&crate::domain::unhex(s).unwrap()))
        .collect()
    }

    const ROOTS: [&str; 9] = [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    #[test]
    fn roots_match_the_rfc_6962_reference_vectors() {
        let leaves = ct_leaves();
        for n in 0..=8 {
            assert_eq!(root(&leaves[..n]), h(ROOTS[n]), "size {n}");
        }
    }

    #[test]
    fn inclusion_proofs_match_the_reference_vectors() {
        let leaves = ct_leaves();
        let cases: [(usize, &[&str]); 2] = [
            (
                0,
                &[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                5,
                &[
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
        ];
        for (m, expected) in cases {
            let proof = inclusion_proof(m, &leaves).unwrap();
            let expected: Vec<Hash> = expected.iter().map(|s| h(s)).collect();
            assert_eq!(proof, expected, "leaf {m}");
            assert!(verify_inclusion(
                m as u64,
                8,
                &leaves[m],
                &proof,
                &h(ROOTS[8])
            ));
        }
    }

    #[test]
    fn consistency_proofs_match_the_reference_vectors() {
        let leaves = ct_leaves();
        let cases: [(usize, usize, &[&str]); 4] = [
            (1, 1, &[]),
            (
                1,
                8,
                &[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                6,
                8,
                &[
                    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (
                2,
                5,
                &[
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ],
            ),
        ];
        for (m, n, expected) in cases {
            let proof = consistency_proof(m, &leaves[..n]).unwrap();
            let expected: Vec<Hash> = expected.iter().map(|s| h(s)).collect();
            assert_eq!(proof, expected, "{m} → {n}");
            assert!(verify_consistency(
                m as u64,
                n as u64,
                &h(ROOTS[m]),
                &h(ROOTS[n]),
                &proof
            ));
        }
    }

    #[test]
    fn every_proof_round_trips_and_any_change_breaks_it() {
        let leaves: Vec<Hash> = (0u32..37).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        for n in 1..=leaves.len() {
            let r = root(&leaves[..n]);
            for m in 0..n {
                let proof = inclusion_proof(m, &leaves[..n]).unwrap();
                assert!(verify_inclusion(m as u64, n as u64, &leaves[m], &proof, &r));
                assert!(
                    !verify_inclusion(m as u64, n as u64, &leaves[(m + 1) % n], &proof, &r)
                        || n == 1
                );
                if let Some(first) = proof.first() {
                    let mut bad = proof.clone();
                    bad[0] = node_hash(first, first);
                    assert!(!verify_inclusion(m as u64, n as u64, &leaves[m], &bad, &r));
                }
            }
            for m in 1..=n {
                let proof = consistency_proof(m, &leaves[..n]).unwrap();
                let r1 = root(&leaves[..m]);
                assert!(
                    verify_consistency(m as u64, n as u64, &r1, &r, &proof),
                    "{m} → {n}"
                );
                if m < n {
                    let other = root(&leaves[1..=m]);
                    assert!(!verify_consistency(m as u64, n as u64, &other, &r, &proof));
                }
            }
        }
    }
}
