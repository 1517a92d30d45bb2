//! The raw image as floats, the form every pixelize step reads.

use image::RgbaImage;

/// Alpha at or above this is opaque; below, transparent.
pub(crate) const ALPHA_THRESHOLD: u8 = 128;

/// An RGB float image with a binary opacity mask, row-major.
pub(crate) struct Raster {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<[f32; 3]>,
    pub opaque: Vec<bool>,
}

impl Raster {
    pub fn from_rgba(image: &RgbaImage) -> Raster {
        let (width, height) = (image.width() as usize, image.height() as usize);
        let mut rgb = Vec::with_capacity(width * height);
        let mut opaque = Vec::with_capacity(width * height);
        for pixel in image.pixels() {
            let [r, g, b, a] = pixel.0;
            rgb.push([f32::from(r), f32::from(g), f32::from(b)]);
            opaque.push(a >= ALPHA_THRESHOLD);
        }
        Raster {
            width,
            height,
            rgb,
            opaque,
        }
    }

    /// Whether any pixel is transparent: the generator drew its own background.
    pub fn has_transparency(&self) -> bool {
        self.opaque.iter().any(|&o| !o)
    }

    /// Box-filtered copy, `factor` × `factor` pixels to one (the last partial block is
    /// dropped). Transparent pixels count with their stored colour: only grid fitting
    /// reads the result.
    pub fn shrink(&self, factor: usize) -> Raster {
        let (width, height) = (self.width / factor, self.height / factor);
        let mut rgb = vec![[0.0f32; 3]; width * height];
        let scale = 1.0 / (factor * factor) as f32;
        for y in 0..height * factor {
            let row = &self.rgb[y * self.width..y * self.width + width * factor];
            let out = &mut rgb[(y / factor) * width..(y / factor + 1) * width];
            for (x, pixel) in row.iter().enumerate() {
                let o = &mut out[x / factor];
                for c in 0..3 {
                    o[c] += pixel[c] * scale;
                }
            }
        }
        Raster {
            width,
            height,
            rgb,
            opaque: vec![true; width * height],
        }
    }
}

/// Squared RGB distance.
pub(crate) fn distance2(a: &[f32; 3], b: &[f32; 3]) -> f32 {
    let d = [a[0] - b[0], a[1] - b[1], a[2] - b[2]];
    d[0] * d[0] + d[1] * d[1] + d[2] * d[2]
}

/// Median of `values` (the mean of the middle two for an even count); 0 when empty.
pub(crate) fn median(values: &mut [f32]) -> f32 {
    let n = values.len();
    if n == 0 {
        return 0.0;
    }
    let (_, &mut upper, _) = values.select_nth_unstable_by(n / 2, f32::total_cmp);
    if n % 2 == 1 {
        return upper;
    }
    let lower = values[..n / 2].iter().copied().fold(f32::MIN, f32::max);
    (lower + upper) / 2.0
}
