//! The embedded `Procedural` generator: deterministic, prompt-driven placeholder
//! pixel art that needs no model, no GPU and no network.
//!
//! How it works:
//! - The prompt is split into lower-case words. Word stems pick a *shape family*
//!   (knight, slime, bat, sword, tree, wall, ...) and colour words pick hues,
//!   bound to the part named right after them ("red cape") or, if none, to the
//!   family's main material ("blue slime").
//! - Each family draws into a grid of material cells (material id + shade
//!   -1/0/+1) with shapes defined in normalised box coordinates, so one
//!   description rasterises at 8×8 as well as at 128×128.
//! - A final pass maps every cell to its material's 3-step ramp (shadow, base,
//!   highlight) and puts a 1-px dark outline around the silhouette.
//!
//! Output must be byte-identical on every machine (the content-addressed cache
//! depends on it), so everything here is integer maths or basic f64 arithmetic:
//! no libm `sin`/`cos`/`powf` (see `cos_turns`), no hash-map iteration, and a
//! hand-written RNG.

use image::{Rgba, RgbaImage};

/// What the generator needs to draw one frame of one sprite.
#[derive(Debug, Clone, Copy)]
pub struct ProceduralRequest<'a> {
    /// What to draw, e.g. "knight with a red cape".
    pub prompt: &'a str,
    /// Things to leave out, e.g. "cape" or a colour to avoid.
    pub negative_prompt: &'a str,
    /// Picks the variation; the same seed always gives the same sprite.
    pub seed: u64,
    /// Frame width in pixels (8..=128 in practice; any value is accepted).
    pub width: u32,
    /// Frame height in pixels (8..=128 in practice; any value is accepted).
    pub height: u32,
    /// 0-based frame index.
    pub frame: u32,
    /// Number of frames of the animation (1 for a still sprite).
    pub frames: u32,
}

/// Draws one frame. Background pixels are fully transparent (alpha 0); every
/// other pixel is fully opaque (alpha 255).
pub fn render(request: &ProceduralRequest) -> RgbaImage {
    // Clamp rather than panic: a degenerate size just gives an (almost) empty frame.
    let w = i32::try_from(request.width.clamp(1, 4096)).unwrap_or(1);
    let h = i32::try_from(request.height.clamp(1, 4096)).unwrap_or(1);
    let frames = request.frames.max(1);
    let anim = Anim {
        phase: f64::from(request.frame % frames) / f64::from(frames),
        animated: frames > 1,
    };
    let prompt = Prompt::parse(request.prompt, request.negative_prompt);
    let family = prompt.family();
    let style = Style::parse(&prompt);
    let mut rng = Rng::new(request.seed ^ family.salt());
    let cx = Ctx {
        p: &prompt,
        st: &style,
        anim,
    };
    let mut sc = Scene::new(w, h);
    match family {
        Family::Humanoid(role) => humanoid(&mut sc, &cx, &mut rng, role),
        Family::Slime => slime(&mut sc, &cx, &mut rng),
        Family::Bat => bat(&mut sc, &cx, &mut rng),
        Family::Sword => sword(&mut sc, &cx, &mut rng),
        Family::Potion => potion(&mut sc, &cx, &mut rng),
        Family::Coin => coin(&mut sc, &cx, &mut rng),
        Family::Gem => gem(&mut sc, &cx, &mut rng),
        Family::Tree => tree(&mut sc, &cx, &mut rng),
        Family::Rock => rock(&mut sc, &cx, &mut rng),
        Family::Chest => chest(&mut sc, &cx, &mut rng),
        Family::Heart => heart(&mut sc, &cx, &mut rng),
        Family::Key => key(&mut sc, &cx, &mut rng),
        Family::Skull => skull(&mut sc, &cx, &mut rng),
        Family::Grass => grass(&mut sc, &cx, &mut rng),
        Family::Dirt => dirt(&mut sc, &cx, &mut rng),
        Family::Floor => floor(&mut sc, &cx, &mut rng),
        Family::Wall => wall(&mut sc, &cx, &mut rng),
        Family::Creature => creature(&mut sc, &cx, &mut rng),
    }
    sc.into_image(!prompt.neg_has(&["outline", "outlined"]))
}

// ---------------------------------------------------------------------------
// Deterministic maths
// ---------------------------------------------------------------------------

/// SplitMix64. Hand-written on purpose: a crate RNG may change its output
/// stream in an upgrade, which would silently invalidate the content-addressed
/// sprite cache.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        unit(self.next_u64())
    }

    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// SplitMix64 finaliser: a good 64-bit mixing function.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn hash3(seed: u64, a: u64, b: u64) -> u64 {
    mix(seed ^ mix(a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_mul(0xD6E8_FEB8_6659_FD93)))
}

