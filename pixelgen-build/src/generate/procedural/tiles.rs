//! Tiles, which fill the frame and wrap seamlessly: grass, dirt, floor, wall.

use super::*;

/// Periodic noise: lattice counts divide the frame, so the pattern continues
/// across the right/bottom edge into the next copy of the tile.
pub(super) struct Tiler {
    pub(super) seed: u64,
    pub(super) w: i32,
    pub(super) h: i32,
}

impl Tiler {
    pub(super) fn noise(&self, salt: u64, x: i32, y: i32, cells: i32) -> f64 {
        let nx = cells.clamp(1, self.w.max(1));
        let ny = round_i(f64::from(cells) * f64::from(self.h) / f64::from(self.w))
            .clamp(1, self.h.max(1));
        let gx = f64::from(x) * f64::from(nx) / f64::from(self.w);
        let gy = f64::from(y) * f64::from(ny) / f64::from(self.h);
        let (ix, iy) = (gx.floor() as i32, gy.floor() as i32);
        let (fx, fy) = (gx - f64::from(ix), gy - f64::from(iy));
        let (sx, sy) = (fx * fx * (3.0 - 2.0 * fx), fy * fy * (3.0 - 2.0 * fy));
        let at = |i: i32, j: i32| {
            unit(hash3(
                self.seed ^ salt,
                i.rem_euclid(nx) as u64,
                j.rem_euclid(ny) as u64,
            ))
        };
        let top = lerp(at(ix, iy), at(ix + 1, iy), sx);
        let bot = lerp(at(ix, iy + 1), at(ix + 1, iy + 1), sx);
        lerp(top, bot, sy)
    }

    pub(super) fn white(&self, salt: u64, x: i32, y: i32) -> f64 {
        unit(hash3(
            self.seed ^ salt,
            x.rem_euclid(self.w) as u64,
            y.rem_euclid(self.h) as u64,
        ))
    }

    pub(super) fn pick(&self, salt: u64, i: u64, n: i32) -> i32 {
        (hash3(self.seed ^ salt, i, 7) % n.max(1) as u64) as i32
    }
}

pub(super) fn noise_shade(n: f64, lo: f64, hi: f64) -> i8 {
    if n < lo {
        -1
    } else if n > hi {
        1
    } else {
        0
    }
}

pub(super) fn grass(sc: &mut Scene, cx: &Ctx, rng: &mut Rng) {
    let base_d = hsv(
        rng.range(95.0, 125.0),
        rng.range(0.55, 0.7),
        rng.range(0.58, 0.7),
    );
    let flower_d = [
        hsv(0.0, 0.0, 1.0),
        hsv(52.0, 0.8, 1.0),
        hsv(330.0, 0.5, 1.0),
    ][rng.below(3)];
    let flowers = (rng.chance(0.35) || cx.p.has(&["flower"])) && !cx.p.neg_has(&["flower"]);
    let t = Tiler {
        seed: rng.next_u64(),
        w: sc.w,
        h: sc.h,
    };
    sc.make_tile();
    let base = cx.st.color("grass", Some(0), base_d);
    sc.set_ink(base);
    let g = sc.material(base);
    let f = sc.flat(cx.st.color("flowers", Some(1), flower_d));
    let cells = (sc.w / 8).max(1);
    for y in 0..sc.h {
        for x in 0..sc.w {
            let n = 0.55 * t.noise(1, x, y, cells)
                + 0.3 * t.noise(7, x, y, cells * 2)
                + 0.15 * t.white(2, x, y);
            sc.set(x, y, g, noise_shade(n, 0.36, 0.66));
        }
    }
    // Tufts: a dark root with two lit blades whose tips sway with the wind.
    let sway = round_i(cx.anim.swave());
    let count = (sc.w * sc.h / 36).max(2);
    for i in 0..count as u64 {
        let (x, y) = (t.pick(3, i, sc.w), t.pick(4, i, sc.h));
        sc.set_wrap(x, y, g, -1);
        sc.set_wrap(x - 1, y - 1, g, 1);
        sc.set_wrap(x + 1, y - 1, g, 1);
        if i % 2 == 0 {
            sc.set_wrap(x + 1 + sway, y - 2, g, 1);
        } else {
            sc.set_wrap(x - 1 + sway, y - 2, g, 1);
        }
    }
    if flowers {
        let n = (sc.w * sc.h / 150).max(1);
        for i in 0..n as u64 {
            let (x, y) = (t.pick(5, i, sc.w), t.pick(6, i, sc.h));
            sc.set_wrap(x, y, f, 0);
        }
    }
}

pub(super) fn dirt(sc: &mut Scene, cx: &Ctx, rng: &mut Rng) {
    let sand = cx.p.has(&["sand", "sandy", "desert", "beach"]);
    let base_d = if sand {
        hsv(
            rng.range(40.0, 48.0),
            rng.range(0.35, 0.45),
            rng.range(0.85, 0.92),
        )
    } else {
        hsv(
            rng.range(22.0, 32.0),
            rng.range(0.5, 0.65),
            rng.range(0.45, 0.58),
        )
    };
    let t = Tiler {
        seed: rng.next_u64(),
        w: sc.w,
        h: sc.h,
    };
    sc.make_tile();
    let base = cx.st.color("dirt", Some(0), base_d);
    sc.set_ink(base);
    let d = sc.material(base);
    let pebble = sc.material(hsv(base.h, base.s * 0.3, (base.v * 1.1).min(1.0)));
    let cells = (sc.w / 6).max(1);
    for y in 0..sc.h {
        for x in 0..sc.w {
            let n = 0.6 * t.noise(1, x, y, cells) + 0.4 * t.white(2, x, y);
            sc.set(x, y, d, noise_shade(n, 0.32, 0.72));
        }
    }
    let count = (sc.w * sc.h / 80).max(1);
    for i in 0..count as u64 {
        let (x, y) = (t.pick(3, i, sc.w), t.pick(4, i, sc.h));
        sc.set_wrap(x, y, pebble, 1);
        sc.set_wrap(x + 1, y, pebble, 0);
        sc.set_wrap(x, y + 1, d, -1);
        sc.set_wrap(x + 1, y + 1, d, -1);
    }
}

