//! Characters: knights, wizards, heroes and other humanoids.

use super::*;

pub(super) const SKINS: [Hsv; 5] = [
    hsv(28.0, 0.38, 0.98),
    hsv(24.0, 0.48, 0.86),
    hsv(22.0, 0.55, 0.66),
    hsv(20.0, 0.55, 0.48),
    hsv(30.0, 0.3, 0.98),
];
pub(super) const HAIRS: [Hsv; 6] = [
    hsv(28.0, 0.7, 0.42),
    hsv(45.0, 0.65, 0.92),
    hsv(15.0, 0.8, 0.7),
    hsv(250.0, 0.2, 0.24),
    hsv(30.0, 0.45, 0.62),
    hsv(0.0, 0.0, 0.85),
];
pub(super) const PANTS: [Hsv; 4] = [
    hsv(222.0, 0.45, 0.45),
    hsv(30.0, 0.5, 0.42),
    hsv(240.0, 0.1, 0.36),
    hsv(90.0, 0.35, 0.4),
];

pub(super) fn humanoid(sc: &mut Scene, cx: &Ctx, rng: &mut Rng, role: Role) {
    let (p, st) = (cx.p, cx.st);
    // Every seed-derived choice comes first and unconditionally, so all frames
    // (and all colour words) draw the same character.
    let skin_d = SKINS[rng.below(SKINS.len())];
    let hair_d = HAIRS[rng.below(HAIRS.len())];
    let cloth_d = hsv(
        rng.range(0.0, 360.0),
        rng.range(0.5, 0.75),
        rng.range(0.62, 0.85),
    );
    let robe_d = hsv(
        rng.range(200.0, 310.0),
        rng.range(0.5, 0.75),
        rng.range(0.55, 0.8),
    );
    let hat_alt_d = hsv(
        rng.range(0.0, 360.0),
        rng.range(0.5, 0.75),
        rng.range(0.5, 0.8),
    );
    let cape_d = hsv(
        rng.range(0.0, 360.0),
        rng.range(0.6, 0.85),
        rng.range(0.6, 0.82),
    );
    let pants_d = PANTS[rng.below(PANTS.len())];
    let metal_d = hsv(
        rng.range(200.0, 230.0),
        rng.range(0.05, 0.14),
        rng.range(0.74, 0.86),
    );
    let leather_d = hsv(
        rng.range(18.0, 32.0),
        rng.range(0.5, 0.65),
        rng.range(0.36, 0.5),
    );
    let beard_d = hsv(40.0, 0.04, rng.range(0.82, 0.95));
    let head_w = rng.range(0.235, 0.265);
    let open_face = rng.chance(0.5);
    let want_plume = rng.chance(0.5);
    let want_beard = rng.chance(0.6);
    let long_hair_roll = rng.chance(0.25);
    let hat_same = rng.chance(0.5);
    let fringe = rng.below(3);

    let female = p.has(&[
        "woman",
        "women",
        "girl",
        "lady",
        "princess",
        "witch",
        "sorceress",
        "heroine",
    ]);
    let long_hair = (long_hair_roll || female) && !p.neg_has(&["long"]);
    let cape_on = p.wants(&["cape", "cloak", "mantle"]);

    let skin = st.color("skin", None, skin_d);
    let (main, legs, boots_c, hair, hat, accent);
    match role {
        Role::Knight => {
            main = st.color("armor", Some(0), metal_d);
            legs = main;
            boots_c = st.color("boots", None, leather_d);
            hair = st.color("helmet", None, main);
            hat = st.color("plume", Some(1), st.color("cape", None, cape_d));
            accent = boots_c;
        }
        Role::Mage => {
            main = st.color("clothes", Some(0), robe_d);
            legs = main;
            let hat_d = if hat_same { main } else { hat_alt_d };
            hat = st.color("hat", Some(1), hat_d);
            boots_c = hat;
            hair = st.color("beard", None, st.color("hair", None, beard_d));
            accent = hsv(46.0, 0.75, 0.92);
        }
        Role::Person => {
            main = st.color("clothes", Some(0), cloth_d);
            legs = st.color("pants", Some(1), pants_d);
            boots_c = st.color("boots", None, leather_d);
            hair = st.color("hair", Some(2), hair_d);
            hat = main;
            accent = boots_c;
        }
    }
    sc.set_ink(main);
    let skin_m = sc.material(skin);
    let main_m = sc.material(main);
    let legs_m = if legs == main {
        main_m
    } else {
        sc.material(legs)
    };
    // A caped person would need a 19th colour: boots become dark trousers.
    let boots_m = if role == Role::Person && cape_on {
        legs_m
    } else {
        sc.material(boots_c)
    };
    let hair_m = if hair == main {
        main_m
    } else {
        sc.material(hair)
    };
    let hat_m = if hat == main {
        main_m
    } else {
        sc.material(hat)
    };
    let accent_m = if accent == boots_c {
        boots_m
    } else {
        sc.material(accent)
    };
    let cape_m = if cape_on {
        let c = st.color(
            "cape",
            if role == Role::Knight { Some(1) } else { None },
            cape_d,
        );
        if role == Role::Knight && c == hat {
            hat_m
        } else {
            sc.material(c)
        }
    } else {
        EMPTY
    };

    let fr = fit(sc, 0.5, 0.9, Align::Bottom);
    let pv = fr.pv();
    let tiny = fr.px() < 12.0;

    // Walk cycle: s = +1 left foot forward (lifted), -1 right foot; the body
    // dips 1 px on the passing frames in between; arms swing against the legs.
    let s = cx.anim.wave();
    let lift = (fr.bh * 0.07).round().max(1.0);
    let lift_l = round_i(s.max(0.0) * lift);
    let lift_r = round_i((-s).max(0.0) * lift);
    let bob = i32::from(cx.anim.animated && s.abs() < 0.5);
    let swing = round_i(s * (fr.bh * 0.035).max(1.0));
    let up = fr.shift(0, bob);
    let mut pen = Pen { sc, fr: up };

    // Behind the body: cape and long hair.
    if cape_on {
        let sway = s * 0.03;
        pen.profile(0.43, 0.93, cape_m, Shade::Cyl, |t| {
            (sway * t, 0.25 + 0.18 * t)
        });
    }
    if long_hair && role != Role::Knight {
        let top = if role == Role::Mage { 0.3 } else { 0.2 };
        pen.rect(-head_w - 0.02, head_w + 0.02, top, 0.58, hair_m, Shade::Cyl);
    }

    // Legs (feet stay on the ground line; the hip follows the bob).
    pen.fr = fr;
    let hip = 0.74 + f64::from(bob) * pv;
    for (side, lifted) in [(-1.0, lift_l), (1.0, lift_r)] {
        let bot = 1.0 - f64::from(lifted) * pv;
        let c = side * 0.105;
        if role == Role::Mage {
            // Only the feet peek out under the robe.
            pen.rect(c - 0.085, c + 0.085, bot - 0.06, bot, boots_m, Shade::Rim);
        } else {
            pen.rect(c - 0.075, c + 0.075, hip, bot, legs_m, Shade::Cyl);
            let boot_shade = if boots_m == legs_m {
                Shade::Flat(-1)
            } else {
                Shade::Cyl
            };
            pen.rect(c - 0.085, c + 0.085, bot - 0.09, bot, boots_m, boot_shade);
        }
    }

    pen.fr = up;
    // Torso.
    if role == Role::Mage {
        let hem = s * 0.02;
        pen.profile(0.42, 0.955, main_m, Shade::Cyl, |t| {
            (hem * t, 0.17 + 0.16 * t)
        });
        pen.rect(-0.2, 0.2, 0.6, 0.64, accent_m, Shade::Flat(0));
    } else {
        pen.profile(0.43, 0.76, main_m, Shade::Cyl, |t| (0.0, 0.19 + 0.035 * t));
        pen.rect(-0.215, 0.215, 0.67, 0.715, accent_m, Shade::Flat(-1));
        if role == Role::Knight && !tiny {
            // A lighter chest plate reads as armour.
            pen.rect(-0.1, 0.1, 0.48, 0.62, main_m, Shade::Flat(1));
        }
    }

    if cape_on {
        // The cape's collar over the shoulders.
        pen.rect(-0.2, 0.2, 0.425, 0.47, cape_m, Shade::Rim);
    }

    // Arms swing opposite to each other.
    for (side, dy) in [(-1.0, swing), (1.0, -swing)] {
        pen.fr = up.shift(0, dy);
        let c = side * 0.265;
        let (hw, sleeve) = if role == Role::Mage {
            (0.08, main_m)
        } else {
            (0.06, main_m)
        };
        pen.rect(c - hw, c + hw, 0.45, 0.665, sleeve, Shade::Rim);
        pen.rect(c - 0.055, c + 0.055, 0.65, 0.72, skin_m, Shade::Flat(0));
        if role == Role::Knight {
            pen.ellipse(side * 0.255, 0.465, 0.1, 0.055, main_m, Shade::Sphere);
        }
    }
    pen.fr = up;

    // Head and headwear.
    let eye_v = match role {
        Role::Mage => 0.34,
        _ => 0.29,
    };
    let mut eyes = true;
    match role {
        Role::Knight => {
            let helmet = !p.neg_has(&["helmet", "helm"]);
            pen.squircle(0.0, 0.25, head_w, 0.2, skin_m, Shade::Soft);
            if helmet {
                pen.squircle(0.0, 0.245, head_w + 0.02, 0.205, hair_m, Shade::Sphere);
                if open_face || tiny {
                    pen.rect(-0.15, 0.15, 0.22, 0.38, skin_m, Shade::Flat(0));
                } else {
                    eyes = false;
                    pen.rect(-0.17, 0.17, 0.27, 0.315, INK, Shade::Flat(0));
                    pen.rect(-0.0, 0.0, 0.315, 0.4, INK, Shade::Flat(0));
                }
                if want_plume && !p.neg_has(&["plume"]) && !tiny {
                    pen.profile(0.0, 0.09, hat_m, Shade::Cyl, |t| (0.0, 0.03 + 0.03 * t));
                }
            } else {
                draw_hair(&mut pen, hair_m, head_w, fringe);
            }
        }
        Role::Mage => {
            pen.squircle(0.0, 0.34, head_w - 0.02, 0.14, skin_m, Shade::Soft);
            let beard = (want_beard || p.has(&["beard", "bearded", "old"]))
                && !female
                && !p.neg_has(&["beard"]);
            if beard {
                pen.profile(0.38, 0.62, hair_m, Shade::Cyl, |t| (0.0, 0.19 - 0.14 * t));
                pen.rect(-0.08, 0.08, 0.41, 0.43, INK, Shade::Flat(0));
            }
            if !p.neg_has(&["hat"]) {
                pen.profile(0.0, 0.23, hat_m, Shade::Cyl, |t| (0.0, 0.02 + 0.2 * t));
                pen.rect(-0.36, 0.36, 0.2, 0.25, hat_m, Shade::Rim);
                if !tiny {
                    pen.rect(-0.2, 0.2, 0.16, 0.2, accent_m, Shade::Flat(0));
                }
            } else {
                draw_hair(&mut pen, hair_m, head_w - 0.02, fringe);
            }
        }
        Role::Person => {
            pen.squircle(0.0, 0.25, head_w, 0.2, skin_m, Shade::Soft);
            if !p.neg_has(&["hair"]) {
                draw_hair(&mut pen, hair_m, head_w, fringe);
            }
        }
    }
    if eyes && !p.neg_has(&["eye", "eyes"]) {
        pen.rect2(
            0.075,
            0.115,
            eye_v - 0.03,
            eye_v + 0.035,
            INK,
            Shade::Flat(0),
        );
    }
}

pub(super) fn draw_hair(pen: &mut Pen, hair_m: u8, head_w: f64, style: usize) {
    let (ru, rv) = (head_w + 0.025, 0.215);
    pen.fill(
        [-ru, ru, 0.0, 0.5],
        hair_m,
        Shade::Soft,
        |u, v| {
            let (x, y) = (u / ru, (v - 0.245) / rv);
            if x * x * x * x + y * y * y * y > 1.0 {
                return false;
            }
            let a = u.abs();
            let fringe = match style {
                // Straight fringe.
                0 => 0.15,
                // Zig-zag spikes.
                1 => 0.13 + 0.04 * ((a * 18.0).fract() - 0.5).abs() * 2.0,
                // Side parting.
                _ => 0.13 + if u < 0.0 { 0.05 } else { 0.0 },
            };
            v < fringe || (a > head_w - 0.045 && v < 0.33)
        },
        |u, v| (u / ru, (v - 0.245) / rv),
    );
}
