//! The canvas of material cells, and the pen that draws shapes into it in normalised
//! box coordinates.

use super::*;

#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Cell {
    pub(super) mat: u8,
    pub(super) shade: i8,
}

pub(super) const EMPTY: u8 = 0;
/// Material 1 is the outline colour, also used for eyes and slits.
pub(super) const INK: u8 = 1;

pub(super) struct Scene {
    pub(super) w: i32,
    pub(super) h: i32,
    pub(super) cells: Vec<Cell>,
    pub(super) ramps: Vec<[Rgb; 3]>,
    /// Drawable rectangle [x0, y0, x1, y1): sprites keep a 1-px margin so the
    /// outline always fits and never eats the shape.
    pub(super) clip: [i32; 4],
    /// Tiles fill the frame and get no outline.
    pub(super) tile: bool,
    /// Per axis (x, y): the canvas is a torus there (a sprite's `tiling`), so what is
    /// drawn across an edge continues on the other side and the outline sees across it.
    pub(super) wrap: (bool, bool),
}

impl Scene {
    pub(super) fn new(w: i32, h: i32) -> Self {
        Scene {
            w,
            h,
            cells: vec![Cell::default(); w as usize * h as usize],
            ramps: vec![[[0; 3]; 3], [[20, 16, 28]; 3]],
            clip: [1, 1, w - 1, h - 1],
            tile: false,
            wrap: (false, false),
        }
    }

    /// Makes the canvas wrap on `tiling`'s axes: no margin there, and every read and
    /// write past an edge lands on the other side.
    pub(super) fn wrap_on(&mut self, tiling: Option<Tiling>) {
        let Some(tiling) = tiling else { return };
        self.wrap = (tiling.wraps_x(), tiling.wraps_y());
        if self.wrap.0 {
            (self.clip[0], self.clip[2]) = (i32::MIN / 2, i32::MAX / 2);
        }
        if self.wrap.1 {
            (self.clip[1], self.clip[3]) = (i32::MIN / 2, i32::MAX / 2);
        }
    }

    /// `(x, y)` taken onto the canvas on the axes it wraps on.
    fn wrapped(&self, x: i32, y: i32) -> (i32, i32) {
        (
            if self.wrap.0 { x.rem_euclid(self.w) } else { x },
            if self.wrap.1 { y.rem_euclid(self.h) } else { y },
        )
    }

    pub(super) fn set_ink(&mut self, main: Hsv) {
        self.ramps[INK as usize] = [to_rgb(outline_of(main)); 3];
    }

    pub(super) fn material(&mut self, c: Hsv) -> u8 {
        self.ramps.push(ramp(c));
        u8::try_from(self.ramps.len() - 1).unwrap_or(u8::MAX)
    }

    /// A one-colour material (eyes, shine, sparkles).
    pub(super) fn flat(&mut self, c: Hsv) -> u8 {
        self.ramps.push([to_rgb(c); 3]);
        u8::try_from(self.ramps.len() - 1).unwrap_or(u8::MAX)
    }

    pub(super) fn make_tile(&mut self) {
        self.tile = true;
        self.clip = [0, 0, self.w, self.h];
        self.wrap = (false, false);
    }

    pub(super) fn get(&self, x: i32, y: i32) -> Cell {
        let (x, y) = self.wrapped(x, y);
        if x < 0 || y < 0 || x >= self.w || y >= self.h {
            Cell::default()
        } else {
            self.cells[(y * self.w + x) as usize]
        }
    }

    pub(super) fn set(&mut self, x: i32, y: i32, mat: u8, shade: i8) {
        let [x0, y0, x1, y1] = self.clip;
        if x >= x0 && y >= y0 && x < x1 && y < y1 {
            let (x, y) = self.wrapped(x, y);
            if x < 0 || y < 0 || x >= self.w || y >= self.h {
                return;
            }
            self.cells[(y * self.w + x) as usize] = Cell { mat, shade };
        }
    }

    /// Tiles wrap around so that repeated frames join seamlessly.
    pub(super) fn set_wrap(&mut self, x: i32, y: i32, mat: u8, shade: i8) {
        let (x, y) = (x.rem_euclid(self.w), y.rem_euclid(self.h));
        self.cells[(y * self.w + x) as usize] = Cell { mat, shade };
    }

    pub(super) fn shade_at(&mut self, x: i32, y: i32, shade: i8) {
        let c = self.get(x, y);
        if c.mat != EMPTY {
            self.set(x, y, c.mat, shade);
        }
    }

    pub(super) fn into_image(self, outline: bool) -> RgbaImage {
        let ink = self.ramps[INK as usize][0];
        let mut img = RgbaImage::new(self.w as u32, self.h as u32);
        for y in 0..self.h {
            for x in 0..self.w {
                let c = self.get(x, y);
                let px = if c.mat != EMPTY {
                    let r = self.ramps[c.mat as usize][(c.shade.clamp(-1, 1) + 1) as usize];
                    Rgba([r[0], r[1], r[2], 255])
                } else if outline
                    && !self.tile
                    && [(0, -1), (-1, 0), (1, 0), (0, 1)]
                        .iter()
                        .any(|&(dx, dy)| self.get(x + dx, y + dy).mat != EMPTY)
                {
                    Rgba([ink[0], ink[1], ink[2], 255])
                } else {
                    Rgba([0, 0, 0, 0])
                };
                img.put_pixel(x as u32, y as u32, px);
            }
        }
        img
    }
}