pub(super) fn floor(sc: &mut Scene, cx: &Ctx, rng: &mut Rng) {
    let stone_d = hsv(
        rng.range(200.0, 240.0),
        rng.range(0.05, 0.14),
        rng.range(0.55, 0.66),
    );
    let t = Tiler {
        seed: rng.next_u64(),
        w: sc.w,
        h: sc.h,
    };
    sc.make_tile();
    let stone = cx.st.color("stone", Some(0), stone_d);
    sc.set_ink(stone);
    let a = sc.material(stone);
    let b = sc.material(hsv(stone.h, stone.s, stone.v * 0.88));
    let mortar = sc.flat(hsv(stone.h, stone.s, stone.v * 0.45));
    let n = if sc.w.min(sc.h) >= 48 { 4 } else { 2 };
    let (w, h) = (sc.w, sc.h);
    let col = |x: i32| x * n / w;
    let row = |y: i32| y * n / h;
    for y in 0..sc.h {
        for x in 0..sc.w {
            let (c, r) = (col(x), row(y));
            let edge_l = col(x - 1) != c || x == 0;
            let edge_t = row(y - 1) != r || y == 0;
            if edge_l || edge_t {
                sc.set(x, y, mortar, 0);
                continue;
            }
            let slab = if hash3(t.seed, c as u64, r as u64).is_multiple_of(2) {
                a
            } else {
                b
            };
            let right = x + 1 == w || col(x + 1) != c;
            let bottom = y + 1 == h || row(y + 1) != r;
            let top_row = row(y - 2) != r || y == 1;
            let left_col = col(x - 2) != c || x == 1;
            let s = if right || bottom {
                -1
            } else if top_row || left_col {
                1
            } else {
                noise_shade(t.white(3, x, y), 0.08, 0.96)
            };
            sc.set(x, y, slab, s);
        }
    }
}

pub(super) fn wall(sc: &mut Scene, cx: &Ctx, rng: &mut Rng) {
    let stone_roll = rng.chance(0.4);
    let brick_d = hsv(
        rng.range(5.0, 20.0),
        rng.range(0.55, 0.7),
        rng.range(0.6, 0.72),
    );
    let grey_d = hsv(
        rng.range(200.0, 230.0),
        rng.range(0.05, 0.12),
        rng.range(0.58, 0.68),
    );
    let t = Tiler {
        seed: rng.next_u64(),
        w: sc.w,
        h: sc.h,
    };
    let p = cx.p;
    let stone = (stone_roll || p.has(&["stone", "castle", "dungeon"])) && !p.has(&["brick"]);
    sc.make_tile();
    let base = cx
        .st
        .color("brick", Some(0), if stone { grey_d } else { brick_d });
    sc.set_ink(base);
    let a = sc.material(base);
    let b = sc.material(hsv(shift_hue(base.h, 250.0, 6.0), base.s, base.v * 0.88));
    let mortar_d = if stone {
        hsv(base.h, base.s, base.v * 0.5)
    } else {
        hsv(40.0, 0.12, 0.78)
    };
    let mortar = sc.flat(cx.st.color("mortar", Some(1), mortar_d));

    // An even number of rows so the half-brick offset repeats vertically.
    let brick_h = (f64::from(sc.h) / 4.0).clamp(4.0, 8.0);
    let rows = ((round_i(f64::from(sc.h) / brick_h) / 2) * 2).max(2);
    let cols = round_i(f64::from(sc.w) / (2.0 * brick_h)).max(2);
    let bw = f64::from(sc.w) / f64::from(cols);
    let (w, h) = (sc.w, sc.h);
    let row_of = |y: i32| (y.rem_euclid(h) * rows) / h;
    for y in 0..h {
        let r = row_of(y);
        let offset = if r % 2 == 1 { bw / 2.0 } else { 0.0 };
        let brick_of = |x: i32| {
            ((f64::from(x.rem_euclid(w)) + f64::from(w) - offset) / bw).floor() as i32 % cols
        };
        for x in 0..w {
            let c = brick_of(x);
            if row_of(y - 1) != r || brick_of(x - 1) != c {
                sc.set(x, y, mortar, 0);
                continue;
            }
            let mat = if hash3(t.seed, r as u64, c as u64).is_multiple_of(3) {
                b
            } else {
                a
            };
            let s = if row_of(y + 1) != r || brick_of(x + 1) != c {
                -1
            } else if row_of(y - 2) != r {
                1
            } else {
                noise_shade(t.white(5, x, y), 0.1, 1.1)
            };
            sc.set(x, y, mat, s);
        }
    }
}
