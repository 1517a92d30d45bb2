//! Prompt parsing: words to a shape family, colours bound to parts, and the style a
//! seed picks.

use super::*;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Role {
    Knight,
    Mage,
    Person,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Family {
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
    pub(super) fn salt(self) -> u64 {
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

pub(super) const FAMILY_WORDS: &[(&str, Family)] = &[
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
pub(super) const COLOUR_WORDS: &[(&str, Hsv)] = &[
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
pub(super) const PART_WORDS: &[(&str, &str)] = &[
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
pub(super) const STOP_WORDS: &[&str] = &[
    "with", "of", "in", "on", "holding", "wearing", "carrying", "and", "at", "under", "near",
    "beside", "behind", "by", "from", "for", "riding", "using", "without", "has", "having",
];

/// Word stem match: the word is the stem plus an English-ish suffix, so "bats"
/// and "golden" match but "battle" and "mana" do not.
pub(super) fn stem_match(word: &str, stem: &str) -> bool {
    word.strip_prefix(stem).is_some_and(|rest| {
        matches!(
            rest,
            "" | "s" | "es" | "d" | "ed" | "en" | "y" | "ish" | "ies" | "ie"
        )
    })
}

pub(super) fn lookup<T: Copy>(table: &[(&str, T)], word: &str) -> Option<T> {
    // Exact matches first so "dark" beats a stem of another entry.
    table
        .iter()
        .find(|(stem, _)| *stem == word)
        .or_else(|| table.iter().find(|(stem, _)| stem_match(word, stem)))
        .map(|&(_, v)| v)
}

pub(super) struct Prompt {
    pub(super) words: Vec<String>,
    pub(super) neg: Vec<String>,
}

pub(super) fn words_of(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

impl Prompt {
    pub(super) fn parse(prompt: &str, negative: &str) -> Self {
        Prompt {
            words: words_of(prompt),
            neg: words_of(negative),
        }
    }

    pub(super) fn has(&self, stems: &[&str]) -> bool {
        self.words
            .iter()
            .any(|w| stems.iter().any(|s| stem_match(w, s)))
    }

    pub(super) fn neg_has(&self, stems: &[&str]) -> bool {
        self.neg
            .iter()
            .any(|w| stems.iter().any(|s| stem_match(w, s)))
    }

    /// Wanted: said in the prompt and not in the negative prompt.
    pub(super) fn wants(&self, stems: &[&str]) -> bool {
        self.has(stems) && !self.neg_has(stems)
    }

    /// The head noun decides: the last family word of the first noun phrase
    /// ("stone wall" is a wall, "knight with a sword" a knight), else the first
    /// family word anywhere, else the random creature.
    pub(super) fn family(&self) -> Family {
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
pub(super) struct Style {
    /// Colours bound to a named part ("red cape").
    pub(super) bound: Vec<(&'static str, Hsv)>,
    /// Other colours in prompt order; families give them to their main parts.
    pub(super) free: Vec<Hsv>,
    /// Colours named in the negative prompt.
    pub(super) avoid: Vec<Hsv>,
}

impl Style {
    pub(super) fn parse(p: &Prompt) -> Self {
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
    pub(super) fn color(&self, part: &str, slot: Option<usize>, default: Hsv) -> Hsv {
        if let Some(&(_, c)) = self.bound.iter().find(|(p, _)| *p == part) {
            return c;
        }
        if let Some(c) = slot.and_then(|i| self.free.get(i)) {
            return *c;
        }
        self.avoided(default)
    }

    pub(super) fn explicit(&self, part: &str, slot: Option<usize>) -> bool {
        self.bound.iter().any(|(p, _)| *p == part) || slot.is_some_and(|i| i < self.free.len())
    }

    pub(super) fn clashes(&self, c: Hsv) -> bool {
        self.avoid.iter().any(|n| {
            if n.s >= 0.25 {
                c.s >= 0.2 && hue_dist(c.h, n.h) < 35.0 && (c.v - n.v).abs() < 0.35
            } else {
                c.s < 0.25 && (c.v - n.v).abs() < 0.25
            }
        })
    }

    pub(super) fn avoided(&self, mut c: Hsv) -> Hsv {
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

pub(super) struct Ctx<'a> {
    pub(super) p: &'a Prompt,
    pub(super) st: &'a Style,
    pub(super) anim: Anim,
}