/// A drawing box: u runs from -0.5 (left) to 0.5 (right) around the frame's
/// vertical centre line, v from 0 (top) to 1 (bottom).
///
/// Centring on `cx = width / 2` keeps `x + 0.5 - cx` exact, so a shape that
/// only depends on |u| is exactly mirror-symmetric in pixels.
#[derive(Clone, Copy)]
pub(super) struct Fr {
    pub(super) cx: f64,
    pub(super) top: f64,
    pub(super) bw: f64,
    pub(super) bh: f64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Align {
    Bottom,
    Centre,
}

/// The largest box inside the 1-px margin whose aspect (width / height) lies in
/// [amin, amax]; stretching within that range lets tall frames get tall sprites.
pub(super) fn fit(sc: &Scene, amin: f64, amax: f64, align: Align) -> Fr {
    let iw = f64::from((sc.w - 2).max(1));
    let ih = f64::from((sc.h - 2).max(1));
    let (bw, bh) = if iw / ih > amax {
        (ih * amax, ih)
    } else if iw / ih < amin {
        (iw, iw / amin)
    } else {
        (iw, ih)
    };
    let top = match align {
        Align::Bottom => 1.0 + ih - bh,
        Align::Centre => 1.0 + ((ih - bh) / 2.0).floor(),
    };
    Fr {
        cx: f64::from(sc.w) / 2.0,
        top,
        bw,
        bh,
    }
}

impl Fr {
    pub(super) fn uv(&self, x: i32, y: i32) -> (f64, f64) {
        (
            (f64::from(x) + 0.5 - self.cx) / self.bw,
            (f64::from(y) + 0.5 - self.top) / self.bh,
        )
    }

    pub(super) fn shift(self, dx: i32, dy: i32) -> Fr {
        Fr {
            cx: self.cx + f64::from(dx),
            top: self.top + f64::from(dy),
            ..self
        }
    }

    /// One pixel in u.
    pub(super) fn pu(&self) -> f64 {
        1.0 / self.bw
    }

    /// One pixel in v.
    pub(super) fn pv(&self) -> f64 {
        1.0 / self.bh
    }

    /// Size of the box in whole pixels (the smaller side); details below a
    /// threshold are skipped.
    pub(super) fn px(&self) -> f64 {
        self.bw.min(self.bh)
    }
}

/// How a shape picks shadow/base/highlight for its pixels.
#[derive(Clone, Copy)]
pub(super) enum Shade {
    Flat(i8),
    /// Light from the top-left: a pixel whose upper or left neighbour lies
    /// outside the shape is highlit, lower or right edge is in shadow.
    Rim,
    /// Round body: highlight spot upper-left, shadow crescent lower-right.
    Sphere,
    /// Vertical cylinder: left side lit, right side in shadow.
    Cyl,
    /// Like Sphere with small light and shadow areas: faces, hair.
    Soft,
    /// Inverse of Rim: an engraved or recessed area (coin face).
    Inset,
}

pub(super) fn sphere_shade(lx: f64, ly: f64) -> i8 {
    let (hx, hy) = (lx + 0.38, ly + 0.42);
    if hx * hx + hy * hy < 0.17 {
        1
    } else if 0.55 * lx + 0.8 * ly > 0.42 {
        -1
    } else {
        0
    }
}

/// Half extent that still covers at least one pixel: features never vanish at
/// small sizes (and a centred one covers two pixels rather than going lopsided).
pub(super) fn half(extent: f64, scale: f64) -> f64 {
    let hpx = extent.abs() / 2.0 * scale;
    if hpx <= 0.5 {
        (0.5 + 1e-9) / scale
    } else {
        (hpx - 1e-9) / scale
    }
}

pub(super) struct Pen<'s> {
    pub(super) sc: &'s mut Scene,
    pub(super) fr: Fr,
}

