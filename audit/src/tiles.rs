//! C2SP tlog-tiles (<https://c2sp.org/tlog-tiles>), sans-IO: the tile paths, the
//! log held as tiles, and the client's side of reading one.
//!
//! A tiled log publishes its Merkle tree as static resources below a URL prefix:
//! `<prefix>/checkpoint`, hash tiles at `<prefix>/tile/<L>/<N>[.p/<W>]` and entry
//! bundles at `<prefix>/tile/entries/<N>[.p/<W>]`. This module does no I/O: an
//! HTTP server asks [`TilePath::parse`] what a request names and
//! [`TiledLog::tile`] for its bytes; a client lists what to fetch with
//! [`entry_bundles_for`] / [`hash_tiles_for`] and decodes what it got with
//! [`parse_entry_bundle`] / [`parse_hash_tile`], then rebuilds the tree from the
//! entries ([`TiledLog::append`]) and compares the root with the checkpoint's.
//!
//! Tiles have height 8 (256 hashes). The hash `i` of tile `N` at level `L` is
//! `MTH(D[(N*256 + i) * 256^L : (N*256 + i + 1) * 256^L])`, a complete subtree of
//! height `8L`, built with [`merkle::leaf_hash`](crate::merkle::leaf_hash) and
//! [`merkle::node_hash`](crate::merkle::node_hash), so roots agree with
//! [`MerkleTree`](crate::MerkleTree). Every parser is strict (one encoding per
//! value) and never panics on outside input.

use std::fmt;
use std::str::FromStr;

use vaultfleet::codec::{DecodeError, EncodeError, Prefix, Reader, Writer};

use crate::merkle::{empty_root, leaf_hash, node_hash, Hash};

/// Levels of the Merkle tree one tile spans (C2SP fixes 8).
pub const TILE_HEIGHT: u8 = 8;
/// Hashes in a full tile, entries in a full bundle: `2^TILE_HEIGHT`.
pub const TILE_WIDTH: u16 = 1 << TILE_HEIGHT;
/// Bytes of one hash in a hash tile (SHA-256).
pub const HASH_BYTES: usize = 32;
/// Bytes of a full hash tile: "Full tiles MUST be exactly 256 hashes wide, or 8,192 bytes."
pub const HASH_TILE_BYTES_MAX: usize = TILE_WIDTH as usize * HASH_BYTES;
/// Largest log entry: its length is a big-endian `uint16` in an entry bundle.
pub const ENTRY_BYTES_MAX: usize = u16::MAX as usize;
/// Largest entry bundle: 256 entries of [`ENTRY_BYTES_MAX`] bytes with their
/// 2-byte length prefixes.
pub const ENTRY_BUNDLE_BYTES_MAX: usize = TILE_WIDTH as usize * (2 + ENTRY_BYTES_MAX);
/// Highest tile level: "`<L>` ... MUST be a decimal ASCII integer between 0 and 63".
pub const TILE_LEVEL_MAX: u8 = 63;
/// Longest tile path: `tile/entries/` and the seven 3-digit groups of
/// `u64::MAX` with a `.p/255` suffix (52 bytes).
pub const TILE_PATH_BYTES_MAX: usize = "tile/entries/x018/x446/x744/x073/x709/x551/615.p/255".len();
/// The `Content-Type` of `<prefix>/checkpoint`.
pub const CHECKPOINT_CONTENT_TYPE: &str = "text/plain; charset=utf-8";
/// The `Content-Type` of hash tiles and entry bundles.
pub const TILE_CONTENT_TYPE: &str = "application/octet-stream";

const PATH_GROUP: u64 = 1000;
/// Bytes of a bad path kept in an error (the path came from outside).
const BAD_PATH_BYTES_KEPT: usize = 96;

const _: () = assert!(TILE_WIDTH == 256 && HASH_TILE_BYTES_MAX == 8192);
const _: () = assert!(TILE_PATH_BYTES_MAX == 52);

