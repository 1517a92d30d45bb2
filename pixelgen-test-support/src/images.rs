//! Images: reading PNGs (a failure names the file), comparing two pictures, measuring the
//! seam of a tile, and counting the colours of one.

use std::path::Path;

use image::{RgbImage, Rgba, RgbaImage};

/// The image at `path` as RGB; panics naming the file when it cannot be read.
pub fn read_rgb(path: &Path) -> RgbImage {
    open(path).unwrap_or_else(|e| panic!("{e}")).into_rgb8()
}

/// The image at `path` as RGBA; panics naming the file when it cannot be read.
pub fn read_rgba(path: &Path) -> RgbaImage {
    open(path).unwrap_or_else(|e| panic!("{e}")).into_rgba8()
}

/// The image at `path`, or an error that names the file (for callers that go on without it).
pub fn open(path: &Path) -> Result<image::DynamicImage, String> {
    image::open(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// How far apart two same-sized pictures are: the mean absolute difference of their
/// channel values and the largest one, both in levels of 255. Panics when their sizes differ.
pub fn difference(a: &RgbImage, b: &RgbImage) -> (f64, u8) {
    assert_eq!(a.dimensions(), b.dimensions(), "image sizes differ");
    let mut sum = 0u64;
    let mut largest = 0u8;
    for (x, y) in a.as_raw().iter().zip(b.as_raw()) {
        let d = x.abs_diff(*y);
        sum += u64::from(d);
        largest = largest.max(d);
    }
    (sum as f64 / a.as_raw().len() as f64, largest)
}

/// How many distinct colours `picture` has.
pub fn colour_count(picture: &RgbImage) -> usize {
    let mut colours: Vec<[u8; 3]> = picture.pixels().map(|p| p.0).collect();
    colours.sort_unstable();
    colours.dedup();
    colours.len()
}

/// `(mean |last column − first column|, the largest mean |column i − column i+1| inside,
/// the same for rows)`, in levels of 255 averaged over the channels: a tile wraps when
/// its seam is no larger than a step between neighbouring columns (rows) inside it.
pub fn seam_difference(image: &RgbaImage) -> (f64, f64, f64, f64) {
    let (w, h) = image.dimensions();
    let diff = |a: &Rgba<u8>, b: &Rgba<u8>| -> f64 {
        (0..3).map(|c| f64::from(a[c].abs_diff(b[c]))).sum::<f64>() / 3.0
    };
    let column = |x0: u32, x1: u32| {
        (0..h)
            .map(|y| diff(image.get_pixel(x0, y), image.get_pixel(x1, y)))
            .sum::<f64>()
            / f64::from(h)
    };
    let row = |y0: u32, y1: u32| {
        (0..w)
            .map(|x| diff(image.get_pixel(x, y0), image.get_pixel(x, y1)))
            .sum::<f64>()
            / f64::from(w)
    };
    let inside_x = (0..w - 1).map(|x| column(x, x + 1)).fold(0.0, f64::max);
    let inside_y = (0..h - 1).map(|y| row(y, y + 1)).fold(0.0, f64::max);
    (column(w - 1, 0), inside_x, row(h - 1, 0), inside_y)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn difference_is_the_mean_and_the_largest() {
        let a = RgbImage::from_pixel(2, 1, image::Rgb([10, 10, 10]));
        let mut b = a.clone();
        b.put_pixel(1, 0, image::Rgb([16, 10, 10]));
        assert_eq!(difference(&a, &a), (0.0, 0));
        assert_eq!(difference(&a, &b), (1.0, 6));
        assert_eq!(colour_count(&a), 1);
        assert_eq!(colour_count(&b), 2);
    }

    #[test]
    fn a_written_png_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.png");
        let picture = RgbaImage::from_pixel(3, 2, image::Rgba([1, 2, 3, 255]));
        picture.save(&path).unwrap();
        assert_eq!(read_rgba(&path), picture);
        assert_eq!(read_rgb(&path).get_pixel(2, 1).0, [1, 2, 3]);
        let missing = open(&dir.path().join("missing.png")).unwrap_err();
        assert!(missing.contains("missing.png"), "{missing}");
    }
}
