//! Synthetic cases with known answers: sprites drawn as fake pixels at a known pitch and
//! phase, degraded the way models and resamplers degrade them.

use image::{Rgba, RgbaImage};

use super::grid;
use super::raster::Raster;
use super::{Options, pixelize};
use crate::manifest::Background;
use crate::palette::{Palette, Rgb};

/// A deterministic sprite: a disc of ramp colours with an outline, one-pixel highlights,
/// and a dithered band, on a plain background.
fn sprite(width: u32, height: u32, seed: u64) -> RgbaImage {
    let colors: [Rgb; 7] = [
        [24, 20, 37],    // background
        [38, 43, 68],    // outline
        [62, 137, 72],   // ramp dark
        [99, 199, 77],   // ramp mid
        [190, 230, 110], // ramp light
        [255, 255, 255], // highlight
        [228, 59, 68],   // accent
    ];
    let mut rng = Rng(seed);
    let (cx, cy) = (width as f64 / 2.0, height as f64 / 2.0);
    let radius = width.min(height) as f64 * 0.38;
    let mut image = RgbaImage::from_fn(width, height, |x, y| {
        let d = ((x as f64 + 0.5 - cx).powi(2) + (y as f64 + 0.5 - cy).powi(2)).sqrt();
        let c = if d > radius + 1.0 {
            colors[0]
        } else if d > radius {
            colors[1]
        } else if (x as f64) < cx - radius / 3.0 {
            if (x + y) % 2 == 0 {
                colors[2]
            } else {
                colors[3]
            }
        } else if (y as f64) < cy {
            colors[4]
        } else {
            colors[3]
        };
        Rgba([c[0], c[1], c[2], 255])
    });
    // One-pixel details on flat ground, two cells apart from anything else.
    for k in 0..3 {
        let x = (cx + 2.0 + 2.0 * k as f64) as u32;
        let y = (cy + 2.0 + (rng.next() % 2) as f64) as u32;
        let c = colors[5 + k % 2];
        image.put_pixel(x, y, Rgba([c[0], c[1], c[2], 255]));
    }
    image
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    /// Roughly normal noise (sum of uniforms), standard deviation about `sigma`.
    fn noise(&mut self, sigma: f64) -> f64 {
        let sum: f64 = (0..4)
            .map(|_| (self.next() % 10_000) as f64 / 10_000.0)
            .sum();
        (sum - 2.0) * sigma * 3f64.sqrt()
    }
}

/// Draws `art` with fake pixels `pitch` wide (per axis), the first boundary at `-phase`
/// (so cell k spans `[k·pitch − phase, (k+1)·pitch − phase)`), bilinear or crisp, with noise.
fn degrade(
    art: &RgbaImage,
    pitch: (f64, f64),
    phase: (f64, f64),
    bilinear: bool,
    noise: f64,
) -> RgbaImage {
    let (w, h) = art.dimensions();
    let out_w = (w as f64 * pitch.0 - phase.0 - 0.5).floor() as u32 + 1;
    let out_h = (h as f64 * pitch.1 - phase.1 - 0.5).floor() as u32 + 1;
    let mut rng = Rng(7);
    let sample = |x: i64, y: i64, c: usize| -> f64 {
        let x = x.clamp(0, w as i64 - 1) as u32;
        let y = y.clamp(0, h as i64 - 1) as u32;
        f64::from(art.get_pixel(x, y)[c])
    };
    RgbaImage::from_fn(out_w, out_h, |x, y| {
        let sx = (x as f64 + 0.5 + phase.0) / pitch.0 - 0.5;
        let sy = (y as f64 + 0.5 + phase.1) / pitch.1 - 0.5;
        let mut px = [0u8; 4];
        px[3] = 255;
        for c in 0..3 {
            let v = if bilinear {
                let (x0, y0) = (sx.floor(), sy.floor());
                let (fx, fy) = (sx - x0, sy - y0);
                let (x0, y0) = (x0 as i64, y0 as i64);
                sample(x0, y0, c) * (1.0 - fx) * (1.0 - fy)
                    + sample(x0 + 1, y0, c) * fx * (1.0 - fy)
                    + sample(x0, y0 + 1, c) * (1.0 - fx) * fy
                    + sample(x0 + 1, y0 + 1, c) * fx * fy
            } else {
                sample(sx.round() as i64, sy.round() as i64, c)
            };
            px[c] = (v + rng.noise(noise)).round().clamp(0.0, 255.0) as u8;
        }
        Rgba(px)
    })
}