/// A tile could not be named, served, read or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TileError {
    /// The text is not a tile path as C2SP tlog-tiles writes one.
    #[error("bad tile path {path:?}: {why}")]
    BadPath {
        /// The path (at most its first 96 bytes).
        path: String,
        /// The rule it breaks.
        why: &'static str,
    },
    /// The tree of `tree_size` has no such tile: it lies beyond the tree, would
    /// be empty, or is wider than the tree makes it.
    #[error("{path} is not a tile of the tree of size {tree_size}")]
    NotFound {
        /// The tile asked for.
        path: TilePath,
        /// The tree size it was asked of.
        tree_size: u64,
    },
    /// A tree size beyond the entries the log holds.
    #[error("tree size {size} beyond the {held} entries the log holds")]
    SizeBeyondLog {
        /// The size asked for.
        size: u64,
        /// The entries held.
        held: u64,
    },
    /// An entry longer than its `uint16` length prefix can state.
    #[error("log entry of {len} bytes, at most {max} fit an entry bundle")]
    EntryTooLong {
        /// Its length.
        len: usize,
        /// The most allowed.
        max: usize,
    },
    /// A tile width outside 1..=256.
    #[error("tile width {width}: widths are 1 to 256")]
    BadWidth {
        /// The width given.
        width: u16,
    },
    /// An entry bundle longer than any full bundle.
    #[error("entry bundle of {len} bytes, at most {max} are accepted")]
    BundleTooLong {
        /// Its length.
        len: usize,
        /// The most accepted.
        max: usize,
    },
    /// An entry bundle that does not hold exactly the entries its width says.
    #[error("malformed entry bundle at entry {entry}")]
    MalformedBundle {
        /// The entry being read (the width, for bytes after the last one).
        entry: usize,
        /// What was wrong with it.
        source: DecodeError,
    },
    /// A hash tile whose length is not `width * 32`.
    #[error("hash tile of {len} bytes, a tile of width {width} has {}", usize::from(*.width) * HASH_BYTES)]
    HashTileLength {
        /// Its length.
        len: usize,
        /// The tile's width.
        width: u16,
    },
    /// A fetched tile differs from the one rebuilt from the entries.
    #[error("{path} as fetched differs from the tile rebuilt from the entries")]
    TileMismatch {
        /// The tile.
        path: TilePath,
    },
    /// A bundle could not be encoded.
    #[error("entry bundle encoding")]
    Encode(#[source] EncodeError),
}

/// A tile resource below a log's prefix: a hash tile or an entry bundle.
///
/// `width` is 1..=256; 256 is a full tile (no `.p/<W>` suffix), less a partial
/// one. Values built by hand are checked where they are used
/// ([`TiledLog::tile`]); [`TilePath::parse`] only returns valid ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TilePath {
    /// `tile/<L>/<N>[.p/<W>]`: Merkle tree hashes at tree level `8 * level`.
    Hashes {
        /// `<L>`, 0..=63.
        level: u8,
        /// `<N>`, the tile's index within its level.
        index: u64,
        /// Hashes in the tile, 1..=256.
        width: u16,
    },
    /// `tile/entries/<N>[.p/<W>]`: the entries hashed into level-0 tile `<N>`.
    Entries {
        /// `<N>`.
        index: u64,
        /// Entries in the bundle, 1..=256.
        width: u16,
    },
}

/// `n` as C2SP writes a tile index: zero-padded 3-digit path elements, all but
/// the last prefixed with `x` (1234067 is `x001/x234/067`).
pub fn index_path(n: u64) -> String {
    let mut groups = vec![n % PATH_GROUP];
    let mut rest = n / PATH_GROUP;
    while rest > 0 {
        groups.push(rest % PATH_GROUP);
        rest /= PATH_GROUP;
    }
    let last = groups.remove(0);
    let mut s = String::with_capacity(4 * groups.len() + 3);
    for g in groups.iter().rev() {
        s.push_str(&format!("x{g:03}/"));
    }
    s.push_str(&format!("{last:03}"));
    s
}

/// A decimal as C2SP writes it: ASCII digits, "no additional leading zeroes".
fn decimal(s: &str, max: u64) -> Option<u64> {
    let canonical = !s.is_empty()
        && s.len() <= 3
        && s.bytes().all(|b| b.is_ascii_digit())
        && (s == "0" || !s.starts_with('0'));
    canonical
        .then(|| s.parse::<u64>().ok())
        .flatten()
        .filter(|&v| v <= max)
}

