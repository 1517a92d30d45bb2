//! Items and props: weapons, potions, coins, gems, keys, chests, hearts, skulls, trees
//! and rocks.

use super::*;

pub(super) fn sword(sc: &mut Scene, cx: &Ctx, rng: &mut Rng) {
    let guard_d = if rng.chance(0.5) {
        hsv(44.0, 0.75, 0.9)
    } else {
        hsv(25.0, 0.55, 0.55)
    };
    let grip_d = hsv(
        rng.range(0.0, 30.0),
        rng.range(0.5, 0.7),
        rng.range(0.35, 0.5),
    );
    let blade_d = hsv(
        rng.range(195.0, 225.0),
        rng.range(0.06, 0.14),
        rng.range(0.82, 0.9),
    );
    let gem_d = hsv(rng.range(0.0, 360.0), 0.75, 0.9);
    let guard_frac = rng.range(0.14, 0.2);
    let blade_frac = rng.range(0.055, 0.075);

    let st = cx.st;
    let blade = st.color("blade", Some(0), blade_d);
    sc.set_ink(blade);
    let blade_m = sc.material(blade);
    let guard_m = sc.material(st.color("guard", Some(1), guard_d));
    let grip_m = sc.material(st.color("hilt", None, grip_d));
    let gem_m = sc.material(st.color("gem", None, gem_d));
    let short = cx.p.has(&["dagger", "knife"]);

    // Diagonal icon (hilt bottom-left, tip top-right) on an integer square, so
    // the blade is a clean 45° pixel line at every size.
    let side = (sc.w - 2).min(sc.h - 2).max(1);
    let x0 = (sc.w - side) / 2;
    let y0 = (sc.h - side) / 2;
    let n = side - 1;
    let k = round_i(f64::from(side) * blade_frac).max(0);
    let g = round_i(f64::from(side) * guard_frac).max(1);
    let m_tip = if short {
        n - round_i(f64::from(n) * 0.35)
    } else {
        n
    };
    let m_pommel = -n;
    let m_guard = m_pommel + round_i(f64::from(2 * n) * if short { 0.3 } else { 0.27 });
    let gth = (side / 20).max(1);
    let taper = (k + 1) * 2;
    let glint = if cx.anim.animated {
        Some(m_guard + round_i(cx.anim.phase * f64::from(m_tip - m_guard + 4)) - 2)
    } else {
        None
    };
    for j in 0..side {
        for i in 0..side {
            let m = i - j;
            let t = i + j - n;
            let (mat, shade) = if m > m_guard + gth && m <= m_tip {
                let room = m_tip - m;
                let allowed = if room < taper { (k * room) / taper } else { k };
                if t.abs() > allowed {
                    continue;
                }
                let mut s = if k == 0 {
                    0
                } else if 3 * t < -k {
                    1
                } else if 3 * t > k {
                    -1
                } else {
                    0
                };
                if glint.is_some_and(|gm| (m - gm).abs() <= 1) {
                    s = 1;
                }
                (blade_m, s)
            } else if (m - m_guard).abs() <= gth {
                if t.abs() > g {
                    continue;
                }
                (
                    guard_m,
                    if 2 * t < -g {
                        1
                    } else if 2 * t > g {
                        -1
                    } else {
                        0
                    },
                )
            } else if m < m_guard && m > m_pommel + 2 + k / 2 {
                if t.abs() > k / 2 {
                    continue;
                }
                (grip_m, if (m / 2) % 2 == 0 { 0 } else { -1 })
            } else if m >= m_pommel && m <= m_pommel + 2 + k {
                let r = 1 + k / 2;
                let cm = m_pommel + r;
                if (m - cm).abs() + t.abs() > r {
                    continue;
                }
                (
                    gem_m,
                    if t < 0 {
                        1
                    } else if t > 0 {
                        -1
                    } else {
                        0
                    },
                )
            } else {
                continue;
            };
            sc.set(x0 + i, y0 + j, mat, shade);
        }
    }
}

