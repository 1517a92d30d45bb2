//! Autotile sets: which tile of a set goes where, the contract between the build (which
//! draws a set's tiles in this order) and the game (which picks a tile from a map cell's
//! neighbourhood). Two kinds, in the conventions of cr31's "Wang tiles" pages that most
//! tilemap tools follow:
//!
//! - [`Wang`]: a **corner** set of 16 tiles for two terrains. Each tile's four corners are
//!   terrain A (0) or B (1); the tile's index is `NE·1 + SE·2 + SW·4 + NW·8`, so index 0 is
//!   all A and 15 all B. A map of corner values (one per grid point, one more each way than
//!   tiles) gives each cell its tile: [`Wang::at`].
//! - [`Blob`]: a **blob** set of 47 tiles for one terrain over a background. A cell's eight
//!   neighbours are bits `N·1 + NE·2 + E·4 + SE·8 + S·16 + SW·32 + W·64 + NW·128`; a corner
//!   neighbour counts only when both edges beside it are set (the tile cannot show it
//!   otherwise), which leaves 47 distinct masks ([`BLOB_MASKS`], ascending). A tile's index
//!   is its reduced mask's position there: 0 is an isolated cell, 46 a cell surrounded.
//!
//! Invariants: a set's tiles are laid out in index order, row by row, [`Wang::COLUMNS`] or
//! [`Blob::COLUMNS`] wide; indices never change meaning (a game's maps store them).

/// A tile of a 16-tile corner set: which of its corners are terrain B.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Wang(u8);

impl Wang {
    /// Tiles in a set.
    pub const COUNT: usize = 16;
    /// Tiles per row of the set's grid.
    pub const COLUMNS: usize = 4;

    /// The tile whose corners are B where `true`.
    pub const fn from_corners(ne: bool, se: bool, sw: bool, nw: bool) -> Wang {
        Wang(ne as u8 | (se as u8) << 1 | (sw as u8) << 2 | (nw as u8) << 3)
    }

    /// The tile at `index` (0 to 15), if there is one.
    pub const fn from_index(index: usize) -> Option<Wang> {
        if index < Self::COUNT {
            Some(Wang(index as u8))
        } else {
            None
        }
    }

    /// Its index in the set (0 to 15).
    pub const fn index(self) -> usize {
        self.0 as usize
    }

    /// Its corners `(ne, se, sw, nw)`, `true` for terrain B.
    pub const fn corners(self) -> (bool, bool, bool, bool) {
        (
            self.0 & 1 != 0,
            self.0 & 2 != 0,
            self.0 & 4 != 0,
            self.0 & 8 != 0,
        )
    }

    /// The tile of cell `(x, y)` of a map whose grid points (cell corners) are terrain B
    /// where `is_b(px, py)`: point `(x, y)` is the cell's top-left corner, `y` grows down.
    pub fn at(x: i32, y: i32, is_b: impl Fn(i32, i32) -> bool) -> Wang {
        Wang::from_corners(
            is_b(x + 1, y),
            is_b(x + 1, y + 1),
            is_b(x, y + 1),
            is_b(x, y),
        )
    }

    /// Whether `right` may stand to the right of `self` in a map (their shared edge has the
    /// same two corners).
    pub const fn meets_right(self, right: Wang) -> bool {
        let (ne, se, _, _) = self.corners();
        let (_, _, sw, nw) = right.corners();
        ne == nw && se == sw
    }

    /// Whether `below` may stand under `self` in a map.
    pub const fn meets_below(self, below: Wang) -> bool {
        let (_, se, sw, _) = self.corners();
        let (ne, _, _, nw) = below.corners();
        se == ne && sw == nw
    }
}

/// The neighbour bits of a [`Blob`] mask.
pub mod neighbour {
    pub const N: u8 = 1;
    pub const NE: u8 = 2;
    pub const E: u8 = 4;
    pub const SE: u8 = 8;
    pub const S: u8 = 16;
    pub const SW: u8 = 32;
    pub const W: u8 = 64;
    pub const NW: u8 = 128;
}

/// The 47 reduced neighbour masks of a blob set, ascending: tile `i` shows `BLOB_MASKS[i]`.
pub const BLOB_MASKS: [u8; Blob::COUNT] = blob_masks();

const fn reduce(mask: u8) -> u8 {
    use neighbour::*;
    let mut reduced = mask & (N | E | S | W);
    let corners = [(NE, N, E), (SE, S, E), (SW, S, W), (NW, N, W)];
    let mut i = 0;
    while i < corners.len() {
        let (corner, a, b) = corners[i];
        if mask & corner != 0 && mask & a != 0 && mask & b != 0 {
            reduced |= corner;
        }
        i += 1;
    }
    reduced
}

const fn blob_masks() -> [u8; Blob::COUNT] {
    let mut masks = [0u8; Blob::COUNT];
    let mut count = 0;
    let mut mask = 0usize;
    while mask < 256 {
        if reduce(mask as u8) == mask as u8 {
            masks[count] = mask as u8;
            count += 1;
        }
        mask += 1;
    }
    assert!(count == Blob::COUNT, "a blob set has 47 tiles");
    masks
}

/// A tile of a 47-tile blob set: the neighbours (reduced) it joins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Blob(u8);

