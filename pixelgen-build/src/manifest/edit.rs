//! Editing `sprites.ron` as text, so that everything not edited — other entries,
//! comments, formatting — stays byte for byte as the user wrote it. The caller validates
//! the result (it is a new manifest) before writing it.

use std::ops::Range;

use crate::diagnostics::Locator;

/// What to do to one sprite's entry.
#[derive(Debug, Clone, PartialEq)]
pub enum SpriteChange {
    /// Set these fields (name, RON value text); the sprite is created when it is missing.
    Set(Vec<(String, String)>),
    /// Remove the sprite's entry.
    Remove,
}

/// `text` with the sprite `name` changed. Errors say what could not be found.
pub fn edit_sprite(text: &str, name: &str, change: &SpriteChange) -> Result<String, String> {
    let locator = Locator::new(text);
    let sprites_key = locator
        .field_after(0, "sprites")
        .ok_or("the manifest has no `sprites: { ... }` map")?;
    let sprites = locator.value_after(&sprites_key);
    let entry_key = locator
        .map_keys(name)
        .into_iter()
        .find(|k| sprites.start < k.start && k.end < sprites.end);
    let mut edits: Vec<(Range<usize>, String)> = Vec::new();
    match (change, entry_key) {
        (SpriteChange::Remove, None) => return Err(format!("no sprite `{name}` to remove")),
        (SpriteChange::Remove, Some(key)) => {
            let value = locator.value_after(&key);
            let mut end = value.end;
            let rest = &text[end..];
            let after_comma = rest.trim_start_matches([' ', '\t']);
            if let Some(stripped) = after_comma.strip_prefix(',') {
                end += rest.len() - stripped.len();
            }
            // The whole line when the entry had it to itself.
            let line_start = text[..key.start].rfind('\n').map_or(0, |i| i + 1);
            let (mut start, rest) = (key.start, &text[end..]);
            if text[line_start..key.start].trim().is_empty() {
                let trailing = rest.len() - rest.trim_start_matches([' ', '\t']).len();
                if rest[trailing..].starts_with('\n') {
                    start = line_start;
                    end += trailing + 1;
                }
            }
            edits.push((start..end, String::new()));
        }
        (SpriteChange::Set(fields), Some(key)) => {
            let value = locator.value_after(&key);
            if !text[value.clone()].starts_with('(') || !text[value.clone()].ends_with(')') {
                return Err(format!("sprite `{name}` is not written as `( ... )`"));
            }
            let mut missing = Vec::new();
            for (field, new_value) in fields {
                match locator
                    .field_after(value.start, field)
                    .filter(|f| f.start < value.end)
                {
                    Some(f) => edits.push((locator.value_after(&f), new_value.clone())),
                    None => missing.push(format!("{field}: {new_value}")),
                }
            }
            if !missing.is_empty() {
                // Before the closing parenthesis, after what is there (and its comma).
                let close = value.end - 1;
                let inside = &text[value.start + 1..close];
                let content_end = value.start + 1 + inside.trim_end().len();
                let last = text[..content_end].chars().last();
                let insertion = if inside.contains('\n') {
                    // One field a line, indented like the last one, with trailing commas.
                    let indent = inside
                        .lines()
                        .rev()
                        .find(|l| !l.trim().is_empty())
                        .map_or(12, |l| l.len() - l.trim_start().len());
                    let comma = if matches!(last, Some('(' | ',')) {
                        ""
                    } else {
                        ","
                    };
                    let lines: Vec<String> = missing
                        .iter()
                        .map(|m| format!("\n{}{m},", " ".repeat(indent)))
                        .collect();
                    format!("{comma}{}", lines.concat())
                } else {
                    let separator = match last {
                        Some('(') => "",
                        Some(',') => " ",
                        _ => ", ",
                    };
                    format!("{separator}{}", missing.join(", "))
                };
                edits.push((content_end..content_end, insertion));
            }
        }
        (SpriteChange::Set(fields), None) => {
            let close = sprites.end - 1;
            let inside = &text[sprites.start + 1..close];
            let content_end = sprites.start + 1 + inside.trim_end().len();
            // Indented like the entry before it, on a line of its own.
            let indent = inside
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(|l| l.len() - l.trim_start().len())
                .unwrap_or(4);
            let comma = match text[..content_end].chars().last() {
                Some('{') | Some(',') => "",
                _ => ",",
            };
            let body: Vec<String> = fields.iter().map(|(f, v)| format!("{f}: {v}")).collect();
            edits.push((
                content_end..content_end,
                format!(
                    "{comma}\n{}{:?}: ({}),",
                    " ".repeat(indent),
                    name,
                    body.join(", ")
                ),
            ));
        }
    }
    edits.sort_by_key(|(range, _)| std::cmp::Reverse(range.start));
    let mut out = text.to_owned();
    for (range, replacement) in edits {
        out.replace_range(range, &replacement);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"(
    // The hero's look is final.
    defaults: (size: (16, 16)),
    sprites: {
        "hero": (prompt: "knight", seed: 1), // keep
        /* potions */
        "potion": (
            prompt: "red potion",
            seed: 2,
        ),
    },
)
"#;

    fn set(fields: &[(&str, &str)]) -> SpriteChange {
        SpriteChange::Set(
            fields
                .iter()
                .map(|(f, v)| (f.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn a_field_is_replaced_in_place_and_everything_else_stays() {
        let out = edit_sprite(TEXT, "hero", &set(&[("prompt", "\"paladin\"")])).unwrap();
        assert_eq!(out, TEXT.replace("\"knight\"", "\"paladin\""));
    }

    #[test]
    fn a_missing_field_is_added_to_the_entry() {
        let out = edit_sprite(TEXT, "hero", &set(&[("frames", "4"), ("seed", "9")])).unwrap();
        assert_eq!(
            out,
            TEXT.replace(
                r#"(prompt: "knight", seed: 1)"#,
                r#"(prompt: "knight", seed: 9, frames: 4)"#
            )
        );
        let out = edit_sprite(TEXT, "potion", &set(&[("frames", "2")])).unwrap();
        assert!(
            out.contains("seed: 2,\n            frames: 2,\n        ),"),
            "{out}"
        );
    }

    #[test]
    fn a_new_sprite_goes_last_and_a_removed_one_leaves_no_trace() {
        let out = edit_sprite(
            TEXT,
            "coin",
            &set(&[("prompt", "\"gold coin\""), ("seed", "3")]),
        )
        .unwrap();
        assert!(
            out.contains("        ),\n        \"coin\": (prompt: \"gold coin\", seed: 3),\n    },"),
            "{out}"
        );
        let removed = edit_sprite(&out, "coin", &SpriteChange::Remove).unwrap();
        assert_eq!(removed, TEXT);
        let removed = edit_sprite(TEXT, "hero", &SpriteChange::Remove).unwrap();
        assert!(
            !removed.contains("knight") && removed.contains("/* potions */"),
            "{removed}"
        );
        assert!(edit_sprite(TEXT, "ghost", &SpriteChange::Remove).is_err());
    }
}