fn options(art: &RgbaImage, palette: Option<Palette>) -> Options {
    Options {
        width: art.width(),
        height: art.height(),
        palette,
        max_colors: None,
        background: Background::Keep,
        outline: None,
        tiling: None,
    }
}

fn palette_of(art: &RgbaImage) -> Palette {
    let colors = art.pixels().map(|p| [p[0], p[1], p[2]]).collect();
    Palette::from_colors("art", colors).unwrap()
}

/// Fails with the first few differing pixels, not two whole images.
#[track_caller]
fn assert_same(got: &RgbaImage, want: &RgbaImage) {
    assert_eq!(got.dimensions(), want.dimensions());
    let wrong: Vec<String> = got
        .enumerate_pixels()
        .zip(want.pixels())
        .filter(|((_, _, g), w)| g != w)
        .map(|((x, y, g), w)| format!("({x},{y}): {:?} not {:?}", g.0, w.0))
        .collect();
    assert!(
        wrong.is_empty(),
        "{} pixels differ: {}",
        wrong.len(),
        wrong[..wrong.len().min(6)].join(", ")
    );
}

fn exact_share(a: &RgbaImage, b: &RgbaImage) -> f64 {
    assert_eq!(a.dimensions(), b.dimensions());
    let same = a.pixels().zip(b.pixels()).filter(|(p, q)| p == q).count();
    same as f64 / (a.width() * a.height()) as f64
}

#[test]
fn known_pitch_and_phase_are_recovered_per_axis() {
    let art = sprite(30, 24, 1);
    // Non-integer and slightly anisotropic pitch, sub-cell phase.
    let (pitch, phase) = ((6.37, 6.18), (0.7, 0.3));
    let raw = degrade(&art, pitch, phase, true, 3.0);
    let grid = grid::fit(&Raster::from_rgba(&raw), 30, 24);
    for (k, edge) in grid.columns.iter().enumerate() {
        let truth = k as f64 * pitch.0 - phase.0;
        assert!(
            (edge - truth).abs() < 0.5,
            "column edge {k}: {edge} vs {truth}"
        );
    }
    for (k, edge) in grid.rows.iter().enumerate() {
        let truth = k as f64 * pitch.1 - phase.1;
        assert!(
            (edge - truth).abs() < 0.5,
            "row edge {k}: {edge} vs {truth}"
        );
    }
}

#[test]
fn crisp_fake_pixels_come_back_exactly_without_a_palette() {
    let art = sprite(28, 28, 2);
    let raw = degrade(&art, (5.6, 5.6), (0.4, 0.9), false, 2.0);
    let out = pixelize(&raw, &options(&art, None));
    assert_eq!(out.dimensions(), art.dimensions());
    for ((x, y, got), want) in out.enumerate_pixels().zip(art.pixels()) {
        if is_detail(want) {
            // Seen in one or two cells only: exact up to the noise of a few dozen pixels.
            let off = (0..3).map(|c| got[c].abs_diff(want[c])).max().unwrap_or(0);
            assert!(
                off <= 3,
                "detail at ({x}, {y}): {:?} for {:?}",
                got.0,
                want.0
            );
        } else {
            assert_eq!(got, want, "({x}, {y})");
        }
    }
}

fn is_detail(p: &Rgba<u8>) -> bool {
    [[255, 255, 255], [228, 59, 68]].contains(&[p[0], p[1], p[2]])
}

#[test]
fn blurred_art_maps_exactly_onto_its_palette_and_keeps_one_pixel_details() {
    let art = sprite(32, 32, 3);
    let raw = degrade(&art, (5.3, 5.3), (0.2, 0.6), true, 3.0);
    let out = pixelize(&raw, &options(&art, Some(palette_of(&art))));
    let share = exact_share(&out, &art);
    assert!(share >= 0.99, "exact share {share}");
    for (x, y, p) in art.enumerate_pixels() {
        if is_detail(p) {
            assert_eq!(out.get_pixel(x, y), p, "one-pixel detail at ({x}, {y})");
        }
    }
}

#[test]
fn blurred_art_without_a_palette_recovers_its_colours() {
    let art = sprite(32, 32, 4);
    let raw = degrade(&art, (7.1, 7.1), (0.5, 0.1), true, 2.5);
    let out = pixelize(&raw, &options(&art, None));
    let share = exact_share(&out, &art);
    assert!(share >= 0.9, "exact share {share}");
    let found: std::collections::HashSet<[u8; 4]> = out.pixels().map(|p| p.0).collect();
    for color in [
        [24, 20, 37, 255],
        [62, 137, 72, 255],
        [99, 199, 77, 255],
        [190, 230, 110, 255],
    ] {
        assert!(found.contains(&color), "{color:?} recovered exactly");
    }
}

