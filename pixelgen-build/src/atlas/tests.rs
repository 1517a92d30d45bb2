use super::layout::pack_rects_with_threads;
use super::*;
use image::Rgba;

/// Deterministic xorshift so tests need no extra crates.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn range(&mut self, lo: u32, hi: u32) -> u32 {
        lo + (self.next() % u64::from(hi - lo + 1)) as u32
    }
}

fn random_sizes(n: usize, lo: u32, hi: u32, seed: u64) -> Vec<(u32, u32)> {
    let mut rng = Rng(seed);
    (0..n)
        .map(|_| (rng.range(lo, hi), rng.range(lo, hi)))
        .collect()
}

fn layout_options(padding: u32, max: u32) -> LayoutOptions {
    LayoutOptions {
        padding,
        max_width: max,
        max_height: max,
        power_of_two: false,
    }
}

/// Every non-empty rect inside the atlas and at least `padding` from the others.
fn check_layout(sizes: &[(u32, u32)], options: &LayoutOptions, layout: &RectLayout) {
    assert!(layout.width <= options.max_width && layout.height <= options.max_height);
    assert_eq!(layout.positions.len(), sizes.len());
    let rects: Vec<(u32, u32, u32, u32)> = sizes
        .iter()
        .zip(&layout.positions)
        .filter(|((w, h), _)| *w > 0 && *h > 0)
        .map(|(&(w, h), &(x, y))| (x, y, w, h))
        .collect();
    for &(x, y, w, h) in &rects {
        assert!(
            x + w <= layout.width && y + h <= layout.height,
            "({x}, {y}) {w}x{h} outside"
        );
    }
    let gap = options.padding;
    for (i, a) in rects.iter().enumerate() {
        for b in &rects[i + 1..] {
            let apart = a.0 + a.2 + gap <= b.0
                || b.0 + b.2 + gap <= a.0
                || a.1 + a.3 + gap <= b.1
                || b.1 + b.3 + gap <= a.1;
            assert!(apart, "{a:?} and {b:?} closer than {gap}");
        }
    }
}

#[test]
fn random_rects_never_overlap_and_stay_inside() {
    for (seed, padding, n, lo, hi) in [
        (1, 0, 300, 1, 64),
        (2, 1, 300, 8, 40),
        (3, 2, 120, 1, 100),
        (4, 0, 2500, 2, 30),
        (5, 3, 40, 10, 200),
    ] {
        let sizes = random_sizes(n, lo, hi, seed);
        let options = layout_options(padding, 8192);
        let layout = pack_rects(&sizes, &options).unwrap();
        check_layout(&sizes, &options, &layout);
        // Tight: well within 15% of the area bound even with padding.
        let area: u64 = sizes
            .iter()
            .map(|&(w, h)| u64::from(w + padding) * u64::from(h + padding))
            .sum();
        let used = u64::from(layout.width + padding) * u64::from(layout.height + padding);
        assert!(
            used as f64 <= area as f64 * 1.15,
            "seed {seed}: {used} vs {area}"
        );
    }
}

#[test]
fn power_of_two_sizes_hold_the_rects() {
    let sizes = random_sizes(200, 4, 50, 9);
    let options = LayoutOptions {
        power_of_two: true,
        ..layout_options(1, 4096)
    };
    let layout = pack_rects(&sizes, &options).unwrap();
    assert!(layout.width.is_power_of_two() && layout.height.is_power_of_two());
    check_layout(&sizes, &options, &layout);
}

#[test]
fn equal_frames_form_a_perfect_grid() {
    // 24 frames of 24x32 fill their atlas exactly, with or without padding.
    for padding in [0, 2] {
        let sizes = vec![(24, 32); 24];
        let options = layout_options(padding, 4096);
        let layout = pack_rects(&sizes, &options).unwrap();
        check_layout(&sizes, &options, &layout);
        let used = (layout.width + padding) * (layout.height + padding);
        assert_eq!(used, 24 * (24 + padding) * (32 + padding), "{layout:?}");
    }
}