/// Three ASCII digits.
fn group(s: &str) -> Option<u64> {
    (s.len() == 3 && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

fn parse_index(s: &str) -> Result<u64, &'static str> {
    let elements: Vec<&str> = s.split('/').collect();
    let Some((last, upper)) = elements.split_last() else {
        return Err("no tile index");
    };
    let mut n: u64 = 0;
    for (i, e) in upper.iter().enumerate() {
        let g = e
            .strip_prefix('x')
            .and_then(group)
            .ok_or("all but the last index element are `x` and three digits")?;
        if i == 0 && g == 0 {
            return Err("the index has a leading `x000` element");
        }
        n = n
            .checked_mul(PATH_GROUP)
            .and_then(|n| n.checked_add(g))
            .ok_or("the index does not fit 64 bits")?;
    }
    let g = group(last).ok_or("the last index element is three digits")?;
    n.checked_mul(PATH_GROUP)
        .and_then(|n| n.checked_add(g))
        .ok_or("the index does not fit 64 bits")
}

impl TilePath {
    /// Parses a path below the log's prefix (`tile/0/x001/234`,
    /// `tile/entries/000.p/7`), refusing every other spelling: `<L>` 0 to 63 and
    /// `<W>` 1 to 255 without leading zeroes, 3-digit index elements with `x`
    /// on all but the last and no leading `x000`, nothing before or after.
    pub fn parse(path: &str) -> Result<Self, TileError> {
        let bad = |why| TileError::BadPath {
            path: path.chars().take(BAD_PATH_BYTES_KEPT).collect(),
            why,
        };
        if path.len() > TILE_PATH_BYTES_MAX {
            return Err(bad("longer than any tile path"));
        }
        let rest = path
            .strip_prefix("tile/")
            .ok_or_else(|| bad("a tile path starts with `tile/`"))?;
        let (kind, rest) = rest
            .split_once('/')
            .ok_or_else(|| bad("a tile path is `tile/<L>/<N>` or `tile/entries/<N>`"))?;
        let level = match kind {
            "entries" => None,
            l => Some(
                decimal(l, TILE_LEVEL_MAX.into())
                    .and_then(|l| u8::try_from(l).ok())
                    .ok_or_else(|| {
                        bad("<L> is a decimal 0 to 63 with no additional leading zeroes")
                    })?,
            ),
        };
        let (index, width) = match rest.split_once(".p/") {
            None => (rest, TILE_WIDTH),
            Some((index, w)) => {
                let w = decimal(w, u64::from(TILE_WIDTH) - 1)
                    .filter(|&w| w >= 1)
                    .and_then(|w| u16::try_from(w).ok())
                    .ok_or_else(|| {
                        bad("<W> is a decimal 1 to 255 with no additional leading zeroes")
                    })?;
                (index, w)
            }
        };
        let index = parse_index(index).map_err(bad)?;
        let tile = match level {
            Some(level) => Self::Hashes {
                level,
                index,
                width,
            },
            None => Self::Entries { index, width },
        };
        debug_assert_eq!(tile.encode(), path);
        Ok(tile)
    }

    /// The path below the log's prefix (the inverse of [`TilePath::parse`]).
    pub fn encode(&self) -> String {
        self.to_string()
    }

    /// The level `<L>` (0 for entry bundles, which pair with level-0 tiles).
    pub fn level(&self) -> u8 {
        match *self {
            Self::Hashes { level, .. } => level,
            Self::Entries { .. } => 0,
        }
    }

    /// The index `<N>` within the level.
    pub fn index(&self) -> u64 {
        match *self {
            Self::Hashes { index, .. } | Self::Entries { index, .. } => index,
        }
    }

    /// Hashes or entries in the tile.
    pub fn width(&self) -> u16 {
        match *self {
            Self::Hashes { width, .. } | Self::Entries { width, .. } => width,
        }
    }

    /// True for a full tile (256 wide, no `.p/<W>`).
    pub fn is_full(&self) -> bool {
        self.width() == TILE_WIDTH
    }

    /// True for an entry bundle.
    pub fn is_entries(&self) -> bool {
        matches!(self, Self::Entries { .. })
    }

    /// The tile's *start index*, `N * 256^(L+1)`: the first entry its hashes
    /// span (`None` beyond `u64`).
    pub fn start_index(&self) -> Option<u64> {
        let shift = u32::from(TILE_HEIGHT) * (u32::from(self.level()) + 1);
        let unit = 1u64.checked_shl(shift)?;
        self.index().checked_mul(unit)
    }

    /// Refuses a hand-built path [`TilePath::parse`] would not return.
    fn check(&self) -> Result<(), TileError> {
        let why = if self.width() == 0 || self.width() > TILE_WIDTH {
            "a tile is 1 to 256 wide"
        } else if self.level() > TILE_LEVEL_MAX {
            "tile levels are 0 to 63"
        } else {
            return Ok(());
        };
        Err(TileError::BadPath {
            path: self.to_string(),
            why,
        })
    }
}

impl fmt::Display for TilePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Hashes { level, index, .. } => write!(f, "tile/{level}/{}", index_path(index))?,
            Self::Entries { index, .. } => write!(f, "tile/entries/{}", index_path(index))?,
        }
        if !self.is_full() {
            write!(f, ".p/{}", self.width())?;
        }
        Ok(())
    }
}