pub(super) fn potion(sc: &mut Scene, cx: &Ctx, rng: &mut Rng) {
    let shape = rng.below(4);
    let liquid_d = hsv(
        rng.range(0.0, 360.0),
        rng.range(0.65, 0.85),
        rng.range(0.75, 0.92),
    );
    let bubbles: Vec<(f64, f64)> = (0..3)
        .map(|_| (rng.range(-0.22, 0.22), rng.unit()))
        .collect();
    let glass_d = hsv(200.0, 0.12, 0.9);
    let cork_d = hsv(28.0, 0.55, 0.58);

    let st = cx.st;
    let liquid = st.color("liquid", Some(0), liquid_d);
    sc.set_ink(liquid);
    let glass_m = sc.material(st.color("glass", Some(1), glass_d));
    let liquid_m = sc.material(liquid);
    let cork_m = sc.material(st.color("cork", None, cork_d));
    let shine_m = sc.flat(hsv(0.0, 0.0, 1.0));
    let fr = fit(sc, 0.72, 0.9, Align::Bottom);
    let (pu, pv) = (fr.pu(), fr.pv());

    // Outer glass silhouette per bottle shape, and where the liquid starts.
    let bulb = move |u: f64, v: f64| -> bool {
        match shape {
            0 | 1 => {
                let (x, y) = (u / 0.47, (v - 0.64) / 0.355);
                x * x + y * y <= 1.0
            }
            2 => {
                let t = (v - 0.36) / 0.64;
                (0.0..=1.0).contains(&t) && u.abs() <= 0.13 + 0.35 * t.min(0.93)
            }
            _ => {
                let shoulder = {
                    let (x, y) = (u / 0.34, (v - 0.5) / 0.15);
                    x * x + y * y <= 1.0
                };
                shoulder || (u.abs() <= 0.34 && (0.5..=1.0).contains(&v))
            }
        }
    };
    let level = match shape {
        0 | 1 => 0.52,
        2 => 0.6,
        _ => 0.57,
    };
    let mut pen = Pen { sc, fr };
    // Neck, lip and cork.
    pen.rect(-0.12, 0.12, 0.14, 0.42, glass_m, Shade::Cyl);
    pen.rect(-0.17, 0.17, 0.11, 0.17, glass_m, Shade::Rim);
    pen.rect(-0.1, 0.1, 0.0, 0.12, cork_m, Shade::Cyl);
    pen.fill(
        [-0.5, 0.5, 0.2, 1.0],
        glass_m,
        Shade::Sphere,
        bulb,
        |u, v| (u / 0.47, (v - 0.64) / 0.36),
    );
    // Liquid: inside the glass wall (one pixel in) below the level line.
    let inner = move |u: f64, v: f64| {
        v >= level && bulb(u - pu, v) && bulb(u + pu, v) && bulb(u, v + pv) && bulb(u, v - pv)
    };
    pen.fill(
        [-0.5, 0.5, level, 1.0],
        liquid_m,
        Shade::Sphere,
        inner,
        |u, v| (u / 0.45, (v - 0.66) / 0.34),
    );
    // Surface line.
    pen.fill(
        [-0.5, 0.5, level, level + pv],
        liquid_m,
        Shade::Flat(1),
        move |u, v| inner(u, v) && !inner(u, v - pv),
        |u, v| (u, v),
    );
    if fr.px() >= 12.0 {
        // Rising bubbles; each loops once per animation cycle.
        let phase = if cx.anim.animated { cx.anim.phase } else { 0.0 };
        for &(bu, off) in &bubbles {
            let t = (off + phase).fract();
            let bv = lerp(0.9, level + 0.06, t);
            if inner(bu, bv) {
                pen.ellipse(bu, bv, 0.025, 0.02, liquid_m, Shade::Flat(1));
            }
        }
        // Glass reflection.
        pen.rect(-0.33, -0.27, 0.56, 0.74, shine_m, Shade::Flat(0));
    }
}