#[test]
fn a_clean_sprite_at_its_own_size_comes_back_unchanged() {
    let art = sprite(20, 16, 5);
    assert_same(&pixelize(&art, &options(&art, None)), &art);
    assert_same(
        &pixelize(&art, &options(&art, Some(palette_of(&art)))),
        &art,
    );
}

#[test]
fn a_colour_cast_is_undone_against_the_given_palette() {
    let art = sprite(24, 24, 6);
    let mut raw = degrade(&art, (6.0, 6.0), (0.0, 0.0), true, 2.0);
    for p in raw.pixels_mut() {
        for (c, (gain, offset)) in [(1.04, -3.0), (0.97, 4.0), (1.02, 2.0)]
            .into_iter()
            .enumerate()
        {
            p[c] = (f64::from(p[c]) * gain + offset).round().clamp(0.0, 255.0) as u8;
        }
    }
    let out = pixelize(&raw, &options(&art, Some(palette_of(&art))));
    let share = exact_share(&out, &art);
    assert!(share >= 0.99, "exact share {share}");
}

#[test]
fn the_background_is_flood_filled_from_the_border_only() {
    // A ring of outline colour with background colour both outside and inside it.
    let ring = RgbaImage::from_fn(12, 12, |x, y| {
        let edge = (2..10).contains(&x)
            && (2..10).contains(&y)
            && !((3..9).contains(&x) && (3..9).contains(&y));
        if edge {
            Rgba([200, 50, 50, 255])
        } else {
            Rgba([20, 20, 30, 255])
        }
    });
    let raw = degrade(&ring, (6.0, 6.0), (0.0, 0.0), false, 1.0);
    let mut opts = options(&ring, None);
    opts.background = Background::Transparent;
    let out = pixelize(&raw, &opts);
    assert_eq!(out.get_pixel(0, 0)[3], 0, "outside is transparent");
    assert_eq!(
        out.get_pixel(2, 2),
        &Rgba([200, 50, 50, 255]),
        "the ring stays"
    );
    assert_eq!(
        out.get_pixel(5, 5),
        &Rgba([20, 20, 30, 255]),
        "enclosed background stays opaque"
    );
    assert!(
        out.pixels().all(|p| p[3] == 0 || p[3] == 255),
        "binary alpha"
    );

    opts.outline = Some([255, 255, 0]);
    let outlined = pixelize(&raw, &opts);
    assert_eq!(
        outlined.get_pixel(1, 5),
        &Rgba([255, 255, 0, 255]),
        "outline left of the ring"
    );
    assert_eq!(outlined.get_pixel(0, 5)[3], 0, "one pixel wide");
    assert_eq!(
        outlined.get_pixel(1, 1)[3],
        0,
        "4-connected: not the diagonal"
    );

    opts.outline = None;
    opts.background = Background::Color([0, 0, 255]);
    let filled = pixelize(&raw, &opts);
    assert_eq!(filled.get_pixel(0, 0), &Rgba([0, 0, 255, 255]));
}

#[test]
fn small_fake_pixels_inside_a_plain_margin_get_a_window_over_the_art() {
    // 32×32 true pixels drawn at pitch 10, placed in a 480×480 frame: the frame would
    // suggest pitch 15, the art says 10.
    let art = sprite(32, 32, 8);
    let mut art_on_plain = art.clone();
    for p in art_on_plain.pixels_mut() {
        if p.0 == [24, 20, 37, 255] {
            p.0 = [240, 240, 240, 255];
        }
    }
    let drawn = degrade(&art_on_plain, (10.0, 10.0), (0.0, 0.0), false, 2.0);
    let mut raw = RgbaImage::from_pixel(480, 480, Rgba([240, 240, 240, 255]));
    image::imageops::overlay(&mut raw, &drawn, 80, 80);
    let out = pixelize(&raw, &options(&art_on_plain, None));
    let share = exact_share(&out, &art_on_plain);
    assert!(share >= 0.99, "exact share {share}");
}

#[test]
fn max_colors_limits_the_found_palette() {
    let art = sprite(24, 24, 9);
    let raw = degrade(&art, (5.0, 5.0), (0.0, 0.0), false, 1.0);
    let mut opts = options(&art, None);
    opts.max_colors = Some(3);
    let out = pixelize(&raw, &opts);
    let colors: std::collections::HashSet<[u8; 4]> = out.pixels().map(|p| p.0).collect();
    assert!(colors.len() <= 3, "{} colours", colors.len());
}

