//! The T-SQL parser: the `BACKUP` and `RESTORE` statements VDI clients send, over the
//! tokens of [`super::lex`]. It builds the statement's shape only; what each option
//! means (and which are refused) is [`super::plan`]'s.
//!
//! ```text
//! BACKUP { DATABASE | LOG } name TO device [, device ...] [ WITH option [, option ...] ]
//! RESTORE { DATABASE | LOG } name FROM device [, ...] [ WITH option [, ...] ]
//! RESTORE { HEADERONLY | FILELISTONLY | VERIFYONLY | LABELONLY } [name] FROM device [, ...] [ WITH ... ]
//! device  ::= { VIRTUAL_DEVICE | DISK | TAPE | URL } = { 'string' | N'string' | identifier }
//! option  ::= NAME [ = value ]        value ::= number | 'string' | identifier
//! ```
//! Statements are separated by `;` or simply follow one another.

use super::lex::{Pos, Tok, Token};

/// `BACKUP DATABASE` or `BACKUP LOG`; `RESTORE` and what it restores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    /// `BACKUP DATABASE`.
    BackupDatabase,
    /// `BACKUP LOG`.
    BackupLog,
    /// `RESTORE DATABASE`.
    RestoreDatabase,
    /// `RESTORE LOG`.
    RestoreLog,
    /// `RESTORE HEADERONLY`.
    HeaderOnly,
    /// `RESTORE FILELISTONLY`.
    FileListOnly,
    /// `RESTORE VERIFYONLY`.
    VerifyOnly,
    /// `RESTORE LABELONLY`.
    LabelOnly,
}

impl Verb {
    /// The statement's words, as SQL Server's messages name it (`BACKUP DATABASE`).
    pub fn words(self) -> &'static str {
        match self {
            Verb::BackupDatabase => "BACKUP DATABASE",
            Verb::BackupLog => "BACKUP LOG",
            Verb::RestoreDatabase => "RESTORE DATABASE",
            Verb::RestoreLog => "RESTORE LOG",
            Verb::HeaderOnly => "RESTORE HEADERONLY",
            Verb::FileListOnly => "RESTORE FILELISTONLY",
            Verb::VerifyOnly => "RESTORE VERIFYONLY",
            Verb::LabelOnly => "RESTORE LABELONLY",
        }
    }

    /// Whether it is a BACKUP.
    pub fn is_backup(self) -> bool {
        matches!(self, Verb::BackupDatabase | Verb::BackupLog)
    }
}

/// One `TO`/`FROM` device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    /// `VIRTUAL_DEVICE`, `DISK`, `TAPE`, `URL` (upper case), as written.
    pub kind: String,
    /// Its name.
    pub name: String,
    /// Where it is written.
    pub pos: Pos,
}

/// An option's value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// A number, as written.
    Num(String),
    /// A string.
    Str(String),
    /// A word or quoted identifier.
    Ident(String),
}

impl Value {
    /// The value as written, for messages.
    pub fn shown(&self) -> &str {
        match self {
            Value::Num(s) | Value::Str(s) | Value::Ident(s) => s,
        }
    }
}

/// One `WITH` option.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opt {
    /// Its name, upper case.
    pub name: String,
    /// Its value, if it has `= value`.
    pub value: Option<Value>,
    /// Where it is written.
    pub pos: Pos,
}

/// A parsed statement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Statement {
    /// What it does.
    pub verb: Verb,
    /// The database it names (none for `RESTORE HEADERONLY FROM ...`).
    pub database: Option<String>,
    /// Its devices, in order.
    pub devices: Vec<Device>,
    /// Its options, in order.
    pub options: Vec<Opt>,
    /// Where it starts.
    pub pos: Pos,
}

/// A syntax error: where, what was found, what was expected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntaxError {
    /// Where.
    pub pos: Pos,
    /// The token found there (`None`: the end of the batch).
    pub near: Option<String>,
    /// What was expected, in words.
    pub expected: String,
}

struct P<'a> {
    t: &'a [Token],
    i: usize,
    end: Pos,
}

