//! Raw generator output → a finished sprite: exact size, binary alpha or a solid
//! background, colours mapped to the palette.

use image::{Rgba, RgbaImage};

use crate::manifest::{Background, SpriteSpec};

/// Alpha at or above this is opaque; below, transparent.
const ALPHA_THRESHOLD: u8 = 128;

/// Post-processes one raw frame for `sprite`.
pub fn finish(raw: RgbaImage, sprite: &SpriteSpec) -> RgbaImage {
    let mut image = if raw.dimensions() == (sprite.width, sprite.height) {
        raw
    } else {
        // Nearest keeps hard pixel edges; the full grid-recovering pixelizer replaces this.
        image::imageops::resize(
            &raw,
            sprite.width,
            sprite.height,
            image::imageops::FilterType::Nearest,
        )
    };
    match sprite.background {
        Background::Transparent => binarize_alpha(&mut image),
        Background::Color(rgb) => fill_background(&mut image, rgb),
        Background::Keep => {}
    }
    if let Some(palette) = &sprite.palette {
        palette.apply(&mut image);
    }
    image
}

/// Binary alpha: pixel art has no half-transparent pixels. Transparent pixels become
/// (0,0,0,0) so that equal sprites encode to equal bytes.
fn binarize_alpha(image: &mut RgbaImage) {
    for pixel in image.pixels_mut() {
        if pixel[3] >= ALPHA_THRESHOLD {
            pixel[3] = 255;
        } else {
            *pixel = Rgba([0, 0, 0, 0]);
        }
    }
}

/// Composites the image over a solid colour.
fn fill_background(image: &mut RgbaImage, rgb: [u8; 3]) {
    for pixel in image.pixels_mut() {
        let alpha = u16::from(pixel[3]);
        for channel in 0..3 {
            let over = u16::from(pixel[channel]) * alpha + u16::from(rgb[channel]) * (255 - alpha);
            pixel[channel] = ((over + 127) / 255) as u8;
        }
        pixel[3] = 255;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::parse;
    use std::path::Path;

    fn sprite(fields: &str) -> SpriteSpec {
        let text = format!("(sprites: {{ \"s\": (prompt: \"x\", size: (4, 4){fields}) }})");
        parse(Path::new("sprites.ron"), &text)
            .unwrap()
            .sprites
            .remove(0)
    }

    fn raw() -> RgbaImage {
        RgbaImage::from_fn(4, 4, |x, _| match x {
            0 => Rgba([10, 20, 30, 0]),
            1 => Rgba([250, 5, 80, 100]),
            _ => Rgba([250, 5, 80, 255]),
        })
    }

    #[test]
    fn transparent_background_gives_binary_alpha() {
        let out = finish(raw(), &sprite(""));
        assert_eq!(out.get_pixel(0, 0), &Rgba([0, 0, 0, 0]));
        assert_eq!(out.get_pixel(1, 0), &Rgba([0, 0, 0, 0]));
        assert_eq!(out.get_pixel(2, 0)[3], 255);
    }

    #[test]
    fn colour_background_makes_every_pixel_opaque() {
        let out = finish(raw(), &sprite(", background: Color(\"#0000ff\")"));
        assert!(out.pixels().all(|p| p[3] == 255));
        assert_eq!(out.get_pixel(0, 0), &Rgba([0, 0, 255, 255]));
    }

    #[test]
    fn palette_maps_opaque_pixels_and_resizes_to_exact_size() {
        let big = image::imageops::resize(&raw(), 16, 16, image::imageops::FilterType::Nearest);
        let out = finish(big, &sprite(", palette: \"pico-8\""));
        assert_eq!(out.dimensions(), (4, 4));
        assert_eq!(out.get_pixel(3, 3), &Rgba([0xff, 0x00, 0x4d, 255]));
    }
}