pub(super) fn coin(sc: &mut Scene, cx: &Ctx, rng: &mut Rng) {
    let emblem = rng.below(3);
    let gold_d = hsv(rng.range(40.0, 48.0), 0.82, 0.95);
    let metal = cx.st.color("metal", Some(0), gold_d);
    sc.set_ink(metal);
    let m = sc.material(metal);
    let fr = fit(sc, 1.0, 1.0, Align::Centre);
    let pu = fr.pu();

    // Spin: the face narrows to its edge and widens again once per cycle.
    let wf = if cx.anim.animated {
        cos_turns(cx.anim.phase / 2.0).abs()
    } else {
        1.0
    };
    let ru = (0.46 * wf).max(0.06 + pu);
    let mut pen = Pen { sc, fr };
    pen.ellipse(0.0, 0.5, ru, 0.46, m, Shade::Sphere);
    if 0.46 * wf < 0.12 {
        // Edge-on: a ribbed edge.
        pen.fill(
            [-ru, ru, 0.0, 1.0],
            m,
            Shade::Flat(0),
            |u, v| {
                let (x, y) = (u / ru, (v - 0.5) / 0.46);
                x * x + y * y <= 1.0 && ((v * fr.bh) as i32) % 2 == 0
            },
            |u, v| (u, v),
        );
        return;
    }
    // Inner face, recessed: the rim around it catches the light.
    let (iu, iv) = (ru * 0.74, 0.46 * 0.74);
    if fr.px() >= 10.0 {
        pen.fill(
            [-iu, iu, 0.5 - iv, 0.5 + iv],
            m,
            Shade::Inset,
            |u, v| {
                let (x, y) = ((u / iu), (v - 0.5) / iv);
                x * x + y * y <= 1.0
            },
            |u, v| (u, v),
        );
    }
    if fr.px() >= 12.0 {
        let e = wf;
        match emblem {
            // Slot.
            0 => pen.rect(-0.05 * e, 0.05 * e, 0.3, 0.7, m, Shade::Flat(-1)),
            // Diamond.
            1 => pen.profile(0.28, 0.72, m, Shade::Flat(-1), |t| {
                (0.0, 0.17 * e * (1.0 - (2.0 * t - 1.0).abs()))
            }),
            // Small embossed disc.
            _ => pen.ellipse(0.0, 0.5, 0.14 * e, 0.14, m, Shade::Rim),
        }
    }
}

pub(super) fn gem(sc: &mut Scene, cx: &Ctx, rng: &mut Rng) {
    let gem_d = hsv(
        rng.range(0.0, 360.0),
        rng.range(0.6, 0.8),
        rng.range(0.8, 0.95),
    );
    let crown = rng.range(0.3, 0.4);
    let c = cx.st.color("gem", Some(0), gem_d);
    sc.set_ink(c);
    let m = sc.material(c);
    let spark_m = sc.flat(hsv(c.h, 0.05, 1.0));
    let fr = fit(sc, 0.9, 1.1, Align::Centre);
    let mut pen = Pen { sc, fr };
    let girdle = 0.42;
    // Crown (table on top) then pavilion down to the point.
    pen.profile(0.14, girdle, m, Shade::Flat(0), |t| {
        (0.0, crown + (0.48 - crown) * t)
    });
    pen.profile(girdle, 0.96, m, Shade::Flat(0), |t| (0.0, 0.48 * (1.0 - t)));
    // Facets: table bright, left faces lit, right faces dark.
    pen.fill(
        [-0.5, 0.5, 0.0, 1.0],
        m,
        Shade::Flat(0),
        |u, v| {
            let in_crown = (0.14..=girdle).contains(&v)
                && u.abs() <= crown + (0.48 - crown) * (v - 0.14) / (girdle - 0.14);
            let in_pav =
                (girdle..=0.96).contains(&v) && u.abs() <= 0.48 * (0.96 - v) / (0.96 - girdle);
            in_crown || in_pav
        },
        |u, v| (u, v),
    );
    let (pu, pv) = (fr.pu(), fr.pv());
    for y in 0..pen.sc.h {
        for x in 0..pen.sc.w {
            let (u, v) = fr.uv(x, y);
            if pen.sc.get(x, y).mat != m {
                continue;
            }
            let s = if v < girdle {
                if u.abs() < crown * 0.55 && v < girdle - 2.0 * pv {
                    1
                } else if u < 0.0 {
                    0
                } else {
                    -1
                }
            } else {
                let w = 0.48 * (0.96 - v) / (0.96 - girdle);
                let lx = u / w.max(pu);
                if lx < -0.3 {
                    1
                } else if lx > 0.3 {
                    -1
                } else {
                    0
                }
            };
            pen.sc.set(x, y, m, s);
        }
    }
    // Twinkle that moves around the gem.
    if fr.px() >= 12.0 {
        let a = if cx.anim.animated { cx.anim.phase } else { 0.0 };
        let (su, sv) = (-0.2 + 0.3 * sin_turns(a), 0.3 + 0.05 * cos_turns(a));
        pen.rect(su, su, sv - 0.05, sv + 0.05, spark_m, Shade::Flat(0));
        pen.rect(su - 0.05, su + 0.05, sv, sv, spark_m, Shade::Flat(0));
    }
}

