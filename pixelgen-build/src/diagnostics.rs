//! Errors that point at a place in a file: the file, the line and column, the source
//! line underlined, and a hint that says what to do. Rendered like rustc's.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use annotate_snippets::{AnnotationKind, Group, Level, Renderer, Snippet};

/// A source file kept in memory so that errors can quote it.
#[derive(Clone)]
pub struct SourceFile {
    path: PathBuf,
    text: Arc<str>,
}

impl SourceFile {
    pub fn new(path: impl Into<PathBuf>, text: impl Into<Arc<str>>) -> Self {
        SourceFile {
            path: path.into(),
            text: text.into(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// Byte offset of a 1-based (line, column) position, clamped into the text.
    /// Columns count characters, as ron reports them.
    pub fn offset_of(&self, line: usize, column: usize) -> usize {
        let mut offset = 0;
        for (index, text_line) in self.text.split_inclusive('\n').enumerate() {
            if index + 1 == line {
                let within = text_line
                    .char_indices()
                    .nth(column.saturating_sub(1))
                    .map_or(text_line.trim_end_matches('\n').len(), |(i, _)| i);
                return offset + within;
            }
            offset += text_line.len();
        }
        self.text.len()
    }

    /// 1-based (line, column) of a byte offset.
    pub fn line_column(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..floor_char_boundary(&self.text, offset)];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        (line, column)
    }
}

fn floor_char_boundary(text: &str, mut offset: usize) -> usize {
    while offset > 0 && !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

impl fmt::Debug for SourceFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceFile")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// One error at one place in a file.
#[derive(Debug, Clone)]
pub struct Diagnostic {
    pub source: SourceFile,
    /// Byte range of what is wrong.
    pub span: Range<usize>,
    /// What is wrong, in one line.
    pub message: String,
    /// Short text under the underline.
    pub label: String,
    /// What to do about it.
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn new(source: &SourceFile, span: Range<usize>, message: impl Into<String>) -> Self {
        Diagnostic {
            source: source.clone(),
            span,
            message: message.into(),
            label: String::new(),
            help: None,
        }
    }

    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = label.into();
        self
    }

    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// 1-based line and column where the error starts.
    pub fn line_column(&self) -> (usize, usize) {
        self.source.line_column(self.span.start)
    }

    fn clamped_span(&self) -> Range<usize> {
        let text = self.source.text();
        let start = floor_char_boundary(text, self.span.start.min(text.len()));
        let mut end = floor_char_boundary(text, self.span.end.min(text.len())).max(start);
        if end == start && end < text.len() {
            // An empty span would underline nothing: cover one character.
            end = start + text[start..].chars().next().map_or(0, char::len_utf8);
        }
        start..end
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.source.path().display().to_string();
        let mut report = vec![
            Level::ERROR.primary_title(self.message.as_str()).element(
                Snippet::source(self.source.text())
                    .path(path.as_str())
                    .fold(true)
                    .annotation(
                        AnnotationKind::Primary
                            .span(self.clamped_span())
                            .label(self.label.as_str()),
                    ),
            ),
        ];
        if let Some(help) = &self.help {
            report.push(Group::with_title(
                Level::HELP.secondary_title(help.as_str()),
            ));
        }
        f.write_str(&Renderer::plain().render(&report))
    }
}

/// Finds where things are in RON text, for errors found after parsing (serde gives no
/// spans for values). A lexical search that skips comments and string contents is
/// enough for the shapes a manifest has.
pub(crate) struct Locator<'a> {
    text: &'a str,
    /// Tokenised once: a manifest with thousands of sprites asks for thousands of spans.
    tokens: Vec<Token>,
    /// Token positions of every map key (`"key":`), by key text.
    keys: std::collections::HashMap<&'a str, Vec<usize>>,
}

impl<'a> Locator<'a> {
    pub fn new(text: &'a str) -> Self {
        let tokens = tokenize(text);
        let mut keys: std::collections::HashMap<&'a str, Vec<usize>> =
            std::collections::HashMap::new();
        for (i, t) in tokens.iter().enumerate() {
            if t.kind == TokenKind::Str
                && tokens
                    .get(i + 1)
                    .is_some_and(|n| n.kind == TokenKind::Colon)
            {
                keys.entry(&text[t.range.start + 1..t.range.end - 1])
                    .or_default()
                    .push(i);
            }
        }
        Locator { text, tokens, keys }
    }

    /// Byte ranges of every string literal `"value"` (quotes included), in order.
    pub fn string_literals(&self, value: &str) -> Vec<Range<usize>> {
        self.tokens
            .iter()
            .filter(|t| {
                t.kind == TokenKind::Str && &self.text[t.range.start + 1..t.range.end - 1] == value
            })
            .map(|t| t.range.clone())
            .collect()
    }

