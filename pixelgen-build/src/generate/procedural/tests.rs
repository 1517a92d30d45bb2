use super::*;
use std::collections::BTreeSet;

const SPRITES: &[&str] = &[
    "knight with a red cape",
    "wizard",
    "hero",
    "blue slime",
    "bat",
    "sword",
    "potion",
    "coin",
    "gem",
    "tree",
    "rock",
    "chest",
    "heart",
    "key",
    "skull",
    "zorblax",
];
const TILES: &[&str] = &["grass", "wall", "dirt", "stone floor", "stone tile", "sand"];

fn req(prompt: &str, seed: u64, w: u32, h: u32) -> ProceduralRequest<'_> {
    ProceduralRequest {
        prompt,
        negative_prompt: "",
        seed,
        width: w,
        height: h,
        frame: 0,
        frames: 1,
        tiling: None,
    }
}

fn anim(prompt: &str, frame: u32, frames: u32) -> RgbaImage {
    render(&ProceduralRequest {
        frame,
        frames,
        ..req(prompt, 7, 32, 32)
    })
}

fn colours(img: &RgbaImage) -> BTreeSet<[u8; 3]> {
    img.pixels()
        .filter(|p| p[3] == 255)
        .map(|p| [p[0], p[1], p[2]])
        .collect()
}

fn opaque(img: &RgbaImage, x: u32, y: u32) -> bool {
    img.get_pixel(x, y)[3] == 255
}