pub(super) fn key(sc: &mut Scene, cx: &Ctx, rng: &mut Rng) {
    let gold_d = hsv(rng.range(40.0, 48.0), 0.8, 0.93);
    let teeth = 1 + rng.below(2);
    let bow_square = rng.chance(0.3);
    let c = cx.st.color("metal", Some(0), gold_d);
    sc.set_ink(c);
    let m = sc.material(c);
    let fr = fit(sc, 0.5, 0.65, Align::Centre);
    let mut pen = Pen { sc, fr };
    if bow_square {
        pen.squircle(0.0, 0.2, 0.42, 0.2, m, Shade::Sphere);
    } else {
        pen.ellipse(0.0, 0.2, 0.44, 0.2, m, Shade::Sphere);
    }
    pen.rect(-0.1, 0.1, 0.36, 0.98, m, Shade::Cyl);
    for i in 0..teeth {
        let v = 0.9 - i as f64 * 0.15;
        pen.rect(0.08, 0.38, v - 0.045, v + 0.045, m, Shade::Rim);
    }
    // Hole in the bow (the outline pass draws its rim).
    let hole = if fr.px() >= 14.0 { 0.17 } else { 0.1 };
    pen.ellipse(0.0, 0.2, hole, hole * 0.45, EMPTY, Shade::Flat(0));
    if cx.anim.animated {
        let gv = lerp(0.4, 0.95, cx.anim.phase);
        pen.rect(-0.1, 0.1, gv - 0.03, gv + 0.03, m, Shade::Flat(1));
    }
}