impl Blob {
    /// Tiles in a set.
    pub const COUNT: usize = 47;
    /// Tiles per row of the set's grid (6 rows, the last with one slot empty).
    pub const COLUMNS: usize = 8;

    /// The tile for a cell whose neighbours are terrain where `mask` has their bits
    /// ([`neighbour`]); corner bits without both edges beside them are ignored.
    pub const fn from_neighbours(mask: u8) -> Blob {
        Blob(reduce(mask))
    }

    /// The tile at `index` (0 to 46), if there is one.
    pub const fn from_index(index: usize) -> Option<Blob> {
        if index < Self::COUNT {
            Some(Blob(BLOB_MASKS[index]))
        } else {
            None
        }
    }

    /// Its index in the set (0 to 46).
    pub const fn index(self) -> usize {
        let mut i = 0;
        while BLOB_MASKS[i] != self.0 {
            i += 1;
        }
        i
    }

    /// Its reduced neighbour mask.
    pub const fn neighbours(self) -> u8 {
        self.0
    }

    /// The tile of cell `(x, y)` of a map whose cells are terrain where `is_terrain(x, y)`
    /// (`y` grows down); only meaningful for a terrain cell.
    pub fn at(x: i32, y: i32, is_terrain: impl Fn(i32, i32) -> bool) -> Blob {
        use neighbour::*;
        let around = [
            (0, -1, N),
            (1, -1, NE),
            (1, 0, E),
            (1, 1, SE),
            (0, 1, S),
            (-1, 1, SW),
            (-1, 0, W),
            (-1, -1, NW),
        ];
        let mask = around
            .iter()
            .filter(|(dx, dy, _)| is_terrain(x + dx, y + dy))
            .fold(0, |mask, (_, _, bit)| mask | bit);
        Blob::from_neighbours(mask)
    }
}

#[cfg(test)]
mod tests {
    use super::neighbour::*;
    use super::*;

    #[test]
    fn a_blob_set_has_47_tiles_from_isolated_to_surrounded() {
        assert_eq!(BLOB_MASKS.len(), 47);
        assert!(BLOB_MASKS.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(Blob::from_neighbours(0).index(), 0);
        assert_eq!(Blob::from_neighbours(255).index(), 46);
        // Every one of the 256 neighbourhoods has a tile, and every tile is some
        // neighbourhood's.
        let mut used = [false; Blob::COUNT];
        for mask in 0..=255u8 {
            used[Blob::from_neighbours(mask).index()] = true;
        }
        assert!(used.iter().all(|&u| u));
        for i in 0..Blob::COUNT {
            assert_eq!(Blob::from_index(i).unwrap().index(), i);
        }
        assert_eq!(Blob::from_index(47), None);
    }

    #[test]
    fn a_corner_counts_only_between_two_joined_edges() {
        assert_eq!(Blob::from_neighbours(NE), Blob::from_neighbours(0));
        assert_eq!(Blob::from_neighbours(NE | N), Blob::from_neighbours(N));
        assert_ne!(
            Blob::from_neighbours(NE | N | E),
            Blob::from_neighbours(N | E)
        );
    }

    #[test]
    fn a_map_cell_gets_the_tile_of_its_neighbourhood() {
        // A 3×2 block of terrain: the top-left cell joins east, south and south-east.
        let terrain = |x: i32, y: i32| (0..3).contains(&x) && (0..2).contains(&y);
        assert_eq!(Blob::at(0, 0, terrain), Blob::from_neighbours(E | S | SE));
        assert_eq!(
            Blob::at(1, 0, terrain),
            Blob::from_neighbours(E | SE | S | SW | W)
        );
    }

    #[test]
    fn wang_tiles_are_their_corners_and_meet_where_corners_agree() {
        assert_eq!(Wang::from_corners(false, false, false, false).index(), 0);
        assert_eq!(Wang::from_corners(true, true, true, true).index(), 15);
        assert_eq!(Wang::from_corners(true, false, false, false).index(), 1);
        assert_eq!(Wang::from_corners(false, false, false, true).index(), 8);
        for i in 0..Wang::COUNT {
            let tile = Wang::from_index(i).unwrap();
            let (ne, se, sw, nw) = tile.corners();
            assert_eq!(Wang::from_corners(ne, se, sw, nw), tile);
        }
        // Of 16 × 16 pairs, a quarter may stand side by side: the shared edge fixes two
        // of the right tile's four corners.
        let pairs = |meets: fn(Wang, Wang) -> bool| {
            (0..16)
                .flat_map(|a| (0..16).map(move |b| (a, b)))
                .filter(|&(a, b)| meets(Wang(a), Wang(b)))
                .count()
        };
        assert_eq!(pairs(Wang::meets_right), 64);
        assert_eq!(pairs(Wang::meets_below), 64);
        // Cells of one corner map always meet.
        let is_b = |x: i32, y: i32| (x * 7 + y * 3) % 5 < 2;
        for y in 0..6 {
            for x in 0..6 {
                assert!(Wang::at(x, y, is_b).meets_right(Wang::at(x + 1, y, is_b)));
                assert!(Wang::at(x, y, is_b).meets_below(Wang::at(x, y + 1, is_b)));
            }
        }
    }
}