impl FromStr for TilePath {
    type Err = TileError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Hashes (or entries, at level 0) tile `index` at `level` holds in a tree of
/// `tree_size`: 256 for a full tile, 1..=255 for the rightmost partial one
/// (`floor(s / 256^l) mod 256`), 0 for one beyond the tree.
pub fn width_in_tree(level: u8, index: u64, tree_size: u64) -> u16 {
    let shift = u32::from(TILE_HEIGHT) * u32::from(level);
    let count = tree_size.checked_shr(shift).unwrap_or(0);
    let Some(first) = index.checked_mul(TILE_WIDTH.into()) else {
        return 0;
    };
    let width = count.saturating_sub(first).min(TILE_WIDTH.into());
    // At most TILE_WIDTH: the `min` above.
    width as u16
}

/// The tiles at `level` of a tree of `size`: the full ones, then the partial
/// one if any. An iterator, not a list: a size read from a checkpoint may be
/// anything up to 2^64 - 1.
fn tiles_at(level: u8, size: u64, entries: bool) -> impl Iterator<Item = TilePath> + Clone {
    let shift = u32::from(TILE_HEIGHT) * u32::from(level);
    let count = size.checked_shr(shift).unwrap_or(0);
    let full = count / u64::from(TILE_WIDTH);
    // Below TILE_WIDTH: the remainder of a division by it.
    let partial = (count % u64::from(TILE_WIDTH)) as u16;
    let make = move |index, width| {
        if entries {
            TilePath::Entries { index, width }
        } else {
            TilePath::Hashes {
                level,
                index,
                width,
            }
        }
    };
    (0..full)
        .map(move |index| make(index, TILE_WIDTH))
        .chain((partial > 0).then(|| make(full, partial)))
}

/// The entry bundles holding the entries of a tree of `size`, in entry order:
/// what a client walking the whole log fetches.
pub fn entry_bundles_for(size: u64) -> impl Iterator<Item = TilePath> + Clone {
    tiles_at(0, size, true)
}

/// Every hash tile of a tree of `size`, level by level (for the spec's tree of
/// 70,000: 273 full level-0 tiles and one of width 112, a full level-1 tile and
/// one of width 17, a level-2 tile of width 1).
pub fn hash_tiles_for(size: u64) -> impl Iterator<Item = TilePath> + Clone {
    (0..=TILE_LEVEL_MAX).flat_map(move |level| tiles_at(level, size, false))
}

/// Decodes an entry bundle of `width` entries: big-endian `uint16`
/// length-prefixed entries, exactly `width` of them and nothing after.
pub fn parse_entry_bundle(bytes: &[u8], width: u16) -> Result<Vec<Vec<u8>>, TileError> {
    if width == 0 || width > TILE_WIDTH {
        return Err(TileError::BadWidth { width });
    }
    if bytes.len() > ENTRY_BUNDLE_BYTES_MAX {
        return Err(TileError::BundleTooLong {
            len: bytes.len(),
            max: ENTRY_BUNDLE_BYTES_MAX,
        });
    }
    let mut r = Reader::new(bytes);
    let mut entries = Vec::with_capacity(width.into());
    for entry in 0..usize::from(width) {
        let e = r
            .prefixed(Prefix::U16, ENTRY_BYTES_MAX, "log entry")
            .map_err(|source| TileError::MalformedBundle { entry, source })?;
        entries.push(e.to_vec());
    }
    r.expect_empty("entry bundle")
        .map_err(|source| TileError::MalformedBundle {
            entry: width.into(),
            source,
        })?;
    debug_assert_eq!(entries.len(), usize::from(width));
    Ok(entries)
}

/// Decodes a hash tile of `width` hashes (exactly `width * 32` bytes).
pub fn parse_hash_tile(bytes: &[u8], width: u16) -> Result<Vec<Hash>, TileError> {
    if width == 0 || width > TILE_WIDTH {
        return Err(TileError::BadWidth { width });
    }
    if bytes.len() != usize::from(width) * HASH_BYTES {
        return Err(TileError::HashTileLength {
            len: bytes.len(),
            width,
        });
    }
    Ok(bytes
        .chunks_exact(HASH_BYTES)
        .map(|c| {
            let mut h = [0u8; HASH_BYTES];
            h.copy_from_slice(c);
            h
        })
        .collect())
}

/// A log held as tiles: its entries and the hash of every complete subtree.
///
/// `append` is O(log n) (amortized O(1) hashes): `levels[k][i]` is
/// `MTH(D[i * 2^k : (i + 1) * 2^k])`, and level-`L` tiles read `levels[8L]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TiledLog {
    entries: Vec<Vec<u8>>,
    /// `levels[k]` holds the hashes of the complete subtrees of height `k`, left
    /// to right: `levels[k].len() == size >> k`.
    levels: Vec<Vec<Hash>>,
}