fn unit(bits: u64) -> f64 {
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// cos(2π·t) from a Taylor series, so animation poses do not depend on the
/// platform's libm. Exact (0, ±1) at quarter turns, which keeps passing frames
/// of walk cycles clean.
fn cos_turns(t: f64) -> f64 {
    let mut r = t - t.floor();
    if r > 0.5 {
        r = 1.0 - r;
    }
    let mut sign = 1.0;
    if r > 0.25 {
        r = 0.5 - r;
        sign = -1.0;
    }
    let tau = std::f64::consts::TAU;
    if r <= 0.125 {
        let x2 = (r * tau) * (r * tau);
        let c = 1.0 - x2 / 90.0 * (1.0 - x2 / 132.0);
        sign * (1.0 - x2 / 2.0 * (1.0 - x2 / 12.0 * (1.0 - x2 / 30.0 * (1.0 - x2 / 56.0 * c))))
    } else {
        let x = (0.25 - r) * tau;
        let x2 = x * x;
        let c = 1.0 - x2 / 110.0 * (1.0 - x2 / 156.0);
        sign * x * (1.0 - x2 / 6.0 * (1.0 - x2 / 20.0 * (1.0 - x2 / 42.0 * (1.0 - x2 / 72.0 * c))))
    }
}

fn sin_turns(t: f64) -> f64 {
    cos_turns(t - 0.25)
}

fn lerp(a: f64, b: f64, t: f64) -> f64 {
    a + (b - a) * t
}

fn round_i(x: f64) -> i32 {
    x.round() as i32
}

#[derive(Clone, Copy)]
struct Anim {
    /// Position in the cycle, in [0, 1).
    phase: f64,
    animated: bool,
}

impl Anim {
    /// cos of the cycle, or 0 (the neutral pose) for a still sprite.
    fn wave(&self) -> f64 {
        if self.animated {
            cos_turns(self.phase)
        } else {
            0.0
        }
    }

    fn swave(&self) -> f64 {
        if self.animated {
            sin_turns(self.phase)
        } else {
            0.0
        }
    }
}

// ---------------------------------------------------------------------------
// Colour
// ---------------------------------------------------------------------------

/// Hue in degrees, saturation and value in [0, 1].
#[derive(Clone, Copy, Debug, PartialEq)]
struct Hsv {
    h: f64,
    s: f64,
    v: f64,
}

const fn hsv(h: f64, s: f64, v: f64) -> Hsv {
    Hsv { h, s, v }
}

type Rgb = [u8; 3];

/// A point in box coordinates (u, v).
type Point = (f64, f64);

fn to_rgb(c: Hsv) -> Rgb {
    let h = c.h.rem_euclid(360.0) / 60.0;
    let s = c.s.clamp(0.0, 1.0);
    let v = c.v.clamp(0.0, 1.0);
    let i = h.floor();
    let f = h - i;
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    let (r, g, b) = match i as i32 {
        0 => (v, t, p),
        1 => (q, v, p),
        2 => (p, v, t),
        3 => (p, q, v),
        4 => (t, p, v),
        _ => (v, p, q),
    };
    let byte = |x: f64| (x * 255.0).round().clamp(0.0, 255.0) as u8;
    [byte(r), byte(g), byte(b)]
}

/// Moves hue `h` up to `amount` degrees towards `target` along the short arc.
fn shift_hue(h: f64, target: f64, amount: f64) -> f64 {
    let mut d = (target - h).rem_euclid(360.0);
    if d > 180.0 {
        d -= 360.0;
    }
    (h + d.clamp(-amount, amount)).rem_euclid(360.0)
}

/// Shadow, base and highlight of one material. Shadows drift towards blue and
/// highlights towards yellow, the usual pixel-art hue shift.
fn ramp(c: Hsv) -> [Rgb; 3] {
    let shadow = hsv(
        shift_hue(c.h, 250.0, 14.0 * c.s.min(1.0)),
        (c.s * 1.08 + 0.06).min(1.0),
        c.v * 0.66,
    );
    let light = hsv(
        shift_hue(c.h, 55.0, 10.0 * c.s.min(1.0)),
        c.s * 0.72,
        (c.v * 1.18 + 0.1).min(1.0),
    );
    [to_rgb(shadow), to_rgb(c), to_rgb(light)]
}

/// Near-black, tinted towards the sprite's main colour.
fn outline_of(main: Hsv) -> Hsv {
    let s = if main.s > 0.15 { 0.55 } else { 0.25 };
    hsv(shift_hue(main.h, 250.0, 25.0), s, 0.14)
}

fn hue_dist(a: f64, b: f64) -> f64 {
    let d = (a - b).rem_euclid(360.0);
    d.min(360.0 - d)
}

// ---------------------------------------------------------------------------
// Prompt parsing
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Role {
    Knight,
    Mage,
    Person,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Family {
    Humanoid(Role),
    Slime,
    Bat,
    Sword,
    Potion,
    Coin,
    Gem,
    Tree,
    Rock,
    Grass,
    Dirt,
    Floor,
    Wall,
    Chest,
    Heart,
    Key,
    Skull,
    Creature,
}

impl Family {
    /// Mixed into the seed so that seed 0 of two families is not correlated.
    fn salt(self) -> u64 {
        let id: u64 = match self {
            Family::Humanoid(Role::Knight) => 1,
            Family::Humanoid(Role::Mage) => 2,
            Family::Humanoid(Role::Person) => 3,
            Family::Slime => 4,
            Family::Bat => 5,
            Family::Sword => 6,
            Family::Potion => 7,
            Family::Coin => 8,
            Family::Gem => 9,
            Family::Tree => 10,
            Family::Rock => 11,
            Family::Grass => 12,
            Family::Dirt => 13,
            Family::Floor => 14,
            Family::Wall => 15,
            Family::Chest => 16,
            Family::Heart => 17,
            Family::Key => 18,
            Family::Skull => 19,
            Family::Creature => 20,
        };
        mix(id.wrapping_mul(0x5851_F42D_4C95_7F2D))
    }
}

const FAMILY_WORDS: &[(&str, Family)] = &[
    ("knight", Family::Humanoid(Role::Knight)),
    ("paladin", Family::Humanoid(Role::Knight)),
    ("soldier", Family::Humanoid(Role::Knight)),
    ("warrior", Family::Humanoid(Role::Knight)),
    ("guardsman", Family::Humanoid(Role::Knight)),
    ("wizard", Family::Humanoid(Role::Mage)),
    ("mage", Family::Humanoid(Role::Mage)),
    ("witch", Family::Humanoid(Role::Mage)),
    ("sorcerer", Family::Humanoid(Role::Mage)),
    ("sorceress", Family::Humanoid(Role::Mage)),
    ("warlock", Family::Humanoid(Role::Mage)),
    ("magician", Family::Humanoid(Role::Mage)),
    ("necromancer", Family::Humanoid(Role::Mage)),
    ("hero", Family::Humanoid(Role::Person)),
    ("heroine", Family::Humanoid(Role::Person)),
    ("character", Family::Humanoid(Role::Person)),
    ("person", Family::Humanoid(Role::Person)),
    ("people", Family::Humanoid(Role::Person)),
    ("man", Family::Humanoid(Role::Person)),
    ("men", Family::Humanoid(Role::Person)),
    ("woman", Family::Humanoid(Role::Person)),
    ("women", Family::Humanoid(Role::Person)),
    ("player", Family::Humanoid(Role::Person)),
    ("villager", Family::Humanoid(Role::Person)),
    ("adventurer", Family::Humanoid(Role::Person)),
    ("human", Family::Humanoid(Role::Person)),
    ("npc", Family::Humanoid(Role::Person)),
    ("boy", Family::Humanoid(Role::Person)),
    ("girl", Family::Humanoid(Role::Person)),
    ("farmer", Family::Humanoid(Role::Person)),
    ("rogue", Family::Humanoid(Role::Person)),
    ("archer", Family::Humanoid(Role::Person)),
    ("slime", Family::Slime),
    ("blob", Family::Slime),
    ("jelly", Family::Slime),
    ("ooze", Family::Slime),
    ("bat", Family::Bat),
    ("sword", Family::Sword),
    ("blade", Family::Sword),
    ("dagger", Family::Sword),
    ("knife", Family::Sword),
    ("katana", Family::Sword),
    ("saber", Family::Sword),
    ("sabre", Family::Sword),
    ("potion", Family::Potion),
    ("bottle", Family::Potion),
    ("flask", Family::Potion),
    ("vial", Family::Potion),
    ("elixir", Family::Potion),
    ("coin", Family::Coin),
    ("gem", Family::Gem),
    ("gemstone", Family::Gem),
    ("jewel", Family::Gem),
    ("crystal", Family::Gem),
    ("diamond", Family::Gem),
    ("ruby", Family::Gem),
    ("rubies", Family::Gem),
    ("emerald", Family::Gem),
    ("sapphire", Family::Gem),
    ("amethyst", Family::Gem),
    ("tree", Family::Tree),
    ("oak", Family::Tree),
    ("pine", Family::Tree),
    ("fir", Family::Tree),
    ("spruce", Family::Tree),
    ("rock", Family::Rock),
    ("stone", Family::Rock),
    ("boulder", Family::Rock),
    ("pebble", Family::Rock),
    ("grass", Family::Grass),
    ("ground", Family::Grass),
    ("lawn", Family::Grass),
    ("meadow", Family::Grass),
    ("dirt", Family::Dirt),
    ("mud", Family::Dirt),
    ("soil", Family::Dirt),
    ("sand", Family::Dirt),
    ("path", Family::Dirt),
    ("floor", Family::Floor),
    ("cobble", Family::Floor),
    ("cobblestone", Family::Floor),
    ("pavement", Family::Floor),
    ("wall", Family::Wall),
    ("brick", Family::Wall),
    ("chest", Family::Chest),
    ("crate", Family::Chest),
    ("heart", Family::Heart),
    ("key", Family::Key),
    ("skull", Family::Skull),
    ("skeleton", Family::Skull),
];

/// Colour words. "dark" alone means black; "dark"/"light" before another colour
/// only darkens/lightens it (handled in `Style::parse`).
const COLOUR_WORDS: &[(&str, Hsv)] = &[
    ("red", hsv(0.0, 0.78, 0.85)),
    ("crimson", hsv(350.0, 0.82, 0.72)),
    ("orange", hsv(27.0, 0.85, 0.95)),
    ("yellow", hsv(52.0, 0.78, 0.95)),
    ("gold", hsv(44.0, 0.82, 0.93)),
    ("green", hsv(115.0, 0.65, 0.72)),
    ("lime", hsv(90.0, 0.7, 0.85)),
    ("blue", hsv(218.0, 0.72, 0.88)),
    ("navy", hsv(225.0, 0.75, 0.5)),
    ("cyan", hsv(186.0, 0.7, 0.85)),
    ("teal", hsv(176.0, 0.72, 0.65)),
    ("turquoise", hsv(172.0, 0.65, 0.8)),
    ("purple", hsv(275.0, 0.6, 0.72)),
    ("violet", hsv(285.0, 0.5, 0.85)),
    ("magenta", hsv(305.0, 0.7, 0.85)),
    ("pink", hsv(330.0, 0.45, 0.97)),
    ("brown", hsv(27.0, 0.62, 0.52)),
    ("black", hsv(250.0, 0.25, 0.22)),
    ("dark", hsv(250.0, 0.25, 0.22)),
    ("white", hsv(220.0, 0.05, 0.96)),
    ("grey", hsv(220.0, 0.07, 0.6)),
    ("gray", hsv(220.0, 0.07, 0.6)),
    ("silver", hsv(215.0, 0.1, 0.84)),
    ("steel", hsv(210.0, 0.14, 0.74)),
    ("iron", hsv(210.0, 0.1, 0.6)),
    ("bronze", hsv(30.0, 0.65, 0.72)),
    ("copper", hsv(20.0, 0.7, 0.78)),
    ("ruby", hsv(350.0, 0.8, 0.85)),
    ("emerald", hsv(140.0, 0.75, 0.75)),
    ("sapphire", hsv(225.0, 0.8, 0.85)),
    ("amethyst", hsv(280.0, 0.55, 0.8)),
    ("diamond", hsv(190.0, 0.18, 0.97)),
];

/// Part words a colour can bind to ("red cape"); the key is what families ask for.
const PART_WORDS: &[(&str, &str)] = &[
    ("cape", "cape"),
    ("cloak", "cape"),
    ("mantle", "cape"),
    ("hat", "hat"),
    ("hood", "hat"),
    ("helmet", "helmet"),
    ("helm", "helmet"),
    ("armor", "armor"),
    ("armour", "armor"),
    ("plate", "armor"),
    ("mail", "armor"),
    ("shirt", "clothes"),
    ("tunic", "clothes"),
    ("robe", "clothes"),
    ("clothes", "clothes"),
    ("dress", "clothes"),
    ("outfit", "clothes"),
    ("hair", "hair"),
    ("haired", "hair"),
    ("beard", "beard"),
    ("pants", "pants"),
    ("trousers", "pants"),
    ("boot", "boots"),
    ("shoe", "boots"),
    ("skin", "skin"),
    ("skinned", "skin"),
    ("eye", "eyes"),
    ("eyed", "eyes"),
    ("blade", "blade"),
    ("hilt", "hilt"),
    ("handle", "hilt"),
    ("grip", "hilt"),
    ("guard", "guard"),
    ("liquid", "liquid"),
    ("potion", "liquid"),
    ("elixir", "liquid"),
    ("bottle", "glass"),
    ("glass", "glass"),
    ("flask", "glass"),
    ("cork", "cork"),
    ("leaves", "leaves"),
    ("leaf", "leaves"),
    ("foliage", "leaves"),
    ("canopy", "leaves"),
    ("trunk", "trunk"),
    ("bark", "trunk"),
    ("wood", "wood"),
    ("metal", "metal"),
    ("trim", "metal"),
    ("lock", "metal"),
    ("band", "metal"),
    ("wing", "wings"),
    ("gem", "gem"),
    ("jewel", "gem"),
    ("pommel", "gem"),
    ("mortar", "mortar"),
    ("flower", "flowers"),
    ("moss", "moss"),
    ("fruit", "fruit"),
    ("apple", "fruit"),
    ("plume", "plume"),
    ("feather", "plume"),
    ("spot", "spots"),
];

/// Words that end the first noun phrase ("knight *with* a sword").
const STOP_WORDS: &[&str] = &[
    "with", "of", "in", "on", "holding", "wearing", "carrying", "and", "at", "under", "near",
    "beside", "behind", "by", "from", "for", "riding", "using", "without", "has", "having",
];

/// Word stem match: the word is the stem plus an English-ish suffix, so "bats"
/// and "golden" match but "battle" and "mana" do not.
fn stem_match(word: &str, stem: &str) -> bool {
    word.strip_prefix(stem).is_some_and(|rest| {
        matches!(
            rest,
            "" | "s" | "es" | "d" | "ed" | "en" | "y" | "ish" | "ies" | "ie"
        )
    })
}

fn lookup<T: Copy>(table: &[(&str, T)], word: &str) -> Option<T> {
    // Exact matches first so "dark" beats a stem of another entry.
    table
        .iter()
        .find(|(stem, _)| *stem == word)
        .or_else(|| table.iter().find(|(stem, _)| stem_match(word, stem)))
        .map(|&(_, v)| v)
}

struct Prompt {
    words: Vec<String>,
    neg: Vec<String>,
}

fn words_of(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

impl Prompt {
    fn parse(prompt: &str, negative: &str) -> Self {
        Prompt {
            words: words_of(prompt),
            neg: words_of(negative),
        }
    }

    fn has(&self, stems: &[&str]) -> bool {
        self.words
            .iter()
            .any(|w| stems.iter().any(|s| stem_match(w, s)))
    }

    fn neg_has(&self, stems: &[&str]) -> bool {
        self.neg
            .iter()
            .any(|w| stems.iter().any(|s| stem_match(w, s)))
    }

    /// Wanted: said in the prompt and not in the negative prompt.
    fn wants(&self, stems: &[&str]) -> bool {
        self.has(stems) && !self.neg_has(stems)
    }

    /// The head noun decides: the last family word of the first noun phrase
    /// ("stone wall" is a wall, "knight with a sword" a knight), else the first
    /// family word anywhere, else the random creature.
    fn family(&self) -> Family {
        let seg = self
            .words
            .iter()
            .position(|w| STOP_WORDS.contains(&w.as_str()))
            .unwrap_or(self.words.len());
        let fam = |w: &String| lookup(FAMILY_WORDS, w);
        let found = self.words[..seg]
            .iter()
            .rev()
            .find_map(fam)
            .or_else(|| self.words[seg..].iter().find_map(fam));
        let tile = self.has(&["tile", "tileable", "seamless", "texture", "terrain"]);
        match (found, tile) {
            (Some(Family::Tree), true) => Family::Grass,
            (Some(Family::Rock | Family::Creature) | None, true) => Family::Floor,
            (Some(f), _) => f,
            (None, false) => Family::Creature,
        }
    }
}

/// Colours asked for by the prompt.
struct Style {
    /// Colours bound to a named part ("red cape").
    bound: Vec<(&'static str, Hsv)>,
    /// Other colours in prompt order; families give them to their main parts.
    free: Vec<Hsv>,
    /// Colours named in the negative prompt.
    avoid: Vec<Hsv>,
}

impl Style {
    fn parse(p: &Prompt) -> Self {
        let words = &p.words;
        let mut bound = Vec::new();
        let mut free = Vec::new();
        let mut i = 0;
        while i < words.len() {
            let modifier = match words[i].as_str() {
                "light" | "pale" | "bright" => 1,
                "dark" | "deep" => -1,
                _ => 0,
            };
            let next_is_colour = words
                .get(i + 1)
                .is_some_and(|w| lookup(COLOUR_WORDS, w).is_some());
            let at = if modifier != 0 && next_is_colour {
                i + 1
            } else {
                i
            };
            let Some(mut c) = lookup(COLOUR_WORDS, &words[at]) else {
                i += 1;
                continue;
            };
            if at != i {
                c = if modifier > 0 {
                    hsv(c.h, c.s * 0.6, (c.v * 1.15 + 0.1).min(1.0))
                } else {
                    hsv(c.h, (c.s * 1.1).min(1.0), c.v * 0.6)
                };
            }
            // Look a few words ahead for the part this colour describes.
            let mut part = None;
            for w in words.iter().skip(at + 1).take(3) {
                if let Some(pw) = lookup(PART_WORDS, w) {
                    part = Some(pw);
                    break;
                }
                if STOP_WORDS.contains(&w.as_str()) && w != "and" {
                    break;
                }
                if lookup(FAMILY_WORDS, w).is_some() {
                    break;
                }
            }
            match part {
                Some(pw) => bound.push((pw, c)),
                None => free.push(c),
            }
            i = at + 1;
        }
        let avoid = p
            .neg
            .iter()
            .filter_map(|w| lookup(COLOUR_WORDS, w))
            .collect();
        Style { bound, free, avoid }
    }

    /// The colour of `part`: bound colour, else the `slot`-th free colour,
    /// else `default` nudged away from negative-prompt colours.
    fn color(&self, part: &str, slot: Option<usize>, default: Hsv) -> Hsv {
        if let Some(&(_, c)) = self.bound.iter().find(|(p, _)| *p == part) {
            return c;
        }
        if let Some(c) = slot.and_then(|i| self.free.get(i)) {
            return *c;
        }
        self.avoided(default)
    }

    fn explicit(&self, part: &str, slot: Option<usize>) -> bool {
        self.bound.iter().any(|(p, _)| *p == part) || slot.is_some_and(|i| i < self.free.len())
    }

    fn clashes(&self, c: Hsv) -> bool {
        self.avoid.iter().any(|n| {
            if n.s >= 0.25 {
                c.s >= 0.2 && hue_dist(c.h, n.h) < 35.0 && (c.v - n.v).abs() < 0.35
            } else {
                c.s < 0.25 && (c.v - n.v).abs() < 0.25
            }
        })
    }

    fn avoided(&self, mut c: Hsv) -> Hsv {
        for _ in 0..4 {
            if !self.clashes(c) {
                break;
            }
            if c.s >= 0.2 {
                c.h = (c.h + 120.0).rem_euclid(360.0);
            } else {
                c.v = if c.v < 0.5 { 0.8 } else { 0.35 };
            }
        }
        c
    }
}

struct Ctx<'a> {
    p: &'a Prompt,
    st: &'a Style,
    anim: Anim,
}

// ---------------------------------------------------------------------------
// Canvas of material cells
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Default, PartialEq, Eq)]
struct Cell {
    mat: u8,
    shade: i8,
}

const EMPTY: u8 = 0;
/// Material 1 is the outline colour, also used for eyes and slits.
const INK: u8 = 1;

struct Scene {
    w: i32,
    h: i32,
    cells: Vec<Cell>,
    ramps: Vec<[Rgb; 3]>,
    /// Drawable rectangle [x0, y0, x1, y1): sprites keep a 1-px margin so the
    /// outline always fits and never eats the shape.
    clip: [i32; 4],
    /// Tiles fill the frame and get no outline.
    tile: bool,
}

impl Scene {
    fn new(w: i32, h: i32) -> Self {
        Scene {
            w,
            h,
            cells: vec![Cell::default(); w as usize * h as usize],
            ramps: vec![[[0; 3]; 3], [[20, 16, 28]; 3]],
            clip: [1, 1, w - 1, h - 1],
            tile: false,
        }
    }

    fn set_ink(&mut self, main: Hsv) {
        self.ramps[INK as usize] = [to_rgb(outline_of(main)); 3];
    }

    fn material(&mut self, c: Hsv) -> u8 {
        self.ramps.push(ramp(c));
        u8::try_from(self.ramps.len() - 1).unwrap_or(u8::MAX)
    }

    /// A one-colour material (eyes, shine, sparkles).
    fn flat(&mut self, c: Hsv) -> u8 {
        self.ramps.push([to_rgb(c); 3]);
        u8::try_from(self.ramps.len() - 1).unwrap_or(u8::MAX)
    }

    fn make_tile(&mut self) {
        self.tile = true;
        self.clip = [0, 0, self.w, self.h];
    }

    fn get(&self, x: i32, y: i32) -> Cell {
        if x < 0 || y < 0 || x >= self.w || y >= self.h {
            Cell::default()
        } else {
            self.cells[(y * self.w + x) as usize]
        }
    }

    fn set(&mut self, x: i32, y: i32, mat: u8, shade: i8) {
        let [x0, y0, x1, y1] = self.clip;
        if x >= x0 && y >= y0 && x < x1 && y < y1 {
            self.cells[(y * self.w + x) as usize] = Cell { mat, shade };
        }
    }

    /// Tiles wrap around so that repeated frames join seamlessly.
    fn set_wrap(&mut self, x: i32, y: i32, mat: u8, shade: i8) {
        let (x, y) = (x.rem_euclid(self.w), y.rem_euclid(self.h));
        self.cells[(y * self.w + x) as usize] = Cell { mat, shade };
    }

    fn shade_at(&mut self, x: i32, y: i32, shade: i8) {
        let c = self.get(x, y);
        if c.mat != EMPTY {
            self.set(x, y, c.mat, shade);
        }
    }

    fn into_image(self, outline: bool) -> RgbaImage {
        let ink = self.ramps[INK as usize][0];
        let mut img = RgbaImage::new(self.w as u32, self.h as u32);
        for y in 0..self.h {
            for x in 0..self.w {
                let c = self.get(x, y);
                let px = if c.mat != EMPTY {
                    let r = self.ramps[c.mat as usize][(c.shade.clamp(-1, 1) + 1) as usize];
                    Rgba([r[0], r[1], r[2], 255])
                } else if outline
                    && !self.tile
                    && [(0, -1), (-1, 0), (1, 0), (0, 1)]
                        .iter()
                        .any(|&(dx, dy)| self.get(x + dx, y + dy).mat != EMPTY)
                {
                    Rgba([ink[0], ink[1], ink[2], 255])
                } else {
                    Rgba([0, 0, 0, 0])
                };
                img.put_pixel(x as u32, y as u32, px);
            }
        }
        img
    }
}

/// A drawing box: u runs from -0.5 (left) to 0.5 (right) around the frame's
/// vertical centre line, v from 0 (top) to 1 (bottom).
///
/// Centring on `cx = width / 2` keeps `x + 0.5 - cx` exact, so a shape that
/// only depends on |u| is exactly mirror-symmetric in pixels.
#[derive(Clone, Copy)]
struct Fr {
    cx: f64,
    top: f64,
    bw: f64,
    bh: f64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Align {
    Bottom,
    Centre,
}

/// The largest box inside the 1-px margin whose aspect (width / height) lies in
/// [amin, amax]; stretching within that range lets tall frames get tall sprites.
fn fit(sc: &Scene, amin: f64, amax: f64, align: Align) -> Fr {
    let iw = f64::from((sc.w - 2).max(1));
    let ih = f64::from((sc.h - 2).max(1));
    let (bw, bh) = if iw / ih > amax {
        (ih * amax, ih)
    } else if iw / ih < amin {
        (iw, iw / amin)
    } else {
        (iw, ih)
    };
    let top = match align {
        Align::Bottom => 1.0 + ih - bh,
        Align::Centre => 1.0 + ((ih - bh) / 2.0).floor(),
    };
    Fr {
        cx: f64::from(sc.w) / 2.0,
        top,
        bw,
        bh,
    }
}

impl Fr {
    fn uv(&self, x: i32, y: i32) -> (f64, f64) {
        (
            (f64::from(x) + 0.5 - self.cx) / self.bw,
            (f64::from(y) + 0.5 - self.top) / self.bh,
        )
    }

    fn shift(self, dx: i32, dy: i32) -> Fr {
        Fr {
            cx: self.cx + f64::from(dx),
            top: self.top + f64::from(dy),
            ..self
        }
    }

    /// One pixel in u.
    fn pu(&self) -> f64 {
        1.0 / self.bw
    }

    /// One pixel in v.
    fn pv(&self) -> f64 {
        1.0 / self.bh
    }

    /// Size of the box in whole pixels (the smaller side); details below a
    /// threshold are skipped.
    fn px(&self) -> f64 {
        self.bw.min(self.bh)
    }
}

/// How a shape picks shadow/base/highlight for its pixels.
#[derive(Clone, Copy)]
enum Shade {
    Flat(i8),
    /// Light from the top-left: a pixel whose upper or left neighbour lies
    /// outside the shape is highlit, lower or right edge is in shadow.
    Rim,
    /// Round body: highlight spot upper-left, shadow crescent lower-right.
    Sphere,
    /// Vertical cylinder: left side lit, right side in shadow.
    Cyl,
    /// Like Sphere with small light and shadow areas: faces, hair.
    Soft,
    /// Inverse of Rim: an engraved or recessed area (coin face).
    Inset,
}

fn sphere_shade(lx: f64, ly: f64) -> i8 {
    let (hx, hy) = (lx + 0.38, ly + 0.42);
    if hx * hx + hy * hy < 0.17 {
        1
    } else if 0.55 * lx + 0.8 * ly > 0.42 {
        -1
    } else {
        0
    }
}

/// Half extent that still covers at least one pixel: features never vanish at
/// small sizes (and a centred one covers two pixels rather than going lopsided).
fn half(extent: f64, scale: f64) -> f64 {
    let hpx = extent.abs() / 2.0 * scale;
    if hpx <= 0.5 {
        (0.5 + 1e-9) / scale
    } else {
        (hpx - 1e-9) / scale
    }
}

struct Pen<'s> {
    sc: &'s mut Scene,
    fr: Fr,
}

impl Pen<'_> {
    /// Core rasteriser: every pixel whose centre is `inside` gets `mat`.
    /// `local` gives shape-local coordinates in [-1, 1] for Sphere/Cyl shading.
    fn fill(
        &mut self,
        bounds: [f64; 4],
        mat: u8,
        shade: Shade,
        inside: impl Fn(f64, f64) -> bool,
        local: impl Fn(f64, f64) -> (f64, f64),
    ) {
        let fr = self.fr;
        let x0 = ((fr.cx + bounds[0] * fr.bw).floor() as i32 - 1).max(self.sc.clip[0]);
        let x1 = ((fr.cx + bounds[1] * fr.bw).ceil() as i32 + 1).min(self.sc.clip[2]);
        let y0 = ((fr.top + bounds[2] * fr.bh).floor() as i32 - 1).max(self.sc.clip[1]);
        let y1 = ((fr.top + bounds[3] * fr.bh).ceil() as i32 + 1).min(self.sc.clip[3]);
        let (pu, pv) = (fr.pu(), fr.pv());
        for y in y0..y1 {
            for x in x0..x1 {
                let (u, v) = fr.uv(x, y);
                if !inside(u, v) {
                    continue;
                }
                let s = match shade {
                    Shade::Flat(s) => s,
                    Shade::Rim | Shade::Inset => {
                        let lit = !inside(u - pu, v) || !inside(u, v - pv);
                        let dark = !inside(u + pu, v) || !inside(u, v + pv);
                        let s = i8::from(lit) - i8::from(dark);
                        if matches!(shade, Shade::Inset) { -s } else { s }
                    }
                    Shade::Soft => {
                        let (lx, ly) = local(u, v);
                        let (hx, hy) = (lx + 0.55, ly + 0.6);
                        if hx * hx + hy * hy < 0.1 {
                            1
                        } else if 0.55 * lx + 0.8 * ly > 0.72 {
                            -1
                        } else {
                            0
                        }
                    }
                    Shade::Sphere => {
                        let (lx, ly) = local(u, v);
                        sphere_shade(lx, ly)
                    }
                    Shade::Cyl => {
                        let (lx, _) = local(u, v);
                        if lx < -0.4 {
                            1
                        } else if lx > 0.4 {
                            -1
                        } else {
                            0
                        }
                    }
                };
                self.sc.set(x, y, mat, s);
            }
        }
    }

    fn rect(&mut self, u0: f64, u1: f64, v0: f64, v1: f64, mat: u8, shade: Shade) {
        let (cu, cv) = ((u0 + u1) / 2.0, (v0 + v1) / 2.0);
        let hu = half(u1 - u0, self.fr.bw);
        let hv = half(v1 - v0, self.fr.bh);
        self.fill(
            [cu - hu, cu + hu, cv - hv, cv + hv],
            mat,
            shade,
            |u, v| (u - cu).abs() <= hu && (v - cv).abs() <= hv,
            |u, v| ((u - cu) / hu, (v - cv) / hv),
        );
    }

    fn ellipse(&mut self, cu: f64, cv: f64, ru: f64, rv: f64, mat: u8, shade: Shade) {
        let ru = ru.max(0.5 * self.fr.pu());
        let rv = rv.max(0.5 * self.fr.pv());
        self.fill(
            [cu - ru, cu + ru, cv - rv, cv + rv],
            mat,
            shade,
            |u, v| {
                let (x, y) = ((u - cu) / ru, (v - cv) / rv);
                x * x + y * y <= 1.0 + 1e-9
            },
            |u, v| ((u - cu) / ru, (v - cv) / rv),
        );
    }

    /// A rounded square (superellipse |x|⁴ + |y|⁴ ≤ 1): heads, helmets.
    fn squircle(&mut self, cu: f64, cv: f64, ru: f64, rv: f64, mat: u8, shade: Shade) {
        let ru = ru.max(0.5 * self.fr.pu());
        let rv = rv.max(0.5 * self.fr.pv());
        self.fill(
            [cu - ru, cu + ru, cv - rv, cv + rv],
            mat,
            shade,
            |u, v| {
                let (x, y) = ((u - cu) / ru, (v - cv) / rv);
                x * x * x * x + y * y * y * y <= 1.0 + 1e-9
            },
            |u, v| ((u - cu) / ru, (v - cv) / rv),
        );
    }

    /// A shape given row by row: `f(t)` returns (centre, half width) at
    /// t = 0 (top, v0) ..= 1 (bottom, v1). Capes, hats, blades, bottles.
    fn profile(&mut self, v0: f64, v1: f64, mat: u8, shade: Shade, f: impl Fn(f64) -> (f64, f64)) {
        let min = (0.5 + 1e-9) * self.fr.pu();
        let (cv, hv) = ((v0 + v1) / 2.0, half(v1 - v0, self.fr.bh));
        let at = |v: f64| {
            let t = if v1 > v0 {
                ((v - v0) / (v1 - v0)).clamp(0.0, 1.0)
            } else {
                0.5
            };
            let (c, hw) = f(t);
            (c, hw.max(min), t)
        };
        let mut reach = 0.0f64;
        for i in 0..=32 {
            let (c, hw) = f(f64::from(i) / 32.0);
            reach = reach.max(c.abs() + hw.max(min));
        }
        self.fill(
            [-reach, reach, cv - hv, cv + hv],
            mat,
            shade,
            |u, v| {
                let (c, hw, _) = at(v);
                (v - cv).abs() <= hv && (u - c).abs() <= hw
            },
            |u, v| {
                let (c, hw, t) = at(v);
                ((u - c) / hw, t * 2.0 - 1.0)
            },
        );
    }

    /// Two mirrored copies of a rect at ±u (|u| given as a..b).
    fn rect2(&mut self, a: f64, b: f64, v0: f64, v1: f64, mat: u8, shade: Shade) {
        self.rect(-b, -a, v0, v1, mat, shade);
        self.rect(a, b, v0, v1, mat, shade);
    }
}