#[test]
fn the_layout_ignores_the_thread_count() {
    let sizes = random_sizes(400, 3, 48, 11);
    let options = layout_options(1, 4096);
    let one = pack_rects_with_threads(&sizes, &options, 1).unwrap();
    for threads in [2, 3, 8] {
        assert_eq!(
            pack_rects_with_threads(&sizes, &options, threads).unwrap(),
            one
        );
    }
}

#[test]
fn too_many_rects_spill_onto_pages_keeping_groups_together() {
    // 60 rects of ~30x30 cannot share one 128x128 page; groups of 4 must not split.
    let sizes = random_sizes(60, 20, 40, 13);
    let groups: Vec<usize> = (0..60).map(|i| i / 4).collect();
    let options = layout_options(1, 128);
    let pages = pack_pages(&sizes, &groups, &options).unwrap();
    assert!(pages.len() > 1);
    let mut seen = vec![0; sizes.len()];
    for page in &pages {
        let page_sizes: Vec<(u32, u32)> = page.rects.iter().map(|&i| sizes[i]).collect();
        check_layout(&page_sizes, &options, &page.layout);
        for &i in &page.rects {
            seen[i] += 1;
            let group_on_page = page
                .rects
                .iter()
                .filter(|&&j| groups[j] == groups[i])
                .count();
            assert_eq!(group_on_page, 4, "group {} split across pages", groups[i]);
        }
    }
    assert!(
        seen.iter().all(|&n| n == 1),
        "every rect on exactly one page"
    );
}

#[test]
fn a_group_larger_than_a_page_is_named() {
    let sizes = vec![(10, 10), (60, 60), (60, 60), (60, 60)];
    let groups = vec![0, 1, 1, 1];
    let error = pack_pages(&sizes, &groups, &layout_options(0, 100)).unwrap_err();
    assert_eq!(error, LayoutError::DoesNotFit { index: 1 });
    let error = pack_rects(&[(5, 5), (200, 5)], &layout_options(0, 100)).unwrap_err();
    assert_eq!(error, LayoutError::DoesNotFit { index: 1 });
}

/// A sprite with a transparent margin: `(left, top, right, bottom)` margins,
/// opaque pixels distinct per `seed`.
fn sprite(seed: u32, w: u32, h: u32, margin: (u32, u32, u32, u32)) -> RgbaImage {
    RgbaImage::from_fn(w, h, |x, y| {
        let inside = x >= margin.0 && y >= margin.1 && x + margin.2 < w && y + margin.3 < h;
        if inside {
            Rgba([
                seed as u8,
                x as u8,
                y as u8,
                0x80 | (seed >> 8) as u8 | ((x + y) & 1) as u8,
            ])
        } else {
            Rgba([0, 0, 0, 0])
        }
    })
}

fn random_sprites(n: usize, seed: u64) -> Vec<(FrameId, RgbaImage)> {
    let mut rng = Rng(seed);
    (0..n)
        .map(|i| {
            let (w, h) = (rng.range(1, 40), rng.range(1, 40));
            let margin = (
                rng.range(0, 3),
                rng.range(0, 3),
                rng.range(0, 3),
                rng.range(0, 3),
            );
            let image = sprite(i as u32, w, h, margin);
            (frame(&format!("g{}", i / 3), i as u32 % 3), image)
        })
        .collect()
}

fn sources(owned: &[(FrameId, RgbaImage)]) -> Vec<Source<'_>> {
    owned
        .iter()
        .map(|(id, image)| Source {
            id,
            image,
            tiling: None,
        })
        .collect()
}

fn frame(sprite: &str, frame: u32) -> FrameId {
    SpriteName::from(sprite).frame(frame)
}

fn atlas_options(padding: u32, extrude: u32) -> AtlasOptions {
    AtlasOptions {
        padding,
        extrude,
        ..AtlasOptions::default()
    }
}