impl TiledLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends an entry and returns its index. Entries longer than
    /// [`ENTRY_BYTES_MAX`] are refused: an entry bundle could not carry them.
    pub fn append(&mut self, entry: Vec<u8>) -> Result<u64, TileError> {
        if entry.len() > ENTRY_BYTES_MAX {
            return Err(TileError::EntryTooLong {
                len: entry.len(),
                max: ENTRY_BYTES_MAX,
            });
        }
        let index = self.size();
        let mut hash = leaf_hash(&entry);
        self.entries.push(entry);
        let mut k = 0;
        loop {
            if self.levels.len() == k {
                self.levels.push(Vec::new());
            }
            let level = &mut self.levels[k];
            level.push(hash);
            let n = level.len();
            if n % 2 == 1 {
                break;
            }
            // A new complete subtree of height k + 1: its two halves.
            hash = node_hash(&level[n - 2], &level[n - 1]);
            k += 1;
        }
        debug_assert!(self
            .levels
            .iter()
            .enumerate()
            .all(|(k, l)| l.len() as u64 == self.size() >> k));
        Ok(index)
    }

    /// Entries held.
    pub fn size(&self) -> u64 {
        self.entries.len() as u64
    }

    /// The entries, in log order.
    pub fn entries(&self) -> &[Vec<u8>] {
        &self.entries
    }

    /// The leaf hashes, in log order.
    pub fn leaf_hashes(&self) -> &[Hash] {
        self.levels.first().map_or(&[], Vec::as_slice)
    }

    fn checked_size(&self, size: u64) -> Result<(), TileError> {
        if size > self.size() {
            return Err(TileError::SizeBeyondLog {
                size,
                held: self.size(),
            });
        }
        Ok(())
    }

    /// The root of the tree of the first `size` entries (equal to
    /// [`MerkleTree::root_at`](crate::MerkleTree::root_at) over the same entries),
    /// from at most 64 stored subtree hashes.
    pub fn root_at(&self, size: u64) -> Result<Hash, TileError> {
        self.checked_size(size)?;
        // RFC 6962 splits at the largest power of two below the size, so the
        // tree is the complete subtrees of size's set bits, largest first,
        // folded from the right.
        let mut root: Option<Hash> = None;
        let mut end = size;
        for k in 0..u64::BITS {
            if (size >> k) & 1 == 0 {
                continue;
            }
            let start = end - (1 << k);
            // `size <= self.size()`, so level k holds `self.size() >> k > start >> k` hashes.
            let h = self.levels[k as usize][(start >> k) as usize];
            root = Some(root.map_or(h, |r| node_hash(&h, &r)));
            end = start;
        }
        debug_assert_eq!(end, 0);
        Ok(root.unwrap_or_else(empty_root))
    }

    /// The tile's bytes as published for the tree of `tree_size` (at most
    /// [`TiledLog::size`]): a hash tile is `width * 32` bytes, an entry bundle
    /// the `uint16`-BE-length-prefixed entries.
    ///
    /// [`TileError::NotFound`] for a tile the tree does not have: beyond it,
    /// empty, or wider than the tree makes it. Partial tiles are answered for
    /// *every* width up to the one `tree_size` makes (for a tile now full, any
    /// width below 256): the log MUST serve the partial tiles of each size it
    /// published a checkpoint for, and an older checkpoint's partial tile is the
    /// same bytes as a prefix of today's tile, so a server passes its latest
    /// checkpoint's size and every earlier checkpoint's partial tiles are served
    /// too. Answering the widths of sizes it never published is harmless: tile
    /// hashes never change once their subtree is complete.
    pub fn tile(&self, path: &TilePath, tree_size: u64) -> Result<Vec<u8>, TileError> {
        path.check()?;
        self.checked_size(tree_size)?;
        let width = path.width();
        if width > width_in_tree(path.level(), path.index(), tree_size) {
            return Err(TileError::NotFound {
                path: *path,
                tree_size,
            });
        }
        // The tile is in the tree, so its first hash's index fits the tree's size.
        let first = (path.index() * u64::from(TILE_WIDTH)) as usize;
        let range = first..first + usize::from(width);
        let bytes = match *path {
            TilePath::Hashes { level, .. } => {
                let k = usize::from(level) * usize::from(TILE_HEIGHT);
                self.levels[k][range].concat()
            }
            TilePath::Entries { .. } => {
                let entries = &self.entries[range];
                let len = entries.iter().map(|e| 2 + e.len()).sum();
                let mut w = Writer::with_capacity(len);
                for e in entries {
                    w.prefixed(Prefix::U16, ENTRY_BYTES_MAX, e, "log entry")
                        .map_err(TileError::Encode)?;
                }
                debug_assert_eq!(w.len(), len);
                w.into_vec()
            }
        };
        Ok(bytes)
    }

    /// Checks `fetched` is the tile `path` of the tree of `tree_size` as this
    /// log (rebuilt from the fetched entries) has it.
    pub fn check_tile(
        &self,
        path: &TilePath,
        tree_size: u64,
        fetched: &[u8],
    ) -> Result<(), TileError> {
        if self.tile(path, tree_size)? != fetched {
            return Err(TileError::TileMismatch { path: *path });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::{root, MerkleTree};

    fn log_of(n: u64) -> TiledLog {
        let mut log = TiledLog::new();
        for i in 0..n {
            assert_eq!(log.append(i.to_be_bytes().to_vec()).unwrap(), i);
        }
        log
    }

    #[test]
    fn index_paths_are_three_digit_groups_with_x_on_all_but_the_last() {
        // "For example, index 1234067 will be encoded as `x001/x234/067`."
        assert_eq!(index_path(1_234_067), "x001/x234/067");
        assert_eq!(index_path(0), "000");
        assert_eq!(index_path(999), "999");
        assert_eq!(index_path(1000), "x001/000");
        assert_eq!(index_path(u64::MAX), "x018/x446/x744/x073/x709/x551/615");
    }

    #[test]
    fn paths_round_trip() {
        for (text, tile) in [
            (
                "tile/0/x001/x234/067",
                TilePath::Hashes {
                    level: 0,
                    index: 1_234_067,
                    width: 256,
                },
            ),
            (
                "tile/0/x001/234",
                TilePath::Hashes {
                    level: 0,
                    index: 1234,
                    width: 256,
                },
            ),
            (
                "tile/63/000.p/1",
                TilePath::Hashes {
                    level: 63,
                    index: 0,
                    width: 1,
                },
            ),
            (
                "tile/1/000.p/255",
                TilePath::Hashes {
                    level: 1,
                    index: 0,
                    width: 255,
                },
            ),
            (
                "tile/entries/000.p/7",
                TilePath::Entries { index: 0, width: 7 },
            ),
            (
                "tile/entries/x018/x446/x744/x073/x709/x551/615.p/255",
                TilePath::Entries {
                    index: u64::MAX,
                    width: 255,
                },
            ),
        ] {
            assert_eq!(TilePath::parse(text).unwrap(), tile, "{text}");
            assert_eq!(text.parse::<TilePath>().unwrap(), tile, "{text}");
            assert_eq!(tile.encode(), text);
        }
        let mut n = 1u64;
        while let Some(next) = n.checked_mul(7) {
            for (level, width) in [(0, 256), (5, 1), (63, 200)] {
                let t = TilePath::Hashes {
                    level,
                    index: n,
                    width,
                };
                assert_eq!(TilePath::parse(&t.encode()).unwrap(), t);
            }
            let e = TilePath::Entries {
                index: n - 1,
                width: 256,
            };
            assert_eq!(TilePath::parse(&e.encode()).unwrap(), e);
            n = next;
        }
    }

    #[test]
    fn every_other_spelling_is_refused() {
        for bad in [
            "",
            "tile",
            "tile/",
            "tile/0",
            "tile/0/",
            "/tile/0/000",
            "tiles/0/000",
            // "<L> ... MUST be a decimal ASCII integer between 0 and 63, with no
            // additional leading zeroes."
            "tile/00/000",
            "tile/01/000",
            "tile/64/000",
            "tile/+1/000",
            "tile/-0/000",
            "tile/a/000",
            "tile/data/000",
            "tile/entry/000",
            // "<N> ... MUST be a non-negative integer encoded into zero-padded
            // 3-digit path elements. All but the last path element MUST begin
            // with an x."
            "tile/0/1",
            "tile/0/01",
            "tile/0/0001",
            "tile/0/x000",
            "tile/0/x001",
            "tile/0/001/234",
            "tile/0/x1/234",
            "tile/0/X001/234",
            "tile/0/x001/x234",
            "tile/0/x000/001",
            "tile/0/x001//234",
            "tile/0/x001/234/",
            "tile/0/000/",
            "tile/0/x-01/234",
            "tile/0/ 01",
            "tile/entries/1",
            // u64::MAX + 1.
            "tile/0/x018/x446/x744/x073/x709/x551/616",
            // "<W> is the width of the tile, a decimal ASCII integer between 1 and
            // 255, with no additional leading zeroes."
            "tile/0/000.p/0",
            "tile/0/000.p/256",
            "tile/0/000.p/007",
            "tile/0/000.p/",
            "tile/0/000.p",
            "tile/0/000.p/1/",
            "tile/0/000.p/1.p/2",
            "tile/0/000.p/+1",
            "tile/entries/000.p/256",
            "tile/0/000.q/1",
        ] {
            assert!(
                matches!(TilePath::parse(bad), Err(TileError::BadPath { .. })),
                "{bad:?} was accepted"
            );
        }
        let long = format!("tile/0/{}000", "x000/".repeat(10_000));
        match TilePath::parse(&long) {
            Err(TileError::BadPath { path, why }) => {
                assert_eq!(path.len(), BAD_PATH_BYTES_KEPT);
                assert_eq!(why, "longer than any tile path");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_specs_tilings_of_70000_and_256() {
        // "a tree of size 70,000 will be represented by 273 full level 0 tiles,
        // one partial level 0 tile of width 112, one full level 1 tile, one
        // partial level 1 tile of width 17, and one partial level 2 tile of
        // width 1."
        let tiles: Vec<TilePath> = hash_tiles_for(70_000).collect();
        let full0 = tiles
            .iter()
            .filter(|t| t.level() == 0 && t.is_full())
            .count();
        assert_eq!(full0, 273);
        let rest: Vec<String> = tiles[273..].iter().map(TilePath::encode).collect();
        assert_eq!(
            rest,
            [
                "tile/0/273.p/112",
                "tile/1/000",
                "tile/1/001.p/17",
                "tile/2/000.p/1"
            ]
        );
        // "a tree of size 256 will be represented by a full level 0 tile and a
        // partial level 1 tile of width 1."
        let tiles: Vec<String> = hash_tiles_for(256).map(|t| t.encode()).collect();
        assert_eq!(tiles, ["tile/0/000", "tile/1/000.p/1"]);
        assert_eq!(hash_tiles_for(0).count(), 0);
        let bundles: Vec<String> = entry_bundles_for(70_000).map(|t| t.encode()).collect();
        assert_eq!(bundles.len(), 274);
        assert_eq!(bundles[0], "tile/entries/000");
        assert_eq!(bundles[273], "tile/entries/273.p/112");
        assert_eq!(entry_bundles_for(512).count(), 2);
        // A hostile checkpoint size costs nothing until iterated.
        assert_eq!(
            hash_tiles_for(u64::MAX).next().map(|t| t.encode()),
            Some("tile/0/000".to_string())
        );
        assert_eq!(
            tiles_at(7, u64::MAX, false).map(|t| t.encode()).last(),
            Some("tile/7/000.p/255".to_string())
        );
        assert_eq!(tiles_at(8, u64::MAX, false).count(), 0);
        assert_eq!(entry_bundles_for(u64::MAX).next().unwrap().index(), 0);
    }

    #[test]
    fn tiles_hold_the_complete_subtree_hashes_the_spec_defines() {
        let log = log_of(70_000);
        let leaves = log.leaf_hashes();
        assert_eq!(leaves.len(), 70_000);
        // "MTH(D[(n * 256 + i) * 256**l : (n * 256 + i + 1) * 256**l])"
        let mth = |l: u32, n: u64, i: u64| {
            let span = 256u64.pow(l);
            let from = ((n * 256 + i) * span) as usize;
            root(&leaves[from..from + span as usize])
        };
        for path in hash_tiles_for(70_000) {
            let bytes = log.tile(&path, 70_000).unwrap();
            let hashes = parse_hash_tile(&bytes, path.width()).unwrap();
            assert_eq!(hashes.len(), usize::from(path.width()));
            let l = u32::from(path.level());
            for i in [0, u64::from(path.width()) - 1] {
                assert_eq!(hashes[i as usize], mth(l, path.index(), i), "{path}");
            }
            // "At “level 1” and above, each hash in a tile is the Merkle Tree Hash
            // of a *full* tile at the level below."
            if path.level() > 0 {
                for (i, h) in hashes.iter().enumerate() {
                    let child = TilePath::Hashes {
                        level: path.level() - 1,
                        index: path.index() * 256 + i as u64,
                        width: 256,
                    };
                    let below = parse_hash_tile(&log.tile(&child, 70_000).unwrap(), 256).unwrap();
                    assert_eq!(*h, root(&below), "{child}");
                }
            }
        }
        // "Full tiles MUST be exactly 256 hashes wide, or 8,192 bytes."
        let full = TilePath::parse("tile/0/272").unwrap();
        assert_eq!(log.tile(&full, 70_000).unwrap().len(), 8192);
        // Bundles: "Each entry in a bundle hashes to the corresponding entry in
        // the corresponding “level 0” Merkle Tree tile."
        for path in entry_bundles_for(70_000).step_by(50) {
            let bundle = log.tile(&path, 70_000).unwrap();
            let entries = parse_entry_bundle(&bundle, path.width()).unwrap();
            let level0 = TilePath::Hashes {
                level: 0,
                index: path.index(),
                width: path.width(),
            };
            let hashes =
                parse_hash_tile(&log.tile(&level0, 70_000).unwrap(), path.width()).unwrap();
            let rehashed: Vec<Hash> = entries.iter().map(|e| leaf_hash(e)).collect();
            assert_eq!(rehashed, hashes);
            assert_eq!(entries[0], (path.index() * 256).to_be_bytes());
        }
    }

    #[test]
    fn tiles_a_tree_does_not_have_are_not_found() {
        let log = log_of(300);
        let not_found = |p: &str, size: u64| {
            let path = TilePath::parse(p).unwrap();
            assert_eq!(
                log.tile(&path, size),
                Err(TileError::NotFound {
                    path,
                    tree_size: size
                }),
                "{p} of {size}"
            );
        };
        // Beyond the tree.
        not_found("tile/0/002", 300);
        not_found("tile/0/002.p/1", 300);
        not_found("tile/entries/x001/000", 300);
        not_found("tile/2/000.p/1", 300);
        // "Empty tiles MUST NOT be served." / wider than the tree makes it.
        not_found("tile/0/001", 300);
        not_found("tile/0/001.p/45", 300);
        not_found("tile/entries/001.p/45", 300);
        not_found("tile/1/000", 300);
        not_found("tile/1/000.p/2", 300);
        // A tree size not reached when the tile was asked of an older tree.
        not_found("tile/0/000", 255);
        not_found("tile/0/000.p/101", 100);
        not_found("tile/1/000.p/1", 255);
        not_found("tile/0/001.p/1", 256);
        // A tree size beyond the log.
        assert_eq!(
            log.tile(&TilePath::parse("tile/0/000").unwrap(), 301),
            Err(TileError::SizeBeyondLog {
                size: 301,
                held: 300
            })
        );
        // What the tree has is served; an older checkpoint's partial tile is a
        // prefix of today's.
        let today = log
            .tile(&TilePath::parse("tile/0/001.p/44").unwrap(), 300)
            .unwrap();
        let older = log
            .tile(&TilePath::parse("tile/0/001.p/10").unwrap(), 300)
            .unwrap();
        assert_eq!(older, today[..10 * 32]);
        assert_eq!(
            log.tile(&TilePath::parse("tile/0/001.p/10").unwrap(), 266)
                .unwrap(),
            older
        );
        let full = log
            .tile(&TilePath::parse("tile/0/000").unwrap(), 300)
            .unwrap();
        let partial = log
            .tile(&TilePath::parse("tile/0/000.p/100").unwrap(), 300)
            .unwrap();
        assert_eq!(partial, full[..100 * 32]);
        log.tile(&TilePath::parse("tile/1/000.p/1").unwrap(), 256)
            .unwrap();
        // Hand-built paths the parser would refuse.
        for bad in [
            TilePath::Entries { index: 0, width: 0 },
            TilePath::Entries {
                index: 0,
                width: 257,
            },
            TilePath::Hashes {
                level: 64,
                index: 0,
                width: 1,
            },
        ] {
            assert!(matches!(
                log.tile(&bad, 300),
                Err(TileError::BadPath { .. })
            ));
        }
        // Levels whose span exceeds 64 bits, indexes whose start does.
        let empty = TiledLog::new();
        for p in [
            "tile/63/000.p/1",
            "tile/0/x018/x446/x744/x073/x709/x551/615",
        ] {
            let path = TilePath::parse(p).unwrap();
            assert!(matches!(
                empty.tile(&path, 0),
                Err(TileError::NotFound { .. })
            ));
            assert_eq!(width_in_tree(path.level(), path.index(), u64::MAX), 0);
        }
        assert_eq!(width_in_tree(7, 0, u64::MAX), 255);
        assert_eq!(width_in_tree(8, 0, u64::MAX), 0);
    }

    #[test]
    fn entries_beyond_a_uint16_length_are_refused() {
        let mut log = TiledLog::new();
        assert_eq!(
            log.append(vec![0; 65_536]),
            Err(TileError::EntryTooLong {
                len: 65_536,
                max: 65_535
            })
        );
        assert_eq!(log.size(), 0);
        log.append(vec![7; 65_535]).unwrap();
        log.append(Vec::new()).unwrap();
        let path = TilePath::Entries { index: 0, width: 2 };
        let bundle = log.tile(&path, 2).unwrap();
        assert_eq!(bundle.len(), 2 + 65_535 + 2);
        assert_eq!(&bundle[..2], &[0xff, 0xff]);
        assert_eq!(
            parse_entry_bundle(&bundle, 2).unwrap(),
            [vec![7; 65_535], vec![]]
        );
    }

    #[test]
    fn bundles_hold_exactly_their_width() {
        let bundle = [0, 1, b'a', 0, 2, b'b', b'c'];
        assert_eq!(
            parse_entry_bundle(&bundle, 2).unwrap(),
            [b"a".to_vec(), b"bc".to_vec()]
        );
        let mut trailing = bundle.to_vec();
        trailing.push(0);
        assert!(matches!(
            parse_entry_bundle(&trailing, 2),
            Err(TileError::MalformedBundle {
                entry: 2,
                source: DecodeError::TrailingBytes { left: 1, .. }
            })
        ));
        assert!(matches!(
            parse_entry_bundle(&bundle, 3),
            Err(TileError::MalformedBundle {
                entry: 2,
                source: DecodeError::Truncated { .. }
            })
        ));
        assert!(matches!(
            parse_entry_bundle(&bundle[..5], 2),
            Err(TileError::MalformedBundle { entry: 1, .. })
        ));
        assert!(matches!(
            parse_entry_bundle(&bundle, 1),
            Err(TileError::MalformedBundle { entry: 1, .. })
        ));
        assert_eq!(
            parse_entry_bundle(&bundle, 0),
            Err(TileError::BadWidth { width: 0 })
        );
        assert_eq!(
            parse_entry_bundle(&bundle, 257),
            Err(TileError::BadWidth { width: 257 })
        );
        let huge = vec![0u8; ENTRY_BUNDLE_BYTES_MAX + 1];
        assert!(matches!(
            parse_entry_bundle(&huge, 256),
            Err(TileError::BundleTooLong { .. })
        ));
        assert_eq!(
            parse_hash_tile(&[0; 64], 3),
            Err(TileError::HashTileLength { len: 64, width: 3 })
        );
        assert_eq!(parse_hash_tile(&[0; 64], 2).unwrap(), [[0; 32]; 2]);
    }

    #[test]
    fn roots_equal_the_merkle_trees_and_fetched_tiles_are_checked() {
        let log = log_of(600);
        let mut tree = MerkleTree::new();
        assert_eq!(log.root_at(0).unwrap(), tree.root());
        for (i, e) in log.entries().iter().enumerate() {
            tree.append(e);
            let size = i as u64 + 1;
            assert_eq!(log.root_at(size).unwrap(), tree.root(), "size {size}");
        }
        assert_eq!(log.leaf_hashes(), tree.leaf_hashes());
        assert_eq!(
            log.root_at(601),
            Err(TileError::SizeBeyondLog {
                size: 601,
                held: 600
            })
        );
        let path = TilePath::parse("tile/0/002.p/88").unwrap();
        let mut fetched = log.tile(&path, 600).unwrap();
        log.check_tile(&path, 600, &fetched).unwrap();
        fetched[40] ^= 1;
        assert_eq!(
            log.check_tile(&path, 600, &fetched),
            Err(TileError::TileMismatch { path })
        );
    }
}