impl P<'_> {
    fn peek(&self) -> Option<&Token> {
        self.t.get(self.i)
    }

    fn err(&self, expected: impl Into<String>) -> SyntaxError {
        match self.peek() {
            Some(t) => SyntaxError {
                pos: t.pos,
                near: Some(t.tok.shown()),
                expected: expected.into(),
            },
            None => SyntaxError {
                pos: self.end,
                near: None,
                expected: expected.into(),
            },
        }
    }

    fn kw(&mut self, kw: &str) -> bool {
        if self.peek().is_some_and(|t| t.tok.is_kw(kw)) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn punct(&mut self, c: char) -> bool {
        if self.peek().is_some_and(|t| t.tok == Tok::Punct(c)) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    /// A name: a word that is not a clause keyword, or a quoted identifier.
    fn name(&mut self, what: &str) -> Result<String, SyntaxError> {
        match self.peek().map(|t| &t.tok) {
            Some(Tok::Word(w)) if !is_reserved(w) => {
                let w = w.clone();
                self.i += 1;
                Ok(w)
            }
            Some(Tok::Quoted(q)) => {
                let q = q.clone();
                self.i += 1;
                Ok(q)
            }
            _ => Err(self.err(what)),
        }
    }

    fn device(&mut self) -> Result<Device, SyntaxError> {
        let Some(t) = self.peek() else {
            return Err(self.err("a device (VIRTUAL_DEVICE = 'name')"));
        };
        let pos = t.pos;
        let kind = match &t.tok {
            Tok::Word(w)
                if ["VIRTUAL_DEVICE", "DISK", "TAPE", "URL"]
                    .iter()
                    .any(|k| w.eq_ignore_ascii_case(k)) =>
            {
                w.to_ascii_uppercase()
            }
            _ => return Err(self.err("a device (VIRTUAL_DEVICE = 'name')")),
        };
        self.i += 1;
        if !self.punct('=') {
            return Err(self.err(format!("= after {kind}")));
        }
        let name = match self.peek().map(|t| &t.tok) {
            Some(Tok::Str(s)) | Some(Tok::Quoted(s)) => s.clone(),
            Some(Tok::Word(w)) if !is_reserved(w) => w.clone(),
            _ => return Err(self.err(format!("the {kind}'s name, as a string ('name')"))),
        };
        self.i += 1;
        Ok(Device { kind, name, pos })
    }

    fn option(&mut self) -> Result<Opt, SyntaxError> {
        let Some(t) = self.peek() else {
            return Err(self.err("an option after WITH"));
        };
        let pos = t.pos;
        let name = match &t.tok {
            Tok::Word(w) => w.to_ascii_uppercase(),
            _ => return Err(self.err("an option name")),
        };
        self.i += 1;
        let value = if self.punct('=') {
            let v = match self.peek().map(|t| &t.tok) {
                Some(Tok::Num(n)) => Value::Num(n.clone()),
                Some(Tok::Str(s)) => Value::Str(s.clone()),
                Some(Tok::Word(w)) => Value::Ident(w.clone()),
                Some(Tok::Quoted(q)) => Value::Ident(q.clone()),
                _ => return Err(self.err(format!("a value after {name} ="))),
            };
            self.i += 1;
            Some(v)
        } else {
            None
        };
        Ok(Opt { name, value, pos })
    }

    fn statement(&mut self) -> Result<Statement, SyntaxError> {
        let Some(first) = self.peek() else {
            return Err(self.err("BACKUP or RESTORE"));
        };
        let pos = first.pos;
        let backup = if self.kw("BACKUP") {
            true
        } else if self.kw("RESTORE") {
            false
        } else {
            return Err(
                self.err("BACKUP or RESTORE (the vdi test engine runs those two statements only)")
            );
        };
        let verb = if backup {
            if self.kw("DATABASE") {
                Verb::BackupDatabase
            } else if self.kw("LOG") {
                Verb::BackupLog
            } else {
                return Err(self.err("DATABASE or LOG after BACKUP"));
            }
        } else if self.kw("DATABASE") {
            Verb::RestoreDatabase
        } else if self.kw("LOG") {
            Verb::RestoreLog
        } else if self.kw("HEADERONLY") {
            Verb::HeaderOnly
        } else if self.kw("FILELISTONLY") {
            Verb::FileListOnly
        } else if self.kw("VERIFYONLY") {
            Verb::VerifyOnly
        } else if self.kw("LABELONLY") {
            Verb::LabelOnly
        } else {
            return Err(self.err(
                "DATABASE, LOG, HEADERONLY, FILELISTONLY, VERIFYONLY or LABELONLY after RESTORE",
            ));
        };
        let needs_name = matches!(
            verb,
            Verb::BackupDatabase | Verb::BackupLog | Verb::RestoreDatabase | Verb::RestoreLog
        );
        let clause = if backup { "TO" } else { "FROM" };
        let database = if needs_name || !self.peek().is_some_and(|t| t.tok.is_kw(clause)) {
            Some(self.name("a database name")?)
        } else {
            None
        };
        if !self.kw(clause) {
            return Err(self.err(format!("{clause} after the database name")));
        }
        let mut devices = vec![self.device()?];
        while self.punct(',') {
            devices.push(self.device()?);
        }
        let mut options = Vec::new();
        if self.kw("WITH") {
            options.push(self.option()?);
            while self.punct(',') {
                options.push(self.option()?);
            }
        }
        Ok(Statement {
            verb,
            database,
            devices,
            options,
            pos,
        })
    }
}

/// Words that end a name (so that `BACKUP DATABASE TO ...` is an error, not a database
/// named TO).
fn is_reserved(w: &str) -> bool {
    ["TO", "FROM", "WITH", "BACKUP", "RESTORE", "DATABASE", "LOG"]
        .iter()
        .any(|k| w.eq_ignore_ascii_case(k))
}

/// Parses a batch's tokens into its statements (`end`: the position after its text, for
/// "near the end" errors).
pub fn parse(tokens: &[Token], end: Pos) -> Result<Vec<Statement>, SyntaxError> {
    let mut p = P {
        t: tokens,
        i: 0,
        end,
    };
    let mut out = Vec::new();
    loop {
        while p.punct(';') {}
        if p.peek().is_none() {
            return Ok(out);
        }
        out.push(p.statement()?);
        if p.peek()
            .is_some_and(|t| !t.tok.is_kw("BACKUP") && !t.tok.is_kw("RESTORE"))
            && !p.punct(';')
        {
            let after = if out.last().is_some_and(|s| !s.options.is_empty()) {
                ", another option, ; or the next statement"
            } else {
                "WITH, a comma and another device, ; or the next statement"
            };
            return Err(p.err(after.trim_start_matches(", ")));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::lex::lex;
    use super::*;

    fn one(s: &str) -> Statement {
        let mut v = parse(&lex(s).unwrap(), Pos::default()).unwrap();
        assert_eq!(v.len(), 1, "{v:?}");
        v.remove(0)
    }

    fn bad(s: &str) -> SyntaxError {
        parse(&lex(s).unwrap(), Pos { line: 9, col: 9 }).unwrap_err()
    }

    #[test]
    fn the_sample_statements() {
        let s = one(
            "BACKUP DATABASE shop TO VIRTUAL_DEVICE='abc' WITH FORMAT, MAXTRANSFERSIZE=1048576 ",
        );
        assert_eq!(s.verb, Verb::BackupDatabase);
        assert_eq!(s.database.as_deref(), Some("shop"));
        assert_eq!(s.devices[0].name, "abc");
        assert_eq!(s.options[1].name, "MAXTRANSFERSIZE");
        assert_eq!(s.options[1].value, Some(Value::Num("1048576".into())));
        let s =
            one("restore log [my db] from virtual_device = N'a', VIRTUAL_DEVICE='b' with replace;");
        assert_eq!(s.verb, Verb::RestoreLog);
        assert_eq!(s.database.as_deref(), Some("my db"));
        assert_eq!(s.devices.len(), 2);
        let s = one("RESTORE HEADERONLY FROM VIRTUAL_DEVICE='x'");
        assert_eq!((s.verb, s.database), (Verb::HeaderOnly, None));
        let s = one("RESTORE VERIFYONLY \"shop\" FROM VIRTUAL_DEVICE='x' WITH STATS = 5, CHECKSUM");
        assert_eq!(s.database.as_deref(), Some("shop"));
        assert_eq!(s.options[0].value, Some(Value::Num("5".into())));
    }

    #[test]
    fn several_statements() {
        let v = parse(
            &lex("BACKUP DATABASE a TO VIRTUAL_DEVICE='x'\nRESTORE DATABASE a FROM VIRTUAL_DEVICE='x'; ;")
                .unwrap(),
            Pos::default(),
        )
        .unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[1].pos.line, 2);
    }

    #[test]
    fn errors_point_at_the_token() {
        let e = bad("BACKUP DATABASE TO VIRTUAL_DEVICE='x'");
        assert_eq!((e.pos.col, e.near.as_deref()), (17, Some("TO")));
        assert!(e.expected.contains("database name"));
        let e = bad("BACKUP DATABASE a\n  TO VIRTUAL_DEVICE 'x'");
        assert_eq!((e.pos.line, e.pos.col), (2, 21));
        let e = bad("BACKUP DATABASE a TO VIRTUAL_DEVICE='x' WITH");
        assert_eq!((e.near, e.pos), (None, Pos { line: 9, col: 9 }));
        let e = bad("SELECT 1");
        assert!(e.expected.contains("BACKUP or RESTORE"));
        let e = bad("BACKUP DATABASE a TO VIRTUAL_DEVICE='x' junk");
        assert_eq!(e.near.as_deref(), Some("junk"));
    }
}