pub(super) fn chest(sc: &mut Scene, cx: &Ctx, rng: &mut Rng) {
    let wood_d = hsv(
        rng.range(22.0, 32.0),
        rng.range(0.55, 0.7),
        rng.range(0.5, 0.62),
    );
    let metal_d = if rng.chance(0.6) {
        hsv(44.0, 0.78, 0.92)
    } else {
        hsv(215.0, 0.1, 0.72)
    };
    let band = rng.range(0.28, 0.34);
    let st = cx.st;
    let wood = st.color("wood", Some(0), wood_d);
    sc.set_ink(wood);
    let wood_m = sc.material(wood);
    let metal_m = sc.material(st.color("metal", Some(1), metal_d));
    let fr = fit(sc, 1.15, 1.4, Align::Bottom);
    let pv = fr.pv();
    let lid_top = |u: f64| 0.1 + 0.1 * (u / 0.48) * (u / 0.48);
    let mut pen = Pen { sc, fr };
    pen.fill(
        [-0.5, 0.5, 0.0, 0.45],
        wood_m,
        Shade::Rim,
        |u, v| u.abs() <= 0.48 && v >= lid_top(u) && v <= 0.45,
        |u, v| (u, v),
    );
    pen.rect(-0.48, 0.48, 0.45, 1.0, wood_m, Shade::Rim);
    if fr.px() >= 14.0 {
        // Plank seams.
        pen.rect(-0.46, 0.46, 0.72, 0.72, wood_m, Shade::Flat(-1));
        pen.rect(-0.46, 0.46, 0.27, 0.27, wood_m, Shade::Flat(-1));
    }
    // Metal bands and the rim between lid and body.
    for side in [-1.0, 1.0] {
        let c = side * (band + 0.05);
        pen.fill(
            [c - 0.05, c + 0.05, 0.0, 1.0],
            metal_m,
            Shade::Cyl,
            |u, v| (u - c).abs() <= 0.05_f64.max(0.5 * fr.pu()) && v >= lid_top(u) && v <= 1.0,
            |u, _| ((u - c) / 0.05, 0.0),
        );
    }
    pen.rect(-0.48, 0.48, 0.42, 0.49, metal_m, Shade::Rim);
    pen.rect(-0.09, 0.09, 0.38, 0.6, metal_m, Shade::Rim);
    pen.rect(0.0, 0.0, 0.48, 0.48 + 2.0 * pv, INK, Shade::Flat(0));
    if cx.anim.animated {
        // A glint sweeps across the metal.
        let sweep = lerp(-0.8, 0.8, cx.anim.phase);
        for y in 0..pen.sc.h {
            for x in 0..pen.sc.w {
                let (u, v) = fr.uv(x, y);
                if pen.sc.get(x, y).mat == metal_m && (u + 0.5 * v - sweep - 0.25).abs() < 0.06 {
                    pen.sc.shade_at(x, y, 1);
                }
            }
        }
    }
}

pub(super) fn heart(sc: &mut Scene, cx: &Ctx, rng: &mut Rng) {
    let red_d = hsv(
        rng.range(350.0, 365.0),
        rng.range(0.75, 0.85),
        rng.range(0.85, 0.95),
    );
    let c = cx.st.color("heart", Some(0), red_d);
    sc.set_ink(c);
    let m = sc.material(c);
    let shine_m = sc.flat(hsv(c.h, 0.1, 1.0));
    let fr = fit(sc, 1.0, 1.0, Align::Centre);
    // Beat: shrink a little, then back.
    let scale = if cx.anim.animated {
        0.94 + 0.06 * (0.5 + 0.5 * cx.anim.wave())
    } else {
        1.0
    };
    let to_xy = move |u: f64, v: f64| (u * 2.3 / scale, (0.5 - v) * 2.3 / scale + 0.13);
    let inside = move |u: f64, v: f64| {
        let (x, y) = to_xy(u, v);
        let a = x * x + y * y - 1.0;
        a * a * a - x * x * y * y * y <= 0.0
    };
    let mut pen = Pen { sc, fr };
    pen.fill(
        [-0.5, 0.5, 0.0, 1.0],
        m,
        Shade::Sphere,
        inside,
        move |u, v| {
            let (x, y) = to_xy(u, v);
            (x / 1.1, (0.2 - y) / 1.1)
        },
    );
    if fr.px() >= 10.0 {
        pen.ellipse(-0.24 * scale, 0.3, 0.07, 0.05, shine_m, Shade::Flat(0));
    }
}

