//! Fallback for prompts no family matches: a random mirrored-mask sprite.

use super::*;

/// Dave Bollinger-style sprite: a random left half on a coarse grid, mirrored,
/// trimmed to its largest connected piece, with eyes, shading and outline.
pub(super) fn creature(sc: &mut Scene, cx: &Ctx, rng: &mut Rng) {
    let hue = rng.range(0.0, 360.0);
    let body_d = hsv(hue, rng.range(0.45, 0.75), rng.range(0.65, 0.85));
    let second_d = hsv(
        (hue + rng.range(100.0, 260.0)).rem_euclid(360.0),
        rng.range(0.4, 0.7),
        rng.range(0.7, 0.9),
    );
    let mask_seed = rng.next_u64();
    let st = cx.st;
    let body = st.color("body", Some(0), body_d);
    sc.set_ink(body);
    let body_m = sc.material(body);
    let second_m = sc.material(st.color("spots", Some(1), second_d));
    let white_m = sc.flat(hsv(0.0, 0.0, 1.0));

    let (iw, ih) = ((sc.w - 2).max(1), (sc.h - 3).max(1));
    let k = (iw.min(ih) / 10).max(1);
    let centre = f64::from(sc.w) / 2.0;
    // Column index counted outwards from the mirror line, so it is symmetric.
    let col_of = |x: i32| ((f64::from(x) + 0.5 - centre).abs() / f64::from(k)).floor() as i32;
    let half_cols = col_of(1) + 1;
    let rows = (ih / k).max(1);
    let top = 1 + (ih - rows * k);

    let mut r = Rng::new(mask_seed);
    let (hc, nr) = (half_cols as usize, rows as usize);
    let mut mask = vec![0u8; hc * nr];
    for j in 0..nr {
        let rv = (j as f64 + 0.5) / nr as f64;
        for i in 0..hc {
            let cu = (i as f64 + 0.5) / hc as f64;
            let mut p = 0.75 - 0.7 * cu * cu;
            if !(0.1..=0.92).contains(&rv) {
                p -= 0.3;
            }
            if i == 0 && (0.2..=0.85).contains(&rv) {
                p = 0.95;
            }
            if r.chance(p) {
                mask[j * hc + i] = if r.chance(0.22) { 2 } else { 1 };
            }
        }
    }
    keep_largest(&mut mask, hc, nr);
    // Eyes: a row in the upper half where column 1 (or 0) is solid.
    let eye_col = usize::from(hc > 2);
    let eye_row = (nr / 5..=nr / 2)
        .find(|&j| mask[j * hc + eye_col] != 0 && (j == 0 || mask[(j - 1) * hc + eye_col] != 0));
    if let Some(j) = eye_row {
        mask[j * hc + eye_col] = 3;
    }

    // Idle: the body bobs a pixel during the second half of the cycle while the
    // outer columns (arms, wings, fins) wave up and down.
    let bob = i32::from(cx.anim.wave() < 0.0);
    let wave = round_i(cx.anim.swave());
    for y in 1..sc.h - 1 {
        for x in 1..sc.w - 1 {
            let i = col_of(x);
            if i >= half_cols {
                continue;
            }
            let outer = half_cols >= 4 && 2 * i >= half_cols;
            let dy = (bob + if outer { wave } else { 0 }).clamp(-1, 1);
            let j = (y - top - dy).div_euclid(k);
            if j < 0 || j >= rows {
                continue;
            }
            let cell = mask[j as usize * hc + i as usize];
            let (mat, shade) = match cell {
                0 => continue,
                1 => (body_m, 0),
                2 => (second_m, 0),
                _ => {
                    // Eye cell: white with a dark pupil when there is room.
                    let cxp = (f64::from(x) + 0.5 - centre).abs() / f64::from(k) - f64::from(i);
                    let cyp = f64::from(y - top - dy) / f64::from(k) - f64::from(j);
                    if k >= 3 && (cxp - 0.5).abs() < 0.3 && cyp > 0.3 {
                        (INK, 0)
                    } else if k >= 3 {
                        (white_m, 0)
                    } else {
                        (INK, 0)
                    }
                }
            };
            sc.set(x, y, mat, shade);
        }
    }
    // Rim light from the top-left over the finished silhouette.
    let snapshot: Vec<Cell> = sc.cells.clone();
    let (w, h) = (sc.w, sc.h);
    let filled = |x: i32, y: i32| {
        x >= 0 && y >= 0 && x < w && y < h && snapshot[(y * w + x) as usize].mat != EMPTY
    };
    let lower = top + bob + rows * k * 7 / 10;
    for y in 0..h {
        for x in 0..w {
            let c = snapshot[(y * w + x) as usize];
            if c.mat != body_m && c.mat != second_m {
                continue;
            }
            let lit = !filled(x - 1, y) || !filled(x, y - 1);
            let dark = !filled(x + 1, y) || !filled(x, y + 1) || y >= lower;
            sc.set(x, y, c.mat, i8::from(lit) - i8::from(dark));
        }
    }
}

/// Keeps only the largest 4-connected group of non-zero cells.
pub(super) fn keep_largest(mask: &mut [u8], w: usize, h: usize) {
    let mut label = vec![0usize; mask.len()];
    let mut best = (0, 0);
    let mut next = 1;
    for start in 0..mask.len() {
        if mask[start] == 0 || label[start] != 0 {
            continue;
        }
        let mut stack = vec![start];
        label[start] = next;
        let mut size = 0;
        while let Some(c) = stack.pop() {
            size += 1;
            let (x, y) = (c % w, c / w);
            let mut push = |n: usize| {
                if mask[n] != 0 && label[n] == 0 {
                    label[n] = next;
                    stack.push(n);
                }
            };
            if x > 0 {
                push(c - 1);
            }
            if x + 1 < w {
                push(c + 1);
            }
            if y > 0 {
                push(c - w);
            }
            if y + 1 < h {
                push(c + w);
            }
        }
        if size > best.1 {
            best = (next, size);
        }
        next += 1;
    }
    for (m, l) in mask.iter_mut().zip(&label) {
        if *l != best.0 {
            *m = 0;
        }
    }
}
