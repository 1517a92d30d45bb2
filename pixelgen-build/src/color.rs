//! Colour science shared by palette mapping and pixelize: sRGB ↔ OKLab and the
//! nearest-colour search, each in exactly one place.
//!
//! Invariants:
//! - [`srgb_to_oklab`] is a pure function of the 8-bit colour: the sRGB curve comes from
//!   a table of the exact transfer function, the matrices are applied in f64, so every
//!   caller (palette mapping, background removal, colour clustering) gets the same bits.
//! - [`nearest`] breaks ties towards the lowest index, so results never depend on float
//!   noise in the order of a palette.

/// An sRGB colour, opaque.
pub type Rgb = [u8; 3];

/// A colour in OKLab: `[L, a, b]`, `L` in `0.0..=1.0`.
pub type Lab = [f32; 3];

/// OKLab (Björn Ottosson) of an sRGB colour, using the exact sRGB transfer function.
pub fn srgb_to_oklab(color: Rgb) -> Lab {
    // f64 inside: the published matrices have more digits than f32 holds. The curve is a
    // table: callers convert every cell of an image several times.
    static LINEAR: std::sync::OnceLock<[f64; 256]> = std::sync::OnceLock::new();
    let table = LINEAR.get_or_init(|| std::array::from_fn(|v| srgb_to_linear(v as f64 / 255.0)));
    let [r, g, b] = color.map(|c| table[usize::from(c)]);
    let l = (0.4122214708 * r + 0.5363325363 * g + 0.0514459929 * b).cbrt();
    let m = (0.2119034982 * r + 0.6806995451 * g + 0.1073969566 * b).cbrt();
    let s = (0.0883024619 * r + 0.2817188376 * g + 0.6299787005 * b).cbrt();
    [
        (0.2104542553 * l + 0.7936177850 * m - 0.0040720468 * s) as f32,
        (1.9779984951 * l - 2.4285922050 * m + 0.4505937099 * s) as f32,
        (0.0259040371 * l + 0.7827717662 * m - 0.8086757660 * s) as f32,
    ]
}

/// sRGB colour of an OKLab `[L, a, b]` value; out-of-gamut results are
/// clamped per channel, then rounded to the nearest 8-bit value.
pub fn oklab_to_srgb(lab: Lab) -> Rgb {
    let [ll, a, b] = lab.map(f64::from);
    let l = (ll + 0.3963377774 * a + 0.2158037573 * b).powi(3);
    let m = (ll - 0.1055613458 * a - 0.0638541728 * b).powi(3);
    let s = (ll - 0.0894841775 * a - 1.2914855480 * b).powi(3);
    let lin = [
        4.0767416621 * l - 3.3077115913 * m + 0.2309699292 * s,
        -1.2684380046 * l + 2.6097574011 * m - 0.3413193965 * s,
        -0.0041960863 * l - 0.7034186147 * m + 1.7076147010 * s,
    ];
    // `as u8` saturates (and maps NaN to 0), so this cannot panic.
    lin.map(|c| (linear_to_srgb(c.clamp(0.0, 1.0)) * 255.0).round() as u8)
}

/// Squared Euclidean distance between two OKLab colours.
pub fn oklab_distance2(a: &Lab, b: &Lab) -> f32 {
    let d = [a[0] - b[0], a[1] - b[1], a[2] - b[2]];
    d[0] * d[0] + d[1] * d[1] + d[2] * d[2]
}

/// Index of the colour in `labs` nearest to `target` in OKLab; ties go to the lowest
/// index; 0 for an empty slice.
pub fn nearest(labs: &[Lab], target: &Lab) -> usize {
    let mut best = (f32::INFINITY, 0);
    for (k, lab) in labs.iter().enumerate() {
        let d = oklab_distance2(lab, target);
        // Strict `<` keeps the lowest index on ties.
        if d < best.0 {
            best = (d, k);
        }
    }
    best.1
}

fn srgb_to_linear(c: f64) -> f64 {
    if c <= 0.04045 {
        c / 12.92
    } else {
        ((c + 0.055) / 1.055).powf(2.4)
    }
}

fn linear_to_srgb(c: f64) -> f64 {
    if c <= 0.0031308 {
        c * 12.92
    } else {
        1.055 * c.powf(1.0 / 2.4) - 0.055
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oklab_reference_values() {
        let white = srgb_to_oklab([255, 255, 255]);
        assert!((white[0] - 1.0).abs() < 1e-3, "{white:?}");
        assert!(white[1].abs() < 1e-3 && white[2].abs() < 1e-3, "{white:?}");
        assert_eq!(srgb_to_oklab([0, 0, 0]), [0.0, 0.0, 0.0]);
        // Pure red per Ottosson: L 0.628, a 0.225, b 0.126.
        let red = srgb_to_oklab([255, 0, 0]);
        for (got, want) in red.iter().zip([0.627955, 0.224863, 0.125846]) {
            assert!((got - want).abs() < 1e-3, "{red:?}");
        }
    }

    #[test]
    fn oklab_round_trip_within_one() {
        let steps: Vec<u8> = (0..=255u8).step_by(15).chain([1, 254, 255]).collect();
        for &r in &steps {
            for &g in &steps {
                for &b in &steps {
                    let back = oklab_to_srgb(srgb_to_oklab([r, g, b]));
                    for (x, y) in back.iter().zip([r, g, b]) {
                        assert!(x.abs_diff(y) <= 1, "{:?} -> {back:?}", [r, g, b]);
                    }
                }
            }
        }
        // Out of gamut and NaN are clamped, not panics.
        assert_eq!(oklab_to_srgb([2.0, 0.0, 0.0]), [255, 255, 255]);
        assert_eq!(oklab_to_srgb([-1.0, 0.0, 0.0]), [0, 0, 0]);
        let _ = oklab_to_srgb([f32::NAN, f32::INFINITY, f32::NEG_INFINITY]);
    }

    #[test]
    fn nearest_takes_the_closest_and_the_lowest_index_on_ties() {
        let labs = [[0.5, 0.0, 0.0], [0.5, 0.0, 0.0], [0.9, 0.0, 0.0]];
        assert_eq!(nearest(&labs, &[0.4, 0.0, 0.0]), 0);
        assert_eq!(nearest(&labs, &[0.8, 0.1, 0.0]), 2);
        assert_eq!(nearest(&[], &[0.4, 0.0, 0.0]), 0);
    }
}
