//! The check every packing passes before it is counted: all rects placed at their size,
//! inside the atlas, none overlapping.

use super::{Packing, Sizes, UNPLACED};

/// All rects placed at their size, inside the atlas, none overlapping.
pub(super) fn validate(sizes: &Sizes, p: &Packing) -> Result<(), String> {
    if p.positions.len() != sizes.len() {
        return Err(format!(
            "{} positions for {} rects",
            p.positions.len(),
            sizes.len()
        ));
    }
    let (aw, ah) = (p.width as usize, p.height as usize);
    let mut taken = vec![false; aw * ah];
    for (i, (&(x, y), &(w, h))) in p.positions.iter().zip(sizes).enumerate() {
        if (x, y) == UNPLACED {
            return Err(format!("rect {i} not placed (or at a wrong size)"));
        }
        let (x, y, w, h) = (x as usize, y as usize, w as usize, h as usize);
        if x + w > aw || y + h > ah {
            return Err(format!("rect {i} outside the atlas"));
        }
        for row in y..y + h {
            let cells = &mut taken[row * aw + x..row * aw + x + w];
            if cells.iter().any(|&t| t) {
                return Err(format!("rect {i} overlaps another"));
            }
            cells.fill(true);
        }
    }
    Ok(())
}
