//! Creatures: slimes and bats.

use super::*;

pub(super) fn slime(sc: &mut Scene, cx: &Ctx, rng: &mut Rng) {
    let body_d = hsv(
        rng.range(0.0, 360.0),
        rng.range(0.55, 0.8),
        rng.range(0.72, 0.9),
    );
    let eye_gap = rng.range(0.12, 0.17);
    let mouth = rng.below(3);
    let bump = rng.chance(0.4);
    let spots = rng.chance(0.3) || cx.p.has(&["spot", "spotted"]);
    let spot_seed = rng.next_u64();

    let body = cx.st.color("body", Some(0), body_d);
    sc.set_ink(body);
    let body_m = sc.material(body);
    let shine_m = sc.flat(hsv(body.h, 0.08, 1.0));
    let fr = fit(sc, 1.0, 1.35, Align::Bottom);
    let big = fr.px() >= 14.0;

    // Squash (wider, lower) and back, on a fixed floor line. Measured in whole
    // pixels so the sprite's box only grows by a pixel or two.
    let squash = if cx.anim.animated {
        0.5 + 0.5 * cx.anim.wave()
    } else {
        0.0
    };
    let a = (fr.bw * 0.035).round().max(1.0);
    let rx = 0.45 + squash * a * fr.pu();
    let ry = 0.4 - squash * 0.5 * a * fr.pv();
    let cv = 1.06 - ry;
    let mut pen = Pen { sc, fr };
    pen.ellipse(0.0, cv, rx, ry, body_m, Shade::Sphere);
    if bump && big {
        pen.ellipse(0.0, cv - ry + 0.01, 0.08, 0.07, body_m, Shade::Sphere);
    }
    if spots && big {
        let mut r = Rng::new(spot_seed);
        for _ in 0..3 {
            let (su, sv) = (
                r.range(-0.3, 0.3) * rx / 0.47,
                cv + r.range(-0.1, 0.25) * ry / 0.4,
            );
            pen.ellipse(su, sv, 0.045, 0.035, body_m, Shade::Flat(-1));
        }
    }
    let top = cv - ry;
    pen.ellipse(
        -0.2 * rx / 0.47,
        top + 0.11,
        0.065,
        0.04,
        shine_m,
        Shade::Flat(0),
    );
    let ev = cv - 0.02;
    let eu = eye_gap * rx / 0.47;
    for side in [-1.0, 1.0] {
        pen.ellipse(side * eu, ev, 0.04, 0.075, INK, Shade::Flat(0));
    }
    if fr.px() >= 20.0 {
        for side in [-1.0, 1.0] {
            pen.rect(
                side * eu - 0.02,
                side * eu - 0.02,
                ev - 0.04,
                ev - 0.04,
                shine_m,
                Shade::Flat(0),
            );
        }
    }
    if big {
        let mv = ev + 0.12;
        match mouth {
            0 => pen.rect(-0.05, 0.05, mv, mv + 0.02, INK, Shade::Flat(0)),
            1 => pen.ellipse(0.0, mv + 0.01, 0.05, 0.035, INK, Shade::Flat(0)),
            _ => {}
        }
    }
}

pub(super) fn bat(sc: &mut Scene, cx: &Ctx, rng: &mut Rng) {
    let bodies = [
        hsv(270.0, 0.35, 0.48),
        hsv(20.0, 0.45, 0.42),
        hsv(230.0, 0.12, 0.45),
        hsv(300.0, 0.3, 0.5),
    ];
    let body_d = bodies[rng.below(bodies.len())];
    let eye_d = if rng.chance(0.6) {
        hsv(0.0, 0.85, 1.0)
    } else {
        hsv(55.0, 0.85, 1.0)
    };
    let scallops = 2.0 + rng.below(2) as f64;
    let ear = rng.range(0.08, 0.12);

    let body = cx.st.color("body", Some(0), body_d);
    let wing = cx.st.color(
        "wings",
        Some(1),
        hsv(body.h, (body.s * 1.1).min(1.0), body.v * 0.82),
    );
    sc.set_ink(body);
    let body_m = sc.material(body);
    let wing_m = sc.material(wing);
    let eye_m = sc.flat(cx.st.color("eyes", None, eye_d));
    let fang_m = sc.flat(hsv(0.0, 0.0, 1.0));
    let fr = fit(sc, 1.3, 2.0, Align::Centre);

    // Flap: +1 wings up, -1 wings down. A still bat holds them half raised.
    let f = if cx.anim.animated {
        cx.anim.wave()
    } else {
        0.5
    };
    let mut pen = Pen { sc, fr };
    let (wx, tx) = (0.28, 0.5);
    let wrist_v = 0.3 - 0.2 * f;
    let tip_v = 0.38 - 0.28 * f;
    pen.fill(
        [-0.5, 0.5, 0.0, 1.0],
        wing_m,
        Shade::Rim,
        |u, v| {
            let a = u.abs();
            if !(0.05..=tx).contains(&a) {
                return false;
            }
            let top = if a < wx {
                lerp(0.4, wrist_v, (a - 0.05) / (wx - 0.05))
            } else {
                lerp(wrist_v, tip_v, (a - wx) / (tx - wx))
            };
            let k = (a - 0.05) / (tx - 0.05);
            let bot_line = lerp(0.64, tip_v + 0.03, k);
            let q = (k * scallops).fract();
            let dip = 0.11 * (1.0 - (2.0 * q - 1.0) * (2.0 * q - 1.0)) * (1.0 - 0.5 * k);
            v >= top && v <= bot_line - dip
        },
        |u, v| (u, v),
    );
    // The body rises as the wings beat down.
    pen.fr = fr.shift(0, if f > 0.3 { 1 } else { 0 });
    pen.ellipse(0.0, 0.52, 0.11, 0.17, body_m, Shade::Sphere);
    pen.ellipse(0.0, 0.34, 0.12, 0.11, body_m, Shade::Sphere);
    for side in [-1.0, 1.0] {
        pen.profile(0.17, 0.3, body_m, Shade::Rim, |t| {
            (side * 0.07, 0.01 + ear * 0.5 * t)
        });
    }
    pen.rect2(0.035, 0.065, 0.32, 0.35, eye_m, Shade::Flat(0));
    if fr.px() >= 16.0 {
        pen.rect2(0.02, 0.02, 0.42, 0.44, fang_m, Shade::Flat(0));
    }
}
