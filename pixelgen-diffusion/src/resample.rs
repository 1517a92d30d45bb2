//! Pillow's LANCZOS resize of 8-bit images (`src/libImaging/Resample.c`), which diffusers'
//! image processors use (`resample="lanczos"`) to bring a control image to the drawing's
//! size. The same fixed-point arithmetic, so a control image of another size becomes the
//! same bytes diffusers feeds its ControlNet.
//!
//! Invariants: the horizontal pass runs first and rounds to 8 bits, then the vertical
//! pass; coefficients are computed in f64, normalised to sum 1, and rounded to 22-bit
//! fixed point away from zero, as Pillow's `normalize_coeffs_8bpc`; an axis whose size
//! does not change is left as it is.

use image::RgbImage;

/// Fixed-point bits of Pillow's 8-bit coefficients (`32 - 8 - 2`).
const PRECISION_BITS: u32 = 22;

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let x = x * std::f64::consts::PI;
        x.sin() / x
    }
}

fn lanczos3(x: f64) -> f64 {
    if (-3.0..3.0).contains(&x) {
        sinc(x) * sinc(x / 3.0)
    } else {
        0.0
    }
}

/// For each output index: the first input index and the fixed-point weights.
fn coefficients(in_size: usize, out_size: usize) -> Vec<(usize, Vec<i64>)> {
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = 3.0 * filter_scale;
    let ss = 1.0 / filter_scale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let first = ((center - support + 0.5) as i64).max(0) as usize;
            let end = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let weights: Vec<f64> = (first..end)
                .map(|x| lanczos3((x as f64 - center + 0.5) * ss))
                .collect();
            let total: f64 = weights.iter().sum();
            let one = f64::from(1u32 << PRECISION_BITS);
            let fixed = weights
                .iter()
                .map(|&w| {
                    let w = if total != 0.0 { w / total } else { w };
                    if w < 0.0 {
                        (-0.5 + w * one) as i64
                    } else {
                        (0.5 + w * one) as i64
                    }
                })
                .collect();
            (first, fixed)
        })
        .collect()
}

/// Pillow's `clip8`: the accumulator back to a byte.
fn clip8(value: i64) -> u8 {
    (value >> PRECISION_BITS).clamp(0, 255) as u8
}

/// `image` resized to `width × height` as Pillow's `Image.resize(…, LANCZOS)` does.
pub fn lanczos(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    let mut current = image.clone();
    if current.width() != width {
        let coeffs = coefficients(current.width() as usize, width as usize);
        let source = current;
        current = RgbImage::from_fn(width, source.height(), |x, y| {
            let (first, weights) = &coeffs[x as usize];
            let mut acc = [1i64 << (PRECISION_BITS - 1); 3];
            for (j, &k) in weights.iter().enumerate() {
                let pixel = source.get_pixel((first + j) as u32, y);
                for c in 0..3 {
                    acc[c] += i64::from(pixel[c]) * k;
                }
            }
            image::Rgb(acc.map(clip8))
        });
    }
    if current.height() != height {
        let coeffs = coefficients(current.height() as usize, height as usize);
        let source = current;
        current = RgbImage::from_fn(source.width(), height, |x, y| {
            let (first, weights) = &coeffs[y as usize];
            let mut acc = [1i64 << (PRECISION_BITS - 1); 3];
            for (j, &k) in weights.iter().enumerate() {
                let pixel = source.get_pixel(x, (first + j) as u32);
                for c in 0..3 {
                    acc[c] += i64::from(pixel[c]) * k;
                }
            }
            image::Rgb(acc.map(clip8))
        });
    }
    current
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_size_is_left_as_it_is() {
        let image = RgbImage::from_fn(5, 3, |x, y| image::Rgb([x as u8 * 40, y as u8 * 80, 7]));
        assert_eq!(lanczos(&image, 5, 3), image);
    }

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        for (input, output) in [(32, 64), (64, 32), (7, 5)] {
            for (_, weights) in coefficients(input, output) {
                let sum: i64 = weights.iter().sum();
                assert!((sum - (1 << PRECISION_BITS)).abs() <= weights.len() as i64);
            }
        }
    }
}