#[test]
fn odd_inputs_give_the_asked_size_without_panicking() {
    let mut rng = Rng(11);
    let noise = RgbaImage::from_fn(64, 64, |_, _| {
        Rgba([
            (rng.next() % 256) as u8,
            (rng.next() % 256) as u8,
            (rng.next() % 256) as u8,
            255,
        ])
    });
    let flat = RgbaImage::from_pixel(40, 30, Rgba([10, 200, 30, 255]));
    let clear = RgbaImage::from_pixel(32, 32, Rgba([0, 0, 0, 0]));
    let tiny = RgbaImage::from_pixel(3, 2, Rgba([250, 250, 250, 255]));
    let cases: [(&RgbaImage, u32, u32); 7] = [
        (&noise, 16, 16), // a random-weight model's output
        (&noise, 1, 1),
        (&noise, 64, 64),
        (&flat, 7, 5),
        (&tiny, 16, 16), // smaller than asked: cells finer than pixels
        (&clear, 8, 8),
        (&noise, 63, 5), // very anisotropic
    ];
    for (raw, width, height) in cases {
        for palette in [None, Some(Palette::builtin("pico-8").unwrap())] {
            for background in [
                Background::Transparent,
                Background::Keep,
                Background::Color([1, 2, 3]),
            ] {
                let options = Options {
                    width,
                    height,
                    palette: palette.clone(),
                    max_colors: Some(4),
                    background,
                    outline: Some([9, 9, 9]),
                    tiling: None,
                };
                let out = pixelize(raw, &options);
                assert_eq!(out.dimensions(), (width, height));
                assert!(
                    out.pixels().all(|p| p[3] == 0 || p[3] == 255),
                    "binary alpha"
                );
            }
        }
    }
    // A fully transparent raw image stays transparent (with no outline to draw).
    let mut opts = options(&clear, None);
    opts.background = Background::Transparent;
    assert!(pixelize(&clear, &opts).pixels().all(|p| p[3] == 0));
}

/// A seamless tile drawn at 8× with soft fake pixels (blurred across the wrap, as a
/// model drawing with circular padding blurs them): pixelized as a tile it comes back
/// pixel for pixel, so it wraps as the art did, and a background-coloured border is not
/// flooded away. Pixelized as a sprite, the same image loses its border.
#[test]
fn a_tile_stays_seamless_and_keeps_its_border() {
    use crate::generate::conditioning::Tiling;
    let (cells, pitch) = (16u32, 8u32);
    // A disc around the corner (it crosses both edges), a band across the x edge and a
    // highlight, on a field of one colour.
    let truth = RgbaImage::from_fn(cells, cells, |x, y| {
        let torus = |a: u32| a.min(cells - a);
        let c: Rgb = if torus(x).pow(2) + torus(y).pow(2) <= 9 {
            [228, 59, 68]
        } else if (7..9).contains(&y) {
            [38, 43, 68]
        } else if (x, y) == (9, 12) {
            [255, 255, 255]
        } else {
            [62, 137, 72]
        };
        Rgba([c[0], c[1], c[2], 255])
    });
    let big = image::imageops::resize(
        &truth,
        cells * pitch,
        cells * pitch,
        image::imageops::FilterType::Nearest,
    );
    let size = i64::from(cells * pitch);
    let blurred = RgbaImage::from_fn(big.width(), big.height(), |x, y| {
        let mut sum = [0u32; 3];
        for (dx, dy) in [(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)] {
            let wrap = |v: u32, d: i64| (i64::from(v) + d).rem_euclid(size) as u32;
            let px = big.get_pixel(wrap(x, dx), wrap(y, dy));
            for c in 0..3 {
                sum[c] += u32::from(px[c]);
            }
        }
        Rgba([
            (sum[0] / 5) as u8,
            (sum[1] / 5) as u8,
            (sum[2] / 5) as u8,
            255,
        ])
    });
    let options = Options {
        width: cells,
        height: cells,
        palette: None,
        max_colors: None,
        background: Background::Transparent,
        outline: None,
        tiling: Some(Tiling::XY),
    };
    let out = pixelize(&blurred, &options);
    assert_eq!(out, truth, "the tile's pixels");
    let seam = pixelgen_test_support::images::seam_difference(&out);
    assert!(seam.0 <= seam.1 && seam.2 <= seam.3, "seam {seam:?}");
    let as_sprite = pixelize(
        &blurred,
        &Options {
            tiling: None,
            ..options
        },
    );
    assert!(
        as_sprite.pixels().any(|p| p[3] == 0),
        "a sprite's border colour is background"
    );
}