/// (width, height) of the opaque pixels' bounding box.
fn bbox(img: &RgbaImage) -> (u32, u32) {
    let (mut x0, mut y0, mut x1, mut y1) = (u32::MAX, u32::MAX, 0, 0);
    for (x, y, p) in img.enumerate_pixels() {
        if p[3] == 255 {
            (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
        }
    }
    if x0 == u32::MAX {
        (0, 0)
    } else {
        (x1 - x0 + 1, y1 - y0 + 1)
    }
}

/// Saturation-weighted circular mean hue of the opaque pixels, in degrees.
fn mean_hue(img: &RgbaImage) -> f64 {
    let (mut sx, mut sy) = (0.0, 0.0);
    for p in img.pixels().filter(|p| p[3] == 255) {
        let [r, g, b] = [p[0], p[1], p[2]].map(|c| f64::from(c) / 255.0);
        let (max, min) = (r.max(g).max(b), r.min(g).min(b));
        let d = max - min;
        if d < 1e-6 {
            continue;
        }
        let h = if max == r {
            60.0 * ((g - b) / d).rem_euclid(6.0)
        } else if max == g {
            60.0 * ((b - r) / d + 2.0)
        } else {
            60.0 * ((r - g) / d + 4.0)
        };
        let weight = d;
        sx += weight * h.to_radians().cos();
        sy += weight * h.to_radians().sin();
    }
    sy.atan2(sx).to_degrees().rem_euclid(360.0)
}

#[test]
fn output_has_requested_size() {
    let sizes = [
        (8, 8),
        (16, 16),
        (24, 40),
        (32, 32),
        (64, 64),
        (128, 128),
        (13, 29),
    ];
    for &(w, h) in &sizes {
        for p in SPRITES.iter().chain(TILES) {
            let img = render(&req(p, 3, w, h));
            assert_eq!(img.dimensions(), (w, h), "{p} at {w}x{h}");
        }
    }
}

#[test]
fn degenerate_sizes_do_not_panic() {
    for &(w, h) in &[(0, 0), (1, 1), (2, 5), (3, 3)] {
        for p in SPRITES.iter().chain(TILES) {
            let img = render(&req(p, 1, w, h));
            assert_eq!(img.dimensions(), (w.max(1), h.max(1)));
        }
    }
    let img = render(&ProceduralRequest {
        frame: 9,
        frames: 0,
        ..req("knight", 1, 16, 16)
    });
    assert_eq!(img.dimensions(), (16, 16));
}

#[test]
fn same_request_gives_identical_bytes() {
    for p in SPRITES.iter().chain(TILES) {
        for &(w, h) in &[(16, 16), (24, 40), (64, 64)] {
            let r = ProceduralRequest {
                frame: 2,
                frames: 4,
                ..req(p, 42, w, h)
            };
            assert_eq!(render(&r).as_raw(), render(&r).as_raw(), "{p}");
        }
    }
}

#[test]
fn different_seed_gives_different_pixels() {
    for p in SPRITES.iter().chain(TILES) {
        let a = render(&req(p, 1, 32, 32));
        let differs = (2..6).any(|s| render(&req(p, s, 32, 32)).as_raw() != a.as_raw());
        assert!(differs, "{p}: seeds 1..6 all draw the same sprite");
    }
}

#[test]
fn colour_words_steer_hue() {
    for seed in 0..6 {
        let red = mean_hue(&render(&req("red slime", seed, 32, 32)));
        let blue = mean_hue(&render(&req("blue slime", seed, 32, 32)));
        let green = mean_hue(&render(&req("green slime", seed, 32, 32)));
        assert!(hue_dist(red, 0.0) < 30.0, "red slime hue {red}");
        assert!(hue_dist(blue, 218.0) < 30.0, "blue slime hue {blue}");
        assert!(hue_dist(green, 115.0) < 30.0, "green slime hue {green}");
    }
    // A colour bound to a part only colours that part: the cape is red,
    // the (metal) knight is not.
    let caped = render(&req("knight with a red cape", 3, 32, 32));
    let reds = caped
        .pixels()
        .filter(|p| {
            p[3] == 255 && p[0] > 120 && u16::from(p[1]) + u16::from(p[2]) < u16::from(p[0])
        })
        .count();
    assert!(reds >= 20, "only {reds} red cape pixels");
}

#[test]
fn negative_prompt_removes_things() {
    let count_red = |img: &RgbaImage| {
        img.pixels()
            .filter(|p| {
                p[3] == 255 && p[0] > 120 && u16::from(p[1]) + u16::from(p[2]) < u16::from(p[0])
            })
            .count()
    };
    let with = render(&req("knight with a red cape", 3, 32, 32));
    let without = render(&ProceduralRequest {
        negative_prompt: "cape",
        ..req("knight with a red cape", 3, 32, 32)
    });
    assert!(count_red(&without) * 4 < count_red(&with));
    // A negated colour is avoided where the colour came from the seed.
    for seed in 0..8 {
        let img = render(&ProceduralRequest {
            negative_prompt: "green",
            ..req("tree", seed, 32, 32)
        });
        assert!(hue_dist(mean_hue(&img), 115.0) > 30.0, "seed {seed}");
    }
}

#[test]
fn alpha_is_binary() {
    for p in SPRITES.iter().chain(TILES) {
        for &(w, h) in &[(8, 8), (13, 29), (32, 32), (64, 64)] {
            for f in 0..3 {
                let img = render(&ProceduralRequest {
                    frame: f,
                    frames: 3,
                    ..req(p, 5, w, h)
                });
                assert!(img.pixels().all(|p| p[3] == 0 || p[3] == 255), "{p}");
            }
        }
    }
}

#[test]
fn sprites_have_transparent_background_and_symmetric_silhouette() {
    let symmetric = [
        "knight with a red cape",
        "wizard",
        "hero",
        "blue slime",
        "bat",
        "potion",
        "coin",
        "heart",
        "skull",
        "zorblax",
        "chest",
        "gem",
    ];
    for p in SPRITES {
        for seed in 0..4 {
            let img = render(&req(p, seed, 32, 32));
            let (w, h) = img.dimensions();
            for (x, y) in [(0, 0), (w - 1, 0), (0, h - 1), (w - 1, h - 1)] {
                assert!(!opaque(&img, x, y), "{p}: corner ({x},{y}) is opaque");
            }
            let solid = img.pixels().filter(|p| p[3] == 255).count();
            let total = (w * h) as usize;
            assert!(solid * 100 >= total * 12, "{p}: only {solid} opaque pixels");
            assert!(solid * 100 <= total * 85, "{p}: no background");
            if symmetric.contains(p) {
                let same = (0..h)
                    .flat_map(|y| (0..w).map(move |x| (x, y)))
                    .filter(|&(x, y)| opaque(&img, x, y) == opaque(&img, w - 1 - x, y))
                    .count();
                assert!(
                    same * 100 >= total * 95,
                    "{p}: silhouette not symmetric ({same}/{total})"
                );
            }
        }
    }
}

#[test]
fn tiles_are_fully_opaque_and_wrap() {
    for p in TILES {
        for &(w, h) in &[(8, 8), (16, 16), (32, 32), (24, 40)] {
            let img = render(&req(p, 9, w, h));
            assert!(img.pixels().all(|p| p[3] == 255), "{p} at {w}x{h}");
        }
        // Seam check: the step from the last column to the first (as when
        // the tile repeats) is no harsher than steps inside the tile.
        let img = render(&req(p, 9, 32, 32));
        let diff = |a: &Rgba<u8>, b: &Rgba<u8>| {
            (0..3)
                .map(|i| i32::from(a[i]).abs_diff(i32::from(b[i])))
                .sum::<u32>()
        };
        let col_step = |x0: u32, x1: u32| {
            (0..32)
                .map(|y| diff(img.get_pixel(x0, y), img.get_pixel(x1, y)))
                .sum::<u32>()
        };
        let row_step = |y0: u32, y1: u32| {
            (0..32)
                .map(|x| diff(img.get_pixel(x, y0), img.get_pixel(x, y1)))
                .sum::<u32>()
        };
        let inner_cols = (0..31).map(|x| col_step(x, x + 1)).max().unwrap_or(0);
        let inner_rows = (0..31).map(|y| row_step(y, y + 1)).max().unwrap_or(0);
        assert!(col_step(31, 0) <= inner_cols, "{p}: vertical seam");
        assert!(row_step(31, 0) <= inner_rows, "{p}: horizontal seam");
    }
}

#[test]
fn animation_frames_are_coherent() {
    let animated = [
        "knight with a red cape",
        "wizard",
        "hero",
        "blue slime",
        "bat",
        "coin",
        "potion",
        "tree",
        "heart",
        "zorblax",
        "sword",
        "skull",
        "grass",
    ];
    let steady_box = [
        "knight with a red cape",
        "wizard",
        "hero",
        "blue slime",
        "tree",
        "heart",
        "zorblax",
        "potion",
    ];
    for p in animated {
        let frames: Vec<RgbaImage> = (0..4).map(|f| anim(p, f, 4)).collect();
        let base = colours(&frames[0]);
        for (i, f) in frames.iter().enumerate().skip(1) {
            assert_ne!(
                f.as_raw(),
                frames[i - 1].as_raw(),
                "{p}: frame {i} repeats frame {}",
                i - 1
            );
            let c = colours(f);
            let shared = c.intersection(&base).count();
            assert!(shared * 10 >= c.len() * 9, "{p}: frame {i} changes palette");
            if steady_box.contains(&p) {
                let (a, b) = (bbox(&frames[0]), bbox(f));
                assert!(
                    a.0.abs_diff(b.0) <= 2 && a.1.abs_diff(b.1) <= 2,
                    "{p}: box {a:?} vs {b:?}"
                );
            }
        }
    }
    // The walk cycle loops: frame 4 of 4 is frame 0.
    assert_eq!(anim("hero", 4, 4).as_raw(), anim("hero", 0, 4).as_raw());
}

#[test]
fn walk_cycle_moves_legs_and_bobs() {
    let frames: Vec<RgbaImage> = (0..4).map(|f| anim("hero", f, 4)).collect();
    // Contact frames (0 and 2) are mirror-ish opposites; passing frames dip.
    let bottom_row = |img: &RgbaImage| {
        (0..32)
            .rev()
            .find(|&y| (0..32).any(|x| opaque(img, x, y)))
            .unwrap_or(0)
    };
    let left_foot = |img: &RgbaImage| (0..16).filter(|&x| opaque(img, x, bottom_row(img))).count();
    let right_foot = |img: &RgbaImage| {
        (16..32)
            .filter(|&x| opaque(img, x, bottom_row(img)))
            .count()
    };
    assert!(
        left_foot(&frames[0]) < right_foot(&frames[0]),
        "frame 0 lifts the left foot"
    );
    assert!(
        left_foot(&frames[2]) > right_foot(&frames[2]),
        "frame 2 lifts the right foot"
    );
    let top_row = |img: &RgbaImage| {
        (0..32)
            .find(|&y| (0..32).any(|x| opaque(img, x, y)))
            .unwrap_or(0)
    };
    assert_eq!(
        top_row(&frames[1]),
        top_row(&frames[0]) + 1,
        "passing frame bobs"
    );
}

#[test]
fn palettes_stay_small() {
    for p in SPRITES.iter().chain(TILES) {
        for seed in 0..5 {
            let n = colours(&render(&req(p, seed, 32, 32))).len();
            assert!(n <= 16, "{p} seed {seed}: {n} colours");
        }
    }
    let n = colours(&render(&req(
        "person with red hair, blue shirt and green cape",
        1,
        32,
        32,
    )))
    .len();
    assert!(n <= 17, "{n} colours");
}

#[test]
fn tiny_knight_still_reads() {
    for seed in 0..6 {
        let img = render(&req("knight", seed, 8, 8));
        let solid = img.pixels().filter(|p| p[3] == 255).count();
        let inner = (1..7)
            .flat_map(|y| (1..7).map(move |x| (x, y)))
            .filter(|&(x, y)| {
                opaque(&img, x, y)
                    && opaque(&img, x - 1, y)
                    && opaque(&img, x + 1, y)
                    && opaque(&img, x, y - 1)
                    && opaque(&img, x, y + 1)
            })
            .count();
        assert!(solid >= 16, "seed {seed}: {solid} opaque pixels");
        assert!(
            inner >= 4,
            "seed {seed}: all outline ({inner} inner pixels)"
        );
        assert!(colours(&img).len() >= 4, "seed {seed}: too few colours");
    }
}

#[test]
fn prompts_pick_families() {
    let fam = |s: &str| Prompt::parse(s, "").family();
    assert_eq!(
        fam("knight with a red cape"),
        Family::Humanoid(Role::Knight)
    );
    assert_eq!(fam("Old WIZARD"), Family::Humanoid(Role::Mage));
    assert_eq!(fam("a woman"), Family::Humanoid(Role::Person));
    assert_eq!(
        fam("knight holding a sword"),
        Family::Humanoid(Role::Knight)
    );
    assert_eq!(fam("stone wall"), Family::Wall);
    assert_eq!(fam("red bricks"), Family::Wall);
    assert_eq!(fam("grass tile"), Family::Grass);
    assert_eq!(fam("stone tile"), Family::Floor);
    assert_eq!(fam("mossy boulder"), Family::Rock);
    assert_eq!(fam("blue potion bottle"), Family::Potion);
    assert_eq!(fam("golden coins"), Family::Coin);
    assert_eq!(fam("battle axe"), Family::Creature);
    assert_eq!(fam("zorblax"), Family::Creature);
    assert_eq!(fam("bats"), Family::Bat);
    assert_eq!(fam("treasure chest"), Family::Chest);
}

#[test]
fn colours_bind_to_parts() {
    let st = Style::parse(&Prompt::parse("knight with a red cape and blue boots", ""));
    assert_eq!(st.bound.len(), 2);
    assert_eq!(st.bound[0].0, "cape");
    assert_eq!(st.bound[1].0, "boots");
    assert!(st.free.is_empty());
    let st = Style::parse(&Prompt::parse("Golden key", ""));
    assert_eq!(st.free.len(), 1);
    let st = Style::parse(&Prompt::parse("dark blue slime", "red"));
    assert!(st.free[0].v < 0.7 && hue_dist(st.free[0].h, 218.0) < 1.0);
    assert_eq!(st.avoid.len(), 1);
}

#[test]
fn cos_turns_matches_cos() {
    for i in -40..=40 {
        let t = f64::from(i) / 16.0 + 0.013;
        let want = (t * std::f64::consts::TAU).cos();
        assert!((cos_turns(t) - want).abs() < 1e-9, "{t}");
    }
    assert_eq!(cos_turns(0.25), 0.0);
    assert_eq!(cos_turns(0.5), -1.0);
    assert_eq!(cos_turns(0.0), 1.0);
}

/// With `tiling` the canvas is a torus: every frame, sprite or tile, wraps on the named
/// axes (its seam is no larger than a step inside it), and tiles are unchanged by it.
#[test]
fn tiling_frames_wrap() {
    use crate::generate::conditioning::Tiling;
    for p in SPRITES.iter().chain(TILES) {
        for tiling in [Tiling::X, Tiling::Y, Tiling::XY] {
            let img = render(&ProceduralRequest {
                tiling: Some(tiling),
                ..req(p, 3, 24, 24)
            });
            let (seam_x, inside_x, seam_y, inside_y) =
                pixelgen_test_support::images::seam_difference(&img);
            if tiling.wraps_x() {
                assert!(
                    seam_x <= inside_x,
                    "{p} {tiling:?}: x seam {seam_x} > {inside_x}"
                );
            }
            if tiling.wraps_y() {
                assert!(
                    seam_y <= inside_y,
                    "{p} {tiling:?}: y seam {seam_y} > {inside_y}"
                );
            }
        }
    }
    for p in TILES {
        assert_eq!(
            render(&ProceduralRequest {
                tiling: Some(Tiling::XY),
                ..req(p, 3, 24, 24)
            }),
            render(&req(p, 3, 24, 24)),
            "{p}"
        );
    }
}
