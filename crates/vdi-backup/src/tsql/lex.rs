//! The T-SQL lexer: words, quoted identifiers (`[x]`, `"x"`), strings (`'x'`, `N'x'`,
//! with `''` for a quote), numbers, punctuation; `--` and `/* */` comments (nested, as
//! SQL Server nests them) are skipped. Every token carries its line and column (1-based,
//! counted in characters). Never panics, whatever the input.

use std::fmt;

/// A position in a batch: line and column, from 1.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pos {
    /// The line, from 1.
    pub line: u32,
    /// The column (in characters), from 1.
    pub col: u32,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}", self.line, self.col)
    }
}

/// What a token is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tok {
    /// A word: a keyword or an unquoted identifier (`@var` included), as written.
    Word(String),
    /// A quoted identifier: `[x]` or `"x"`, its content.
    Quoted(String),
    /// A string literal: `'x'` or `N'x'`, its content.
    Str(String),
    /// A number literal, as written (digits, perhaps with a decimal point).
    Num(String),
    /// One punctuation character: `,` `=` `;` `(` `)` `.` and anything else.
    Punct(char),
}

impl Tok {
    /// How an error message shows the token (`Incorrect syntax near 'X'`).
    pub fn shown(&self) -> String {
        match self {
            Tok::Word(w) => w.clone(),
            Tok::Quoted(q) => q.clone(),
            Tok::Str(s) => s.clone(),
            Tok::Num(n) => n.clone(),
            Tok::Punct(c) => c.to_string(),
        }
    }

    /// Whether this is the keyword `kw` (case-insensitive).
    pub fn is_kw(&self, kw: &str) -> bool {
        matches!(self, Tok::Word(w) if w.eq_ignore_ascii_case(kw))
    }
}

/// A token and where it starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token {
    /// What it is.
    pub tok: Tok,
    /// Where it starts.
    pub pos: Pos,
}

/// A lexical error: an unclosed string, identifier or comment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LexError {
    /// Where the unclosed thing starts.
    pub pos: Pos,
    /// What is wrong, in words.
    pub what: String,
}

struct Cursor<'a> {
    chars: std::iter::Peekable<std::str::Chars<'a>>,
    pos: Pos,
}

impl Cursor<'_> {
    fn peek(&mut self) -> Option<char> {
        self.chars.peek().copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.chars.next()?;
        if c == '\n' {
            self.pos.line = self.pos.line.saturating_add(1);
            self.pos.col = 1;
        } else {
            self.pos.col = self.pos.col.saturating_add(1);
        }
        Some(c)
    }

    /// Reads up to the closing `close` (a doubled `close` stands for one).
    fn quoted(&mut self, close: char, start: Pos, what: &str) -> Result<String, LexError> {
        let mut s = String::new();
        loop {
            match self.bump() {
                None => {
                    return Err(LexError {
                        pos: start,
                        what: format!("unclosed {what} (no closing {close})"),
                    });
                }
                Some(c) if c == close => {
                    if self.peek() == Some(close) {
                        self.bump();
                        s.push(close);
                    } else {
                        return Ok(s);
                    }
                }
                Some(c) => s.push(c),
            }
        }
    }
}

fn is_word_start(c: char) -> bool {
    c.is_alphabetic() || c == '_' || c == '@' || c == '#'
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '@' | '#' | '$')
}

/// Splits `text` into tokens (positions from `line 1, column 1`).
pub fn lex(text: &str) -> Result<Vec<Token>, LexError> {
    let mut c = Cursor {
        chars: text.chars().peekable(),
        pos: Pos { line: 1, col: 1 },
    };
    let mut out = Vec::new();
    while let Some(ch) = c.peek() {
        let pos = c.pos;
        if ch.is_whitespace() {
            c.bump();
        } else if ch == '-' && {
            let mut ahead = c.chars.clone();
            ahead.next();
            ahead.next() == Some('-')
        } {
            while let Some(x) = c.peek() {
                if x == '\n' {
                    break;
                }
                c.bump();
            }
        } else if ch == '/' && {
            let mut ahead = c.chars.clone();
            ahead.next();
            ahead.next() == Some('*')
        } {
            c.bump();
            c.bump();
            let mut depth = 1u32;
            loop {
                match c.bump() {
                    None => {
                        return Err(LexError {
                            pos,
                            what: "unclosed comment (no closing */)".into(),
                        });
                    }
                    Some('*') if c.peek() == Some('/') => {
                        c.bump();
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    Some('/') if c.peek() == Some('*') => {
                        c.bump();
                        depth = depth.saturating_add(1);
                    }
                    Some(_) => {}
                }
            }
        } else if ch == '\'' {
            c.bump();
            out.push(Token {
                tok: Tok::Str(c.quoted('\'', pos, "string")?),
                pos,
            });
        } else if (ch == 'N' || ch == 'n') && {
            let mut ahead = c.chars.clone();
            ahead.next();
            ahead.next() == Some('\'')
        } {
            c.bump();
            c.bump();
            out.push(Token {
                tok: Tok::Str(c.quoted('\'', pos, "string")?),
                pos,
            });
        } else if ch == '[' {
            c.bump();
            out.push(Token {
                tok: Tok::Quoted(c.quoted(']', pos, "identifier")?),
                pos,
            });
        } else if ch == '"' {
            c.bump();
            out.push(Token {
                tok: Tok::Quoted(c.quoted('"', pos, "identifier")?),
                pos,
            });
        } else if ch.is_ascii_digit() {
            let mut s = String::new();
            while let Some(x) = c.peek() {
                if x.is_ascii_digit() || x == '.' {
                    s.push(x);
                    c.bump();
                } else {
                    break;
                }
            }
            out.push(Token {
                tok: Tok::Num(s),
                pos,
            });
        } else if is_word_start(ch) {
            let mut s = String::new();
            while let Some(x) = c.peek() {
                if is_word_char(x) {
                    s.push(x);
                    c.bump();
                } else {
                    break;
                }
            }
            out.push(Token {
                tok: Tok::Word(s),
                pos,
            });
        } else {
            c.bump();
            out.push(Token {
                tok: Tok::Punct(ch),
                pos,
            });
        }
    }
    Ok(out)
}

/// A batch of a script: its text and the line of the script it starts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// The batch's text (without its `GO` line).
    pub text: String,
    /// The script line of the batch's first line (from 1).
    pub first_line: u32,
    /// How many times `GO N` asks to run it (1 for a plain `GO` or none).
    pub repeat: u32,
}