impl Pen<'_> {
    /// Core rasteriser: every pixel whose centre is `inside` gets `mat`.
    /// `local` gives shape-local coordinates in [-1, 1] for Sphere/Cyl shading.
    pub(super) fn fill(
        &mut self,
        bounds: [f64; 4],
        mat: u8,
        shade: Shade,
        inside: impl Fn(f64, f64) -> bool,
        local: impl Fn(f64, f64) -> (f64, f64),
    ) {
        let fr = self.fr;
        let x0 = ((fr.cx + bounds[0] * fr.bw).floor() as i32 - 1).max(self.sc.clip[0]);
        let x1 = ((fr.cx + bounds[1] * fr.bw).ceil() as i32 + 1).min(self.sc.clip[2]);
        let y0 = ((fr.top + bounds[2] * fr.bh).floor() as i32 - 1).max(self.sc.clip[1]);
        let y1 = ((fr.top + bounds[3] * fr.bh).ceil() as i32 + 1).min(self.sc.clip[3]);
        let (pu, pv) = (fr.pu(), fr.pv());
        for y in y0..y1 {
            for x in x0..x1 {
                let (u, v) = fr.uv(x, y);
                if !inside(u, v) {
                    continue;
                }
                let s = match shade {
                    Shade::Flat(s) => s,
                    Shade::Rim | Shade::Inset => {
                        let lit = !inside(u - pu, v) || !inside(u, v - pv);
                        let dark = !inside(u + pu, v) || !inside(u, v + pv);
                        let s = i8::from(lit) - i8::from(dark);
                        if matches!(shade, Shade::Inset) { -s } else { s }
                    }
                    Shade::Soft => {
                        let (lx, ly) = local(u, v);
                        let (hx, hy) = (lx + 0.55, ly + 0.6);
                        if hx * hx + hy * hy < 0.1 {
                            1
                        } else if 0.55 * lx + 0.8 * ly > 0.72 {
                            -1
                        } else {
                            0
                        }
                    }
                    Shade::Sphere => {
                        let (lx, ly) = local(u, v);
                        sphere_shade(lx, ly)
                    }
                    Shade::Cyl => {
                        let (lx, _) = local(u, v);
                        if lx < -0.4 {
                            1
                        } else if lx > 0.4 {
                            -1
                        } else {
                            0
                        }
                    }
                };
                self.sc.set(x, y, mat, s);
            }
        }
    }

    pub(super) fn rect(&mut self, u0: f64, u1: f64, v0: f64, v1: f64, mat: u8, shade: Shade) {
        let (cu, cv) = ((u0 + u1) / 2.0, (v0 + v1) / 2.0);
        let hu = half(u1 - u0, self.fr.bw);
        let hv = half(v1 - v0, self.fr.bh);
        self.fill(
            [cu - hu, cu + hu, cv - hv, cv + hv],
            mat,
            shade,
            |u, v| (u - cu).abs() <= hu && (v - cv).abs() <= hv,
            |u, v| ((u - cu) / hu, (v - cv) / hv),
        );
    }

    pub(super) fn ellipse(&mut self, cu: f64, cv: f64, ru: f64, rv: f64, mat: u8, shade: Shade) {
        let ru = ru.max(0.5 * self.fr.pu());
        let rv = rv.max(0.5 * self.fr.pv());
        self.fill(
            [cu - ru, cu + ru, cv - rv, cv + rv],
            mat,
            shade,
            |u, v| {
                let (x, y) = ((u - cu) / ru, (v - cv) / rv);
                x * x + y * y <= 1.0 + 1e-9
            },
            |u, v| ((u - cu) / ru, (v - cv) / rv),
        );
    }

    /// A rounded square (superellipse |x|⁴ + |y|⁴ ≤ 1): heads, helmets.
    pub(super) fn squircle(&mut self, cu: f64, cv: f64, ru: f64, rv: f64, mat: u8, shade: Shade) {
        let ru = ru.max(0.5 * self.fr.pu());
        let rv = rv.max(0.5 * self.fr.pv());
        self.fill(
            [cu - ru, cu + ru, cv - rv, cv + rv],
            mat,
            shade,
            |u, v| {
                let (x, y) = ((u - cu) / ru, (v - cv) / rv);
                x * x * x * x + y * y * y * y <= 1.0 + 1e-9
            },
            |u, v| ((u - cu) / ru, (v - cv) / rv),
        );
    }

    /// A shape given row by row: `f(t)` returns (centre, half width) at
    /// t = 0 (top, v0) ..= 1 (bottom, v1). Capes, hats, blades, bottles.
    pub(super) fn profile(
        &mut self,
        v0: f64,
        v1: f64,
        mat: u8,
        shade: Shade,
        f: impl Fn(f64) -> (f64, f64),
    ) {
        let min = (0.5 + 1e-9) * self.fr.pu();
        let (cv, hv) = ((v0 + v1) / 2.0, half(v1 - v0, self.fr.bh));
        let at = |v: f64| {
            let t = if v1 > v0 {
                ((v - v0) / (v1 - v0)).clamp(0.0, 1.0)
            } else {
                0.5
            };
            let (c, hw) = f(t);
            (c, hw.max(min), t)
        };
        let mut reach = 0.0f64;
        for i in 0..=32 {
            let (c, hw) = f(f64::from(i) / 32.0);
            reach = reach.max(c.abs() + hw.max(min));
        }
        self.fill(
            [-reach, reach, cv - hv, cv + hv],
            mat,
            shade,
            |u, v| {
                let (c, hw, _) = at(v);
                (v - cv).abs() <= hv && (u - c).abs() <= hw
            },
            |u, v| {
                let (c, hw, t) = at(v);
                ((u - c) / hw, t * 2.0 - 1.0)
            },
        );
    }

    /// Two mirrored copies of a rect at ±u (|u| given as a..b).
    pub(super) fn rect2(&mut self, a: f64, b: f64, v0: f64, v1: f64, mat: u8, shade: Shade) {
        self.rect(-b, -a, v0, v1, mat, shade);
        self.rect(a, b, v0, v1, mat, shade);
    }
}