pub(super) fn skull(sc: &mut Scene, cx: &Ctx, rng: &mut Rng) {
    let bone_d = hsv(
        rng.range(38.0, 50.0),
        rng.range(0.08, 0.18),
        rng.range(0.88, 0.96),
    );
    let glow_roll = rng.chance(0.3);
    let glow_d = hsv(rng.range(0.0, 360.0), 0.8, 1.0);
    let st = cx.st;
    let bone = st.color("bone", Some(0), bone_d);
    sc.set_ink(bone);
    let m = sc.material(bone);
    let glow = glow_roll || st.explicit("eyes", None);
    let glow_m = sc.flat(st.color("eyes", Some(1), glow_d));
    let fr = fit(sc, 0.85, 1.0, Align::Centre);
    // Floats (1-px bob over the cycle) and chatters (jaw drops every other beat).
    let bob = i32::from(cx.anim.animated && cx.anim.phase >= 0.5);
    let jaw = i32::from(cx.anim.animated && (cx.anim.phase * 4.0).floor() as i32 % 2 == 1);
    let fr = fr.shift(0, bob);
    let mut pen = Pen { sc, fr };
    pen.fr = fr.shift(0, jaw);
    pen.squircle(0.0, 0.77, 0.26, 0.12, m, Shade::Rim);
    if fr.px() >= 14.0 {
        pen.rect(-0.2, 0.2, 0.8, 0.8, INK, Shade::Flat(0));
        for u in [-0.1, 0.0, 0.1] {
            pen.rect(u, u, 0.72, 0.86, INK, Shade::Flat(0));
        }
    }
    pen.fr = fr;
    pen.ellipse(0.0, 0.4, 0.46, 0.38, m, Shade::Sphere);
    pen.rect(-0.3, 0.3, 0.5, 0.68, m, Shade::Flat(0));
    pen.rect(-0.3, 0.3, 0.66, 0.68, m, Shade::Flat(-1));
    for side in [-1.0, 1.0] {
        pen.ellipse(side * 0.18, 0.48, 0.12, 0.11, INK, Shade::Flat(0));
        if glow {
            pen.rect(side * 0.18, side * 0.18, 0.48, 0.48, glow_m, Shade::Flat(0));
        }
    }
    pen.profile(0.58, 0.66, INK, Shade::Flat(0), |t| (0.0, 0.01 + 0.05 * t));
}

