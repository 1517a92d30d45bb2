//! Colour: HSV materials, their 3-step ramps and outline colours.

/// Hue in degrees, saturation and value in [0, 1].
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Hsv {
    pub(super) h: f64,
    pub(super) s: f64,
    pub(super) v: f64,
}

pub(super) const fn hsv(h: f64, s: f64, v: f64) -> Hsv {
    Hsv { h, s, v }
}

pub(super) type Rgb = [u8; 3];

/// A point in box coordinates (u, v).
pub(super) type Point = (f64, f64);

pub(super) fn to_rgb(c: Hsv) -> Rgb {
    let h = c.h.rem_euclid(360.0) / 60.0;
    let s = c.s.clamp(0.0, 1.0);
    let v = c.v.clamp(0.0, 1.0);
    let i = h.floor();
    let f = h - i;
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    let (r, g, b) = match i as i32 {
        0 => (v, t, p),
        1 => (q, v, p),
        2 => (p, v, t),
        3 => (p, q, v),
        4 => (t, p, v),
        _ => (v, p, q),
    };
    let byte = |x: f64| (x * 255.0).round().clamp(0.0, 255.0) as u8;
    [byte(r), byte(g), byte(b)]
}

/// Moves hue `h` up to `amount` degrees towards `target` along the short arc.
pub(super) fn shift_hue(h: f64, target: f64, amount: f64) -> f64 {
    let mut d = (target - h).rem_euclid(360.0);
    if d > 180.0 {
        d -= 360.0;
    }
    (h + d.clamp(-amount, amount)).rem_euclid(360.0)
}

/// Shadow, base and highlight of one material. Shadows drift towards blue and
/// highlights towards yellow, the usual pixel-art hue shift.
pub(super) fn ramp(c: Hsv) -> [Rgb; 3] {
    let shadow = hsv(
        shift_hue(c.h, 250.0, 14.0 * c.s.min(1.0)),
        (c.s * 1.08 + 0.06).min(1.0),
        c.v * 0.66,
    );
    let light = hsv(
        shift_hue(c.h, 55.0, 10.0 * c.s.min(1.0)),
        c.s * 0.72,
        (c.v * 1.18 + 0.1).min(1.0),
    );
    [to_rgb(shadow), to_rgb(c), to_rgb(light)]
}

/// Near-black, tinted towards the sprite's main colour.
pub(super) fn outline_of(main: Hsv) -> Hsv {
    let s = if main.s > 0.15 { 0.55 } else { 0.25 };
    hsv(shift_hue(main.h, 250.0, 25.0), s, 0.14)
}

pub(super) fn hue_dist(a: f64, b: f64) -> f64 {
    let d = (a - b).rem_euclid(360.0);
    d.min(360.0 - d)
}