    /// Byte ranges of every map key `"key":` (the string literal, quotes included).
    pub fn map_keys(&self, key: &str) -> Vec<Range<usize>> {
        self.keys
            .get(key)
            .map(|positions| {
                positions
                    .iter()
                    .map(|&i| self.tokens[i].range.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Index of the first token at or after byte `from`.
    fn first_token_at(&self, from: usize) -> usize {
        self.tokens.partition_point(|t| t.range.start < from)
    }

    /// The first `field:` (an identifier followed by a colon) at or after `from`,
    /// at the same nesting depth as the first token after `from`'s opening bracket.
    pub fn field_after(&self, from: usize, field: &str) -> Option<Range<usize>> {
        let tokens = &self.tokens;
        let mut depth: i32 = 0;
        let mut entered = false;
        for i in self.first_token_at(from)..tokens.len() {
            let t = &tokens[i];
            match t.kind {
                TokenKind::Open => {
                    depth += 1;
                    entered = true;
                }
                TokenKind::Close => {
                    depth -= 1;
                    if entered && depth <= 0 {
                        return None;
                    }
                }
                TokenKind::Ident
                    if depth == 1
                        && &self.text[t.range.clone()] == field
                        && tokens
                            .get(i + 1)
                            .is_some_and(|n| n.kind == TokenKind::Colon) =>
                {
                    return Some(t.range.clone());
                }
                _ => {}
            }
        }
        None
    }

    /// The range of the value that starts right after `key_range` and its colon: up to
    /// the comma or closing bracket that ends it.
    pub fn value_after(&self, key_range: &Range<usize>) -> Range<usize> {
        let mut iter = self.tokens[self.first_token_at(key_range.end)..].iter();
        if iter.next().is_none_or(|t| t.kind != TokenKind::Colon) {
            return key_range.clone();
        }
        let mut depth = 0;
        let mut start = None;
        let mut end = key_range.end;
        for t in iter {
            match t.kind {
                TokenKind::Open => depth += 1,
                TokenKind::Close if depth == 0 => break,
                TokenKind::Close => depth -= 1,
                TokenKind::Comma if depth == 0 => break,
                _ => {}
            }
            start.get_or_insert(t.range.start);
            end = t.range.end;
        }
        start.unwrap_or(key_range.start)..end
    }
}

fn tokenize(text: &str) -> Vec<Token> {
    let bytes = text.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < bytes.len() && !(bytes[i] == b'*' && bytes[i + 1] == b'/') {
                    i += 1;
                }
                i += 2;
            }
            b'"' => {
                let start = i;
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    if bytes[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i = (i + 1).min(bytes.len());
                tokens.push(Token {
                    kind: TokenKind::Str,
                    range: start..i,
                });
            }
            b'(' | b'[' | b'{' => {
                tokens.push(Token::single(TokenKind::Open, i));
                i += 1;
            }
            b')' | b']' | b'}' => {
                tokens.push(Token::single(TokenKind::Close, i));
                i += 1;
            }
            b':' => {
                tokens.push(Token::single(TokenKind::Colon, i));
                i += 1;
            }
            b',' => {
                tokens.push(Token::single(TokenKind::Comma, i));
                i += 1;
            }
            c if c.is_ascii_alphanumeric() || c == b'_' || c == b'-' || c == b'.' => {
                let start = i;
                while i < bytes.len()
                    && (bytes[i].is_ascii_alphanumeric()
                        || matches!(bytes[i], b'_' | b'-' | b'.' | b'+'))
                {
                    i += 1;
                }
                tokens.push(Token {
                    kind: TokenKind::Ident,
                    range: start..i,
                });
            }
            _ => i += 1,
        }
    }
    tokens
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenKind {
    Str,
    Ident,
    Open,
    Close,
    Colon,
    Comma,
}

#[derive(Debug, Clone)]
struct Token {
    kind: TokenKind,
    range: Range<usize>,
}

impl Token {
    fn single(kind: TokenKind, at: usize) -> Self {
        Token {
            kind,
            range: at..at + 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "(\n  sprites: {\n    // \"hero\": old\n    \"hero\": (prompt: \"a hero\", seed: 4),\n    \"bat\": (prompt: \"hero\"),\n  },\n)\n";

    #[test]
    fn line_column_round_trip() {
        let source = SourceFile::new("sprites.ron", TEXT);
        let offset = TEXT.find("seed").unwrap();
        let (line, column) = source.line_column(offset);
        assert_eq!((line, column), (4, 32));
        assert_eq!(source.offset_of(line, column), offset);
    }

    #[test]
    fn finds_map_keys_not_values_or_comments() {
        let locator = Locator::new(TEXT);
        let keys = locator.map_keys("hero");
        assert_eq!(keys.len(), 1);
        assert_eq!(&TEXT[keys[0].clone()], "\"hero\"");
        assert_eq!(SourceFile::new("x", TEXT).line_column(keys[0].start).0, 4);
        assert_eq!(locator.string_literals("hero").len(), 2);
    }

    #[test]
    fn finds_fields_and_values_inside_an_entry() {
        let locator = Locator::new(TEXT);
        let key = locator.map_keys("hero").remove(0);
        let seed = locator.field_after(key.end, "seed").unwrap();
        assert_eq!(&TEXT[locator.value_after(&seed)], "4");
        assert!(locator.field_after(key.end, "frames").is_none());
        let bat = locator.map_keys("bat").remove(0);
        assert_eq!(&TEXT[locator.value_after(&bat)], "(prompt: \"hero\")");
    }

    #[test]
    fn renders_file_line_column_and_help() {
        let source = SourceFile::new("game/sprites.ron", TEXT);
        let span = TEXT.find("seed: 4").unwrap() + 6..TEXT.find("seed: 4").unwrap() + 7;
        let text = Diagnostic::new(&source, span, "seed is unlucky")
            .label("this one")
            .help("pick another seed")
            .to_string();
        assert!(text.contains("game/sprites.ron:4:38"), "{text}");
        assert!(
            text.contains("\"hero\": (prompt: \"a hero\", seed: 4)"),
            "{text}"
        );
        assert!(text.contains("^ this one"), "{text}");
        assert!(text.contains("help: pick another seed"), "{text}");
    }
}