pub(super) fn tree(sc: &mut Scene, cx: &Ctx, rng: &mut Rng) {
    let pine = rng.chance(0.3);
    let leaf_d = hsv(
        rng.range(90.0, 135.0),
        rng.range(0.55, 0.75),
        rng.range(0.55, 0.75),
    );
    let trunk_d = hsv(
        rng.range(20.0, 32.0),
        rng.range(0.5, 0.65),
        rng.range(0.4, 0.52),
    );
    let fruit_roll = rng.chance(0.3);
    let blobs: Vec<(f64, f64, f64)> = (0..2)
        .map(|_| {
            (
                rng.range(0.16, 0.26),
                rng.range(0.27, 0.48),
                rng.range(0.15, 0.2),
            )
        })
        .collect();
    let tiers = 3 + rng.below(2);
    let fruit_seed = rng.next_u64();

    let p = cx.p;
    let pine = (pine || p.has(&["pine", "fir", "spruce", "conifer", "christmas"]))
        && !p.has(&["oak", "apple"]);
    let st = cx.st;
    let leaves = st.color("leaves", Some(0), leaf_d);
    sc.set_ink(leaves);
    let leaf_m = sc.material(leaves);
    let trunk_m = sc.material(st.color("trunk", Some(1), trunk_d));
    let fruit = (fruit_roll || p.has(&["fruit", "apple"])) && !pine && !p.neg_has(&["fruit"]);
    let fruit_m = sc.material(st.color("fruit", None, hsv(2.0, 0.8, 0.9)));
    let fr = fit(sc, 0.7, 1.0, Align::Bottom);

    // Sway: the crown leans a pixel or two left and right.
    let amp = (fr.bw * 0.03).round().max(1.0);
    let sway = round_i(cx.anim.swave() * amp);
    let mut pen = Pen { sc, fr };
    if pine {
        pen.profile(0.7, 1.0, trunk_m, Shade::Cyl, |t| (0.0, 0.07 + 0.02 * t));
        pen.fr = fr.shift(sway, 0);
        let n = tiers as f64;
        for i in 0..tiers {
            let fi = i as f64;
            let v0 = 0.02 + fi * 0.68 / (n + 0.5);
            let v1 = v0 + 0.3 + 0.05 * fi;
            let w = 0.22 + 0.27 * (fi + 1.0) / n;
            pen.profile(v0, v1.min(0.82), leaf_m, Shade::Cyl, |t| {
                (0.0, 0.02 + (w - 0.02) * t)
            });
        }
        for i in 0..tiers {
            let fi = i as f64;
            let v0 = 0.02 + fi * 0.68 / (n + 0.5);
            let v1 = (v0 + 0.3 + 0.05 * fi).min(0.82);
            let w = 0.22 + 0.27 * (fi + 1.0) / n;
            pen.profile(v1 - 0.5 * fr.pv(), v1, leaf_m, Shade::Flat(-1), |_| {
                (0.0, w)
            });
        }
        return;
    }
    pen.profile(0.5, 1.0, trunk_m, Shade::Cyl, |t| {
        (0.0, 0.075 + 0.06 * t * t * t)
    });
    if fr.px() >= 16.0 {
        pen.rect(-0.02, 0.02, 0.6, 0.8, trunk_m, Shade::Flat(-1));
    }
    pen.fr = fr.shift(sway, 0);
    // Crown: a big clump plus mirrored side clumps, drawn top-down so lower
    // clumps overlap and their lit tops separate them.
    pen.ellipse(0.0, 0.36, 0.38, 0.29, leaf_m, Shade::Sphere);
    let aspect = fr.bw / fr.bh;
    pen.ellipse(
        0.0,
        0.22,
        0.2,
        (0.2 * aspect).min(0.21),
        leaf_m,
        Shade::Sphere,
    );
    let mut order = blobs.clone();
    order.sort_by(|a, b| a.1.total_cmp(&b.1));
    for (bu, bv, r) in order {
        for side in [-1.0, 1.0] {
            pen.ellipse(side * bu, bv, r, r * aspect, leaf_m, Shade::Sphere);
        }
    }
    // Darker underside of the crown, where it overhangs the trunk.
    if fr.px() >= 12.0 {
        let depth = (fr.bh * 0.05).round().max(1.0) as i32;
        let snapshot = pen.sc.cells.clone();
        let (w, h) = (pen.sc.w, pen.sc.h);
        for y in 0..h {
            for x in 0..w {
                let leaf = |yy: i32| yy < h && snapshot[(yy * w + x) as usize].mat == leaf_m;
                if leaf(y) && !(1..=depth).all(|d| leaf(y + d)) {
                    pen.sc.set(x, y, leaf_m, -1);
                }
            }
        }
    }
    if fruit && fr.px() >= 12.0 {
        let mut r = Rng::new(fruit_seed);
        for _ in 0..4 {
            let (fu, fv) = (r.range(-0.3, 0.3), r.range(0.2, 0.5));
            pen.ellipse(fu, fv, 0.035, 0.035 * aspect, fruit_m, Shade::Sphere);
        }
    }
}