// ---------------------------------------------------------------------------
// Characters
// ---------------------------------------------------------------------------

const SKINS: [Hsv; 5] = [
    hsv(28.0, 0.38, 0.98),
    hsv(24.0, 0.48, 0.86),
    hsv(22.0, 0.55, 0.66),
    hsv(20.0, 0.55, 0.48),
    hsv(30.0, 0.3, 0.98),
];
const HAIRS: [Hsv; 6] = [
    hsv(28.0, 0.7, 0.42),
    hsv(45.0, 0.65, 0.92),
    hsv(15.0, 0.8, 0.7),
    hsv(250.0, 0.2, 0.24),
    hsv(30.0, 0.45, 0.62),
    hsv(0.0, 0.0, 0.85),
];
const PANTS: [Hsv; 4] = [
    hsv(222.0, 0.45, 0.45),
    hsv(30.0, 0.5, 0.42),
    hsv(240.0, 0.1, 0.36),
    hsv(90.0, 0.35, 0.4),
];

fn humanoid(sc: &mut Scene, cx: &Ctx, rng: &mut Rng, role: Role) {
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

fn draw_hair(pen: &mut Pen, hair_m: u8, head_w: f64, style: usize) {
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

// ---------------------------------------------------------------------------
// Creatures
// ---------------------------------------------------------------------------

fn slime(sc: &mut Scene, cx: &Ctx, rng: &mut Rng) {
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

fn bat(sc: &mut Scene, cx: &Ctx, rng: &mut Rng) {
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

// ---------------------------------------------------------------------------
// Items
// ---------------------------------------------------------------------------

fn sword(sc: &mut Scene, cx: &Ctx, rng: &mut Rng) {
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

fn potion(sc: &mut Scene, cx: &Ctx, rng: &mut Rng) {
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

fn coin(sc: &mut Scene, cx: &Ctx, rng: &mut Rng) {
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

fn gem(sc: &mut Scene, cx: &Ctx, rng: &mut Rng) {
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

fn key(sc: &mut Scene, cx: &Ctx, rng: &mut Rng) {
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

fn chest(sc: &mut Scene, cx: &Ctx, rng: &mut Rng) {
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

fn heart(sc: &mut Scene, cx: &Ctx, rng: &mut Rng) {
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

fn skull(sc: &mut Scene, cx: &Ctx, rng: &mut Rng) {
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

fn tree(sc: &mut Scene, cx: &Ctx, rng: &mut Rng) {
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

fn rock(sc: &mut Scene, cx: &Ctx, rng: &mut Rng) {
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

// ---------------------------------------------------------------------------
// Tiles (fill the frame, wrap seamlessly)
// ---------------------------------------------------------------------------

/// Periodic noise: lattice counts divide the frame, so the pattern continues
/// across the right/bottom edge into the next copy of the tile.
struct Tiler {
    seed: u64,
    w: i32,
    h: i32,
}

impl Tiler {
    fn noise(&self, salt: u64, x: i32, y: i32, cells: i32) -> f64 {
        let nx = cells.clamp(1, self.w.max(1));
        let ny = round_i(f64::from(cells) * f64::from(self.h) / f64::from(self.w))
            .clamp(1, self.h.max(1));
        let gx = f64::from(x) * f64::from(nx) / f64::from(self.w);
        let gy = f64::from(y) * f64::from(ny) / f64::from(self.h);
        let (ix, iy) = (gx.floor() as i32, gy.floor() as i32);
        let (fx, fy) = (gx - f64::from(ix), gy - f64::from(iy));
        let (sx, sy) = (fx * fx * (3.0 - 2.0 * fx), fy * fy * (3.0 - 2.0 * fy));
        let at = |i: i32, j: i32| {
            unit(hash3(
                self.seed ^ salt,
                i.rem_euclid(nx) as u64,
                j.rem_euclid(ny) as u64,
            ))
        };
        let top = lerp(at(ix, iy), at(ix + 1, iy), sx);
        let bot = lerp(at(ix, iy + 1), at(ix + 1, iy + 1), sx);
        lerp(top, bot, sy)
    }

    fn white(&self, salt: u64, x: i32, y: i32) -> f64 {
        unit(hash3(
            self.seed ^ salt,
            x.rem_euclid(self.w) as u64,
            y.rem_euclid(self.h) as u64,
        ))
    }

    fn pick(&self, salt: u64, i: u64, n: i32) -> i32 {
        (hash3(self.seed ^ salt, i, 7) % n.max(1) as u64) as i32
    }
}

fn noise_shade(n: f64, lo: f64, hi: f64) -> i8 {
    if n < lo {
        -1
    } else if n > hi {
        1
    } else {
        0
    }
}

fn grass(sc: &mut Scene, cx: &Ctx, rng: &mut Rng) {
    let base_d = hsv(
        rng.range(95.0, 125.0),
        rng.range(0.55, 0.7),
        rng.range(0.58, 0.7),
    );
    let flower_d = [
        hsv(0.0, 0.0, 1.0),
        hsv(52.0, 0.8, 1.0),
        hsv(330.0, 0.5, 1.0),
    ][rng.below(3)];
    let flowers = (rng.chance(0.35) || cx.p.has(&["flower"])) && !cx.p.neg_has(&["flower"]);
    let t = Tiler {
        seed: rng.next_u64(),
        w: sc.w,
        h: sc.h,
    };
    sc.make_tile();
    let base = cx.st.color("grass", Some(0), base_d);
    sc.set_ink(base);
    let g = sc.material(base);
    let f = sc.flat(cx.st.color("flowers", Some(1), flower_d));
    let cells = (sc.w / 8).max(1);
    for y in 0..sc.h {
        for x in 0..sc.w {
            let n = 0.55 * t.noise(1, x, y, cells)
                + 0.3 * t.noise(7, x, y, cells * 2)
                + 0.15 * t.white(2, x, y);
            sc.set(x, y, g, noise_shade(n, 0.36, 0.66));
        }
    }
    // Tufts: a dark root with two lit blades whose tips sway with the wind.
    let sway = round_i(cx.anim.swave());
    let count = (sc.w * sc.h / 36).max(2);
    for i in 0..count as u64 {
        let (x, y) = (t.pick(3, i, sc.w), t.pick(4, i, sc.h));
        sc.set_wrap(x, y, g, -1);
        sc.set_wrap(x - 1, y - 1, g, 1);
        sc.set_wrap(x + 1, y - 1, g, 1);
        if i % 2 == 0 {
            sc.set_wrap(x + 1 + sway, y - 2, g, 1);
        } else {
            sc.set_wrap(x - 1 + sway, y - 2, g, 1);
        }
    }
    if flowers {
        let n = (sc.w * sc.h / 150).max(1);
        for i in 0..n as u64 {
            let (x, y) = (t.pick(5, i, sc.w), t.pick(6, i, sc.h));
            sc.set_wrap(x, y, f, 0);
        }
    }
}

fn dirt(sc: &mut Scene, cx: &Ctx, rng: &mut Rng) {
    let sand = cx.p.has(&["sand", "sandy", "desert", "beach"]);
    let base_d = if sand {
        hsv(
            rng.range(40.0, 48.0),
            rng.range(0.35, 0.45),
            rng.range(0.85, 0.92),
        )
    } else {
        hsv(
            rng.range(22.0, 32.0),
            rng.range(0.5, 0.65),
            rng.range(0.45, 0.58),
        )
    };
    let t = Tiler {
        seed: rng.next_u64(),
        w: sc.w,
        h: sc.h,
    };
    sc.make_tile();
    let base = cx.st.color("dirt", Some(0), base_d);
    sc.set_ink(base);
    let d = sc.material(base);
    let pebble = sc.material(hsv(base.h, base.s * 0.3, (base.v * 1.1).min(1.0)));
    let cells = (sc.w / 6).max(1);
    for y in 0..sc.h {
        for x in 0..sc.w {
            let n = 0.6 * t.noise(1, x, y, cells) + 0.4 * t.white(2, x, y);
            sc.set(x, y, d, noise_shade(n, 0.32, 0.72));
        }
    }
    let count = (sc.w * sc.h / 80).max(1);
    for i in 0..count as u64 {
        let (x, y) = (t.pick(3, i, sc.w), t.pick(4, i, sc.h));
        sc.set_wrap(x, y, pebble, 1);
        sc.set_wrap(x + 1, y, pebble, 0);
        sc.set_wrap(x, y + 1, d, -1);
        sc.set_wrap(x + 1, y + 1, d, -1);
    }
}

fn floor(sc: &mut Scene, cx: &Ctx, rng: &mut Rng) {
    let stone_d = hsv(
        rng.range(200.0, 240.0),
        rng.range(0.05, 0.14),
        rng.range(0.55, 0.66),
    );
    let t = Tiler {
        seed: rng.next_u64(),
        w: sc.w,
        h: sc.h,
    };
    sc.make_tile();
    let stone = cx.st.color("stone", Some(0), stone_d);
    sc.set_ink(stone);
    let a = sc.material(stone);
    let b = sc.material(hsv(stone.h, stone.s, stone.v * 0.88));
    let mortar = sc.flat(hsv(stone.h, stone.s, stone.v * 0.45));
    let n = if sc.w.min(sc.h) >= 48 { 4 } else { 2 };
    let (w, h) = (sc.w, sc.h);
    let col = |x: i32| x * n / w;
    let row = |y: i32| y * n / h;
    for y in 0..sc.h {
        for x in 0..sc.w {
            let (c, r) = (col(x), row(y));
            let edge_l = col(x - 1) != c || x == 0;
            let edge_t = row(y - 1) != r || y == 0;
            if edge_l || edge_t {
                sc.set(x, y, mortar, 0);
                continue;
            }
            let slab = if hash3(t.seed, c as u64, r as u64).is_multiple_of(2) {
                a
            } else {
                b
            };
            let right = x + 1 == w || col(x + 1) != c;
            let bottom = y + 1 == h || row(y + 1) != r;
            let top_row = row(y - 2) != r || y == 1;
            let left_col = col(x - 2) != c || x == 1;
            let s = if right || bottom {
                -1
            } else if top_row || left_col {
                1
            } else {
                noise_shade(t.white(3, x, y), 0.08, 0.96)
            };
            sc.set(x, y, slab, s);
        }
    }
}

fn wall(sc: &mut Scene, cx: &Ctx, rng: &mut Rng) {
    let stone_roll = rng.chance(0.4);
    let brick_d = hsv(
        rng.range(5.0, 20.0),
        rng.range(0.55, 0.7),
        rng.range(0.6, 0.72),
    );
    let grey_d = hsv(
        rng.range(200.0, 230.0),
        rng.range(0.05, 0.12),
        rng.range(0.58, 0.68),
    );
    let t = Tiler {
        seed: rng.next_u64(),
        w: sc.w,
        h: sc.h,
    };
    let p = cx.p;
    let stone = (stone_roll || p.has(&["stone", "castle", "dungeon"])) && !p.has(&["brick"]);
    sc.make_tile();
    let base = cx
        .st
        .color("brick", Some(0), if stone { grey_d } else { brick_d });
    sc.set_ink(base);
    let a = sc.material(base);
    let b = sc.material(hsv(shift_hue(base.h, 250.0, 6.0), base.s, base.v * 0.88));
    let mortar_d = if stone {
        hsv(base.h, base.s, base.v * 0.5)
    } else {
        hsv(40.0, 0.12, 0.78)
    };
    let mortar = sc.flat(cx.st.color("mortar", Some(1), mortar_d));

    // An even number of rows so the half-brick offset repeats vertically.
    let brick_h = (f64::from(sc.h) / 4.0).clamp(4.0, 8.0);
    let rows = ((round_i(f64::from(sc.h) / brick_h) / 2) * 2).max(2);
    let cols = round_i(f64::from(sc.w) / (2.0 * brick_h)).max(2);
    let bw = f64::from(sc.w) / f64::from(cols);
    let (w, h) = (sc.w, sc.h);
    let row_of = |y: i32| (y.rem_euclid(h) * rows) / h;
    for y in 0..h {
        let r = row_of(y);
        let offset = if r % 2 == 1 { bw / 2.0 } else { 0.0 };
        let brick_of = |x: i32| {
            ((f64::from(x.rem_euclid(w)) + f64::from(w) - offset) / bw).floor() as i32 % cols
        };
        for x in 0..w {
            let c = brick_of(x);
            if row_of(y - 1) != r || brick_of(x - 1) != c {
                sc.set(x, y, mortar, 0);
                continue;
            }
            let mat = if hash3(t.seed, r as u64, c as u64).is_multiple_of(3) {
                b
            } else {
                a
            };
            let s = if row_of(y + 1) != r || brick_of(x + 1) != c {
                -1
            } else if row_of(y - 2) != r {
                1
            } else {
                noise_shade(t.white(5, x, y), 0.1, 1.1)
            };
            sc.set(x, y, mat, s);
        }
    }
}

// ---------------------------------------------------------------------------
// Fallback: random mirrored-mask sprite
// ---------------------------------------------------------------------------

/// Dave Bollinger-style sprite: a random left half on a coarse grid, mirrored,
/// trimmed to its largest connected piece, with eyes, shading and outline.
fn creature(sc: &mut Scene, cx: &Ctx, rng: &mut Rng) {
    let hue = rng.range(0.0, 360.0);
    let body_d = hsv(hue, rng.range(0.45, 0.75), rng.range(0.65, 0.85));
    let second_d = hsv(
        (hue + rng.range(100.0, 260.0)).rem_euclid(360.0),
        rng.range(0.4, 0.7),
        rng.range(0.7, 0.9),
    );
    let mask_seed = rng.next_u64();
    let st = cx.st;
    let body = st.color("body", Some(0), body_d);
    sc.set_ink(body);
    let body_m = sc.material(body);
    let second_m = sc.material(st.color("spots", Some(1), second_d));
    let white_m = sc.flat(hsv(0.0, 0.0, 1.0));

    let (iw, ih) = ((sc.w - 2).max(1), (sc.h - 3).max(1));
    let k = (iw.min(ih) / 10).max(1);
    let centre = f64::from(sc.w) / 2.0;
    // Column index counted outwards from the mirror line, so it is symmetric.
    let col_of = |x: i32| ((f64::from(x) + 0.5 - centre).abs() / f64::from(k)).floor() as i32;
    let half_cols = col_of(1) + 1;
    let rows = (ih / k).max(1);
    let top = 1 + (ih - rows * k);

    let mut r = Rng::new(mask_seed);
    let (hc, nr) = (half_cols as usize, rows as usize);
    let mut mask = vec![0u8; hc * nr];
    for j in 0..nr {
        let rv = (j as f64 + 0.5) / nr as f64;
        for i in 0..hc {
            let cu = (i as f64 + 0.5) / hc as f64;
            let mut p = 0.75 - 0.7 * cu * cu;
            if !(0.1..=0.92).contains(&rv) {
                p -= 0.3;
            }
            if i == 0 && (0.2..=0.85).contains(&rv) {
                p = 0.95;
            }
            if r.chance(p) {
                mask[j * hc + i] = if r.chance(0.22) { 2 } else { 1 };
            }
        }
    }
    keep_largest(&mut mask, hc, nr);
    // Eyes: a row in the upper half where column 1 (or 0) is solid.
    let eye_col = usize::from(hc > 2);
    let eye_row = (nr / 5..=nr / 2)
        .find(|&j| mask[j * hc + eye_col] != 0 && (j == 0 || mask[(j - 1) * hc + eye_col] != 0));
    if let Some(j) = eye_row {
        mask[j * hc + eye_col] = 3;
    }

    // Idle: the body bobs a pixel during the second half of the cycle while the
    // outer columns (arms, wings, fins) wave up and down.
    let bob = i32::from(cx.anim.wave() < 0.0);
    let wave = round_i(cx.anim.swave());
    for y in 1..sc.h - 1 {
        for x in 1..sc.w - 1 {
            let i = col_of(x);
            if i >= half_cols {
                continue;
            }
            let outer = half_cols >= 4 && 2 * i >= half_cols;
            let dy = (bob + if outer { wave } else { 0 }).clamp(-1, 1);
            let j = (y - top - dy).div_euclid(k);
            if j < 0 || j >= rows {
                continue;
            }
            let cell = mask[j as usize * hc + i as usize];
            let (mat, shade) = match cell {
                0 => continue,
                1 => (body_m, 0),
                2 => (second_m, 0),
                _ => {
                    // Eye cell: white with a dark pupil when there is room.
                    let cxp = (f64::from(x) + 0.5 - centre).abs() / f64::from(k) - f64::from(i);
                    let cyp = f64::from(y - top - dy) / f64::from(k) - f64::from(j);
                    if k >= 3 && (cxp - 0.5).abs() < 0.3 && cyp > 0.3 {
                        (INK, 0)
                    } else if k >= 3 {
                        (white_m, 0)
                    } else {
                        (INK, 0)
                    }
                }
            };
            sc.set(x, y, mat, shade);
        }
    }
    // Rim light from the top-left over the finished silhouette.
    let snapshot: Vec<Cell> = sc.cells.clone();
    let (w, h) = (sc.w, sc.h);
    let filled = |x: i32, y: i32| {
        x >= 0 && y >= 0 && x < w && y < h && snapshot[(y * w + x) as usize].mat != EMPTY
    };
    let lower = top + bob + rows * k * 7 / 10;
    for y in 0..h {
        for x in 0..w {
            let c = snapshot[(y * w + x) as usize];
            if c.mat != body_m && c.mat != second_m {
                continue;
            }
            let lit = !filled(x - 1, y) || !filled(x, y - 1);
            let dark = !filled(x + 1, y) || !filled(x, y + 1) || y >= lower;
            sc.set(x, y, c.mat, i8::from(lit) - i8::from(dark));
        }
    }
}

/// Keeps only the largest 4-connected group of non-zero cells.
fn keep_largest(mask: &mut [u8], w: usize, h: usize) {
    let mut label = vec![0usize; mask.len()];
    let mut best = (0, 0);
    let mut next = 1;
    for start in 0..mask.len() {
        if mask[start] == 0 || label[start] != 0 {
            continue;
        }
        let mut stack = vec![start];
        label[start] = next;
        let mut size = 0;
        while let Some(c) = stack.pop() {
            size += 1;
            let (x, y) = (c % w, c / w);
            let mut push = |n: usize| {
                if mask[n] != 0 && label[n] == 0 {
                    label[n] = next;
                    stack.push(n);
                }
            };
            if x > 0 {
                push(c - 1);
            }
            if x + 1 < w {
                push(c + 1);
            }
            if y > 0 {
                push(c - w);
            }
            if y + 1 < h {
                push(c + w);
            }
        }
        if size > best.1 {
            best = (next, size);
        }
        next += 1;
    }
    for (m, l) in mask.iter_mut().zip(&label) {
        if *l != best.0 {
            *m = 0;
        }
    }
}

#[cfg(test)]
mod tests {
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
        let left_foot =
            |img: &RgbaImage| (0..16).filter(|&x| opaque(img, x, bottom_row(img))).count();
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
}