/// Splits a script at its `GO` lines (a line holding only `GO`, or `GO N`, in any case),
/// as sqlcmd does; a `GO` inside a multi-line comment or string is not a separator.
pub fn batches(script: &str) -> Vec<Batch> {
    let mut out = Vec::new();
    let mut text = String::new();
    let mut first_line = 1u32;
    let mut in_comment = 0u32;
    let mut in_string = false;
    for (i, line) in script.split_inclusive('\n').enumerate() {
        let n = u32::try_from(i + 1).unwrap_or(u32::MAX);
        let t = line.trim();
        let go = if in_comment == 0 && !in_string {
            let mut w = t.split_whitespace();
            match (w.next(), w.next(), w.next()) {
                (Some(g), None, None) if g.eq_ignore_ascii_case("go") => Some(1),
                (Some(g), Some(k), None) if g.eq_ignore_ascii_case("go") => {
                    k.parse::<u32>().ok().filter(|&k| k >= 1)
                }
                _ => None,
            }
        } else {
            None
        };
        if let Some(repeat) = go {
            out.push(Batch {
                text: std::mem::take(&mut text),
                first_line,
                repeat,
            });
            first_line = n.saturating_add(1);
            continue;
        }
        track(line, &mut in_comment, &mut in_string);
        text.push_str(line);
    }
    if !text.trim().is_empty() {
        out.push(Batch {
            text,
            first_line,
            repeat: 1,
        });
    }
    out.retain(|b| !b.text.trim().is_empty());
    out
}

/// Follows block comments and strings over one line (for [`batches`]).
fn track(line: &str, in_comment: &mut u32, in_string: &mut bool) {
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if *in_string {
            if c == '\'' {
                if chars.peek() == Some(&'\'') {
                    chars.next();
                } else {
                    *in_string = false;
                }
            }
        } else if *in_comment > 0 {
            if c == '*' && chars.peek() == Some(&'/') {
                chars.next();
                *in_comment -= 1;
            } else if c == '/' && chars.peek() == Some(&'*') {
                chars.next();
                *in_comment = in_comment.saturating_add(1);
            }
        } else if c == '-' && chars.peek() == Some(&'-') {
            return;
        } else if c == '/' && chars.peek() == Some(&'*') {
            chars.next();
            *in_comment = 1;
        } else if c == '\'' {
            *in_string = true;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn toks(s: &str) -> Vec<Tok> {
        lex(s).unwrap().into_iter().map(|t| t.tok).collect()
    }

    #[test]
    fn words_strings_identifiers_numbers() {
        assert_eq!(
            toks("BACKUP [my db] TO N'it''s', \"x y\" = 65536;"),
            vec![
                Tok::Word("BACKUP".into()),
                Tok::Quoted("my db".into()),
                Tok::Word("TO".into()),
                Tok::Str("it's".into()),
                Tok::Punct(','),
                Tok::Quoted("x y".into()),
                Tok::Punct('='),
                Tok::Num("65536".into()),
                Tok::Punct(';'),
            ]
        );
    }

    #[test]
    fn comments_are_skipped_and_positions_counted() {
        let t = lex("-- a comment\n  /* one /* nested */ still */ BACKUP\n\tx").unwrap();
        assert_eq!(t[0].tok, Tok::Word("BACKUP".into()));
        assert_eq!(t[0].pos, Pos { line: 2, col: 32 });
        assert_eq!(t[1].pos, Pos { line: 3, col: 2 });
        assert_eq!(toks("a-b"), toks("a - b"));
    }

    #[test]
    fn unclosed_things_say_where_they_start() {
        let e = lex("x\n  'abc").unwrap_err();
        assert_eq!(e.pos, Pos { line: 2, col: 3 });
        assert!(e.what.contains("unclosed string"));
        assert!(lex("[abc").unwrap_err().what.contains("identifier"));
        assert!(lex("/* /* */").unwrap_err().what.contains("comment"));
    }

    #[test]
    fn go_splits_batches_but_not_inside_comments_or_strings() {
        let b = batches("select 1\ngo\n\nBACKUP x\nGO 2\n/*\nGO\n*/ y\n'a\nGO\n'\n");
        assert_eq!(b.len(), 3);
        assert_eq!(b[0].first_line, 1);
        assert_eq!(b[1].first_line, 3);
        assert_eq!(b[1].repeat, 2);
        assert!(b[2].text.contains("GO"));
        assert_eq!(b[2].first_line, 6);
        assert!(batches("\n GO \n go\n").is_empty());
    }
}