pub(super) fn rock(sc: &mut Scene, cx: &Ctx, rng: &mut Rng) {
    let grey_d = hsv(
        rng.range(20.0, 230.0),
        rng.range(0.06, 0.16),
        rng.range(0.55, 0.68),
    );
    // A faceted boulder: jittered points over the top plus a flat base.
    let corners = 5 + rng.below(3);
    let mut pts = vec![(-0.4 + rng.range(0.0, 0.08), 1.0)];
    for i in 0..=corners {
        let a = i as f64 / corners as f64;
        let r = rng.range(0.8, 1.0);
        let r = if i == 0 || i == corners { 1.0 } else { r };
        pts.push((
            -cos_turns(a / 2.0) * 0.48 * r,
            0.8 - sin_turns(a / 2.0) * 0.78 * r,
        ));
    }
    pts.push((0.4 - rng.range(0.0, 0.08), 1.0));
    let cracks: Vec<(f64, f64, i32)> = (0..2)
        .map(|_| {
            (
                rng.range(-0.25, 0.25),
                rng.range(0.45, 0.7),
                rng.below(2) as i32 * 2 - 1,
            )
        })
        .collect();
    let st = cx.st;
    let c = st.color("stone", Some(0), grey_d);
    sc.set_ink(c);
    let m = sc.material(c);
    let moss = cx.p.wants(&["moss", "mossy"]);
    let moss_m = sc.material(st.color("moss", Some(1), hsv(100.0, 0.55, 0.6)));
    let fr = fit(sc, 1.2, 1.6, Align::Bottom);
    // Each pixel takes the shade of its nearest edge, facing the light or not,
    // which reads as flat facets. Distances are in pixels so facets stay
    // straight on non-square boxes.
    let n = pts.len();
    let edges: Vec<(Point, Point, i8)> = (0..n)
        .map(|i| {
            let (a, b) = (pts[i], pts[(i + 1) % n]);
            let (dx, dy) = ((b.0 - a.0) * fr.bw, (b.1 - a.1) * fr.bh);
            let len = (dx * dx + dy * dy).sqrt().max(1e-9);
            // Points run clockwise on screen, so (dy, -dx) points outwards.
            let (nx, ny) = (dy / len, -dx / len);
            let lit = -0.6 * nx - 0.8 * ny;
            let shade = if lit > 0.35 {
                1
            } else if lit < -0.3 {
                -1
            } else {
                0
            };
            (a, b, shade)
        })
        .collect();
    let inside = |u: f64, v: f64| {
        let mut odd = false;
        for i in 0..n {
            let (a, b) = (pts[i], pts[(i + 1) % n]);
            if (a.1 > v) != (b.1 > v) && u < a.0 + (v - a.1) / (b.1 - a.1) * (b.0 - a.0) {
                odd = !odd;
            }
        }
        odd
    };
    for y in 0..sc.h {
        for x in 0..sc.w {
            let (u, v) = fr.uv(x, y);
            if !inside(u, v) {
                continue;
            }
            let (px, py) = (u * fr.bw, v * fr.bh);
            let mut best = (f64::MAX, 0);
            for &(a, b, shade) in &edges {
                let (ax, ay, bx, by) = (a.0 * fr.bw, a.1 * fr.bh, b.0 * fr.bw, b.1 * fr.bh);
                let (dx, dy) = (bx - ax, by - ay);
                let t = (((px - ax) * dx + (py - ay) * dy) / (dx * dx + dy * dy).max(1e-9))
                    .clamp(0.0, 1.0);
                let (ex, ey) = (ax + t * dx - px, ay + t * dy - py);
                // The base is squeezed so only a band along the ground is dark.
                let weight = if a.1 >= 1.0 && b.1 >= 1.0 { 2.5 } else { 1.0 };
                let d = (ex * ex + ey * ey).sqrt() * weight;
                if d < best.0 {
                    best = (d, shade);
                }
            }
            sc.set(x, y, m, best.1);
        }
    }
    if fr.px() >= 14.0 {
        // Short diagonal cracks.
        for &(cu, cv, dir) in &cracks {
            let (x0, y0) = (fr.cx + cu * fr.bw, fr.top + cv * fr.bh);
            let len = (fr.px() * 0.12).round().max(2.0) as i32;
            for i in 0..len {
                let (x, y) = (x0 as i32 + i * dir, y0 as i32 + i / 2 + i % 2);
                if sc.get(x, y).mat == m && sc.get(x, y + 1).mat == m {
                    sc.set(x, y, m, -1);
                }
            }
        }
    }
    if moss {
        // Moss on the top surface: the first pixels below the silhouette top.
        let depth = (fr.px() * 0.12).round().max(1.0) as i32;
        for x in 0..sc.w {
            let top = (0..sc.h).find(|&y| sc.get(x, y).mat != EMPTY);
            if let Some(t) = top {
                for y in t..t + depth {
                    sc.set(x, y, moss_m, if y == t { 1 } else { 0 });
                }
            }
        }
    }
}