/// Rebuilds every frame from its page, trim and rect; checks extrusion,
/// spacing between distinct rects, and that nothing else was drawn.
fn check_atlas(sources: &[Source<'_>], o: &AtlasOptions, atlas: &PackedAtlas) {
    assert_eq!(atlas.frames.len(), sources.len());
    let e = o.extrude;
    for (source, frame) in sources.iter().zip(&atlas.frames) {
        let (r, t) = (frame.rect, frame.trim);
        assert_eq!((t.source_width, t.source_height), source.image.dimensions());
        let page = &atlas.pages[frame.page];
        for (x, y, px) in source.image.enumerate_pixels() {
            let inside = x >= t.x && y >= t.y && x < t.x + r.width && y < t.y + r.height;
            if inside {
                assert_eq!(
                    page.get_pixel(r.x + x - t.x, r.y + y - t.y),
                    px,
                    "{}",
                    source.id
                );
            } else {
                assert_eq!(px[3], 0, "{}: opaque pixel trimmed away", source.id);
            }
        }
    }
    for (p, page) in atlas.pages.iter().enumerate() {
        let (aw, ah) = page.dimensions();
        assert!(aw <= o.max_width && ah <= o.max_height);
        let mut rects: Vec<Placement> = atlas
            .frames
            .iter()
            .filter(|f| f.page == p && f.rect.width > 0 && f.rect.height > 0)
            .map(|f| f.rect)
            .collect();
        rects.sort_by_key(|r| (r.y, r.x));
        rects.dedup();
        let mut covered = vec![false; (aw * ah) as usize];
        for r in &rects {
            assert!(r.x >= e && r.y >= e && r.x + r.width + e <= aw && r.y + r.height + e <= ah);
            for ay in r.y - e..r.y + r.height + e {
                for ax in r.x - e..r.x + r.width + e {
                    let edge = page.get_pixel(
                        ax.clamp(r.x, r.x + r.width - 1),
                        ay.clamp(r.y, r.y + r.height - 1),
                    );
                    assert_eq!(page.get_pixel(ax, ay), edge, "extrusion at ({ax}, {ay})");
                    covered[(ay * aw + ax) as usize] = true;
                }
            }
        }
        for (i, px) in page.pixels().enumerate() {
            if !covered[i] {
                assert_eq!(*px, Rgba([0, 0, 0, 0]), "stray pixel at {i}");
            }
        }
        let gap = o.padding + 2 * e;
        for (i, a) in rects.iter().enumerate() {
            for b in &rects[i + 1..] {
                let apart = a.x + a.width + gap <= b.x
                    || b.x + b.width + gap <= a.x
                    || a.y + a.height + gap <= b.y
                    || b.y + b.height + gap <= a.y;
                assert!(apart, "{a:?} and {b:?} closer than {gap}");
            }
        }
    }
}

#[test]
fn frames_are_trimmed_extruded_and_rebuilt_exactly() {
    for (seed, (padding, extrude)) in [(0, 0), (1, 1), (2, 0), (0, 2), (3, 1)]
        .into_iter()
        .enumerate()
    {
        let owned = random_sprites(90, seed as u64 + 7);
        let sources = sources(&owned);
        let options = atlas_options(padding, extrude);
        let atlas = pack(&sources, &options).unwrap();
        check_atlas(&sources, &options, &atlas);
    }
}

#[test]
fn trim_offsets_locate_the_rect_in_its_frame() {
    let image = sprite(5, 20, 30, (3, 4, 6, 2));
    let owned = vec![(frame("hero", 0), image)];
    let sources = sources(&owned);
    let atlas = pack(&sources, &AtlasOptions::default()).unwrap();
    let frame = atlas.frames[0];
    assert_eq!((frame.rect.width, frame.rect.height), (11, 24));
    assert_eq!(
        frame.trim,
        Trim {
            x: 3,
            y: 4,
            source_width: 20,
            source_height: 30
        }
    );
    assert!(frame.trim.is_trimmed(&frame.rect));
    // Without trimming the whole frame is kept.
    let untrimmed = AtlasOptions {
        trim: false,
        ..AtlasOptions::default()
    };
    let atlas = pack(&sources, &untrimmed).unwrap();
    assert_eq!(
        (atlas.frames[0].rect.width, atlas.frames[0].rect.height),
        (20, 30)
    );
    assert_eq!((atlas.frames[0].trim.x, atlas.frames[0].trim.y), (0, 0));
    check_atlas(&sources, &untrimmed, &atlas);
}

#[test]
fn identical_frames_are_stored_once() {
    let base = sprite(9, 16, 16, (1, 1, 1, 1));
    // The same pixels shifted within a bigger frame: still an alias, other offsets.
    let shifted = RgbaImage::from_fn(20, 18, |x, y| {
        if (3..17).contains(&x) && (2..16).contains(&y) {
            *base.get_pixel(x - 2, y - 1)
        } else {
            Rgba([0, 0, 0, 0])
        }
    });
    let other = sprite(10, 16, 16, (1, 1, 1, 1));
    let owned = vec![
        (frame("a_walk", 0), base.clone()),
        (frame("a_walk", 1), base.clone()),
        (frame("b_idle", 0), shifted),
        (frame("b_idle", 1), other),
    ];
    let sources = sources(&owned);
    let options = AtlasOptions::default();
    let atlas = pack(&sources, &options).unwrap();
    check_atlas(&sources, &options, &atlas);
    let f = &atlas.frames;
    assert_eq!(f[0].rect, f[1].rect);
    assert_eq!(f[0].rect, f[2].rect);
    assert_ne!(f[0].rect, f[3].rect);
    assert_eq!((f[0].trim.x, f[0].trim.y), (1, 1));
    assert_eq!((f[2].trim.x, f[2].trim.y), (3, 2));
    // Two distinct 14x14 rects with extrusion 1 and padding 1: 16 + 1 + 16 wide.
    let page = &atlas.pages[0];
    assert_eq!(u64::from(page.width()) * u64::from(page.height()), 33 * 16);
}

#[test]
fn output_is_byte_identical_in_any_input_order() {
    let owned = random_sprites(150, 21);
    let mut reversed = owned.clone();
    reversed.reverse();
    let mut shuffled = owned.clone();
    let mut rng = Rng(5);
    for i in (1..shuffled.len()).rev() {
        shuffled.swap(i, (rng.next() % (i as u64 + 1)) as usize);
    }
    let options = atlas_options(1, 1);
    let reference = pack(&sources(&owned), &options).unwrap();
    for other in [reversed, shuffled] {
        let atlas = pack(&sources(&other), &options).unwrap();
        assert_eq!(atlas.pages, reference.pages);
        for (source, frame) in other.iter().zip(&atlas.frames) {
            let k = owned.iter().position(|s| s.0 == source.0).unwrap();
            assert_eq!(*frame, reference.frames[k]);
        }
    }
}

#[test]
fn pages_keep_a_sprites_frames_together() {
    let owned: Vec<(FrameId, RgbaImage)> = (0..40)
        .map(|i| {
            (
                frame(&format!("sprite{}", i / 5), i % 5),
                sprite(i, 30, 30, (0, 0, 0, 0)),
            )
        })
        .collect();
    let sources = sources(&owned);
    let options = AtlasOptions {
        max_width: 100,
        max_height: 100,
        ..atlas_options(1, 1)
    };
    let atlas = pack(&sources, &options).unwrap();
    assert!(atlas.pages.len() >= 4, "{} pages", atlas.pages.len());
    check_atlas(&sources, &options, &atlas);
    for group in atlas.frames.chunks(5) {
        assert!(group.iter().all(|f| f.page == group[0].page));
    }
}

#[test]
fn frames_too_large_and_duplicate_names_are_named() {
    let big = sprite(1, 50, 20, (0, 0, 0, 0));
    let small = sprite(2, 5, 5, (0, 0, 0, 0));
    let owned = vec![(frame("small", 0), small.clone()), (frame("big", 0), big)];
    let options = AtlasOptions {
        max_width: 40,
        max_height: 40,
        ..AtlasOptions::default()
    };
    let error = pack(&sources(&owned), &options).unwrap_err();
    assert!(
        matches!(&error, AtlasError::FrameTooLarge { frame, .. } if frame.sprite == "big"),
        "{error}"
    );
    assert!(error.to_string().contains("max_size"), "{error}");

    let twins = vec![(frame("x", 0), small.clone()), (frame("x", 0), small)];
    let error = pack(&sources(&twins), &AtlasOptions::default()).unwrap_err();
    assert_eq!(error, AtlasError::DuplicateFrame(frame("x", 0)));
}

#[test]
fn empty_and_transparent_inputs_give_a_transparent_page() {
    let atlas = pack(&[], &AtlasOptions::default()).unwrap();
    assert_eq!(atlas.pages.len(), 1);
    assert_eq!(atlas.pages[0].dimensions(), (1, 1));
    let owned = vec![
        (frame("blank", 0), RgbaImage::new(8, 8)),
        (frame("none", 0), RgbaImage::new(0, 3)),
        (frame("dot", 0), sprite(3, 3, 3, (1, 1, 1, 1))),
    ];
    let sources = sources(&owned);
    let atlas = pack(&sources, &AtlasOptions::default()).unwrap();
    check_atlas(&sources, &AtlasOptions::default(), &atlas);
    assert_eq!(
        (atlas.frames[0].rect.width, atlas.frames[0].rect.height),
        (0, 0)
    );
    assert_eq!(atlas.frames[0].trim.source_width, 8);
    assert_eq!(atlas.pages[0].dimensions(), (3, 3));
}

/// A tile is never trimmed (its transparent border is part of the pattern), and its
/// extrusion continues the opposite edge on the axes it wraps on, the repeated edge on
/// the others; the same pixels as a plain sprite are still two rects.
#[test]
fn tiles_are_untrimmed_and_extrude_by_wrapping() {
    use pixelgen_diffusion::Tiling;
    // 4×3 with a transparent first column: a sprite would lose it to trimming.
    let image = RgbaImage::from_fn(4, 3, |x, y| {
        if x == 0 {
            Rgba([0, 0, 0, 0])
        } else {
            Rgba([10 * x as u8, 50 * y as u8, 7, 255])
        }
    });
    let (tile, sprite) = (frame("tile", 0), frame("sprite", 0));
    let sources = [
        Source {
            id: &tile,
            image: &image,
            tiling: Some(Tiling::X),
        },
        Source {
            id: &sprite,
            image: &image,
            tiling: None,
        },
    ];
    let options = atlas_options(0, 2);
    let atlas = pack(&sources, &options).unwrap();
    let (t, s) = (&atlas.frames[0], &atlas.frames[1]);
    assert_eq!(
        (t.rect.width, t.rect.height),
        (4, 3),
        "the tile is not trimmed"
    );
    assert_eq!((s.rect.width, s.rect.height), (3, 3), "the sprite is");
    let page = &atlas.pages[t.page];
    let at = |dx: i32, dy: i32| {
        *page.get_pixel((t.rect.x as i32 + dx) as u32, (t.rect.y as i32 + dy) as u32)
    };
    for y in -2..5i32 {
        let row = y.clamp(0, 2) as u32;
        // Left of the tile: its last columns; right of it: its first ones.
        assert_eq!(at(-1, y), *image.get_pixel(3, row), "row {y}");
        assert_eq!(at(-2, y), *image.get_pixel(2, row), "row {y}");
        assert_eq!(at(4, y), *image.get_pixel(0, row), "row {y}");
        assert_eq!(at(5, y), *image.get_pixel(1, row), "row {y}");
    }
}
