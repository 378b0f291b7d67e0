//! The `expr:` language: boolean expressions over rule ids.
//!
//! Grammar (precedence low to high, `&&`/`||` left-associative):
//! ```text
//! or   = and { "||" and }
//! and  = not { "&&" not }
//! not  = "!" not | atom
//! atom = ID | "(" or ")"          ID = [A-Za-z0-9_.-]+
//! ```
//! Parsing yields names with their byte offsets; [`Expr::resolve`] turns them into rule
//! indices once every file is loaded (so an expr may name a rule from any file).

/// A parsed expression; `R` is a name (`String` + offset) before resolving, an index after.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr<R> {
    Rule(R),
    Not(Box<Expr<R>>),
    And(Vec<Expr<R>>),
    Or(Vec<Expr<R>>),
}

/// A reference as written: the id and its byte offset in the expression.
pub type Name = (String, usize);

/// A parse error at a byte offset of the expression.
#[derive(Debug, Clone, PartialEq)]
pub struct ExprError {
    pub offset: usize,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Id(String),
    And,
    Or,
    Not,
    Open,
    Close,
}

fn is_id_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'.' || c == b'-'
}

fn lex(s: &str) -> Result<Vec<(Tok, usize)>, ExprError> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let two = b.get(i..i + 2);
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => {
                i += 1;
                continue;
            }
            b'&' if two == Some(b"&&") => {
                out.push((Tok::And, i));
                i += 2;
            }
            b'|' if two == Some(b"||") => {
                out.push((Tok::Or, i));
                i += 2;
            }
            b'!' => {
                out.push((Tok::Not, i));
                i += 1;
            }
            b'(' => {
                out.push((Tok::Open, i));
                i += 1;
            }
            b')' => {
                out.push((Tok::Close, i));
                i += 1;
            }
            c if is_id_char(c) => {
                let start = i;
                while i < b.len() && is_id_char(b[i]) {
                    i += 1;
                }
                out.push((Tok::Id(s[start..i].to_string()), start));
            }
            _ => {
                let ch = s[i..].chars().next().unwrap_or('?');
                let hint = match c {
                    b'&' => " (use &&)",
                    b'|' => " (use ||)",
                    _ => "",
                };
                return Err(ExprError {
                    offset: i,
                    message: format!("unexpected {ch:?}{hint}"),
                });
            }
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<(Tok, usize)>,
    pos: usize,
    end: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|t| &t.0)
    }
    fn offset(&self) -> usize {
        self.toks.get(self.pos).map(|t| t.1).unwrap_or(self.end)
    }
    fn err<T>(&self, message: impl Into<String>) -> Result<T, ExprError> {
        Err(ExprError {
            offset: self.offset(),
            message: message.into(),
        })
    }
    fn or(&mut self) -> Result<Expr<Name>, ExprError> {
        let mut v = vec![self.and()?];
        while self.peek() == Some(&Tok::Or) {
            self.pos += 1;
            v.push(self.and()?);
        }
        Ok(if v.len() == 1 {
            v.remove(0)
        } else {
            Expr::Or(v)
        })
    }
    fn and(&mut self) -> Result<Expr<Name>, ExprError> {
        let mut v = vec![self.not()?];
        while self.peek() == Some(&Tok::And) {
            self.pos += 1;
            v.push(self.not()?);
        }
        Ok(if v.len() == 1 {
            v.remove(0)
        } else {
            Expr::And(v)
        })
    }
    fn not(&mut self) -> Result<Expr<Name>, ExprError> {
        if self.peek() == Some(&Tok::Not) {
            self.pos += 1;
            self.depth += 1;
            if self.depth > 200 {
                return self.err("expression nested too deeply");
            }
            let e = self.not()?;
            self.depth -= 1;
            return Ok(Expr::Not(Box::new(e)));
        }
        self.atom()
    }
    fn atom(&mut self) -> Result<Expr<Name>, ExprError> {
        let off = self.offset();
        match self.peek().cloned() {
            Some(Tok::Id(id)) => {
                self.pos += 1;
                Ok(Expr::Rule((id, off)))
            }
            Some(Tok::Open) => {
                self.pos += 1;
                self.depth += 1;
                if self.depth > 200 {
                    return self.err("expression nested too deeply");
                }
                let e = self.or()?;
                self.depth -= 1;
                if self.peek() != Some(&Tok::Close) {
                    return Err(ExprError {
                        offset: self.offset(),
                        message: "expected `)`".into(),
                    });
                }
                self.pos += 1;
                Ok(e)
            }
            Some(Tok::Close) => self.err("unexpected `)`"),
            Some(Tok::And) | Some(Tok::Or) => self.err("expected a rule id, `!` or `(`"),
            Some(Tok::Not) => self.err("unexpected `!`"),
            None => self.err("unexpected end of expression"),
        }
    }
}

/// Parses an expression.
pub fn parse(s: &str) -> Result<Expr<Name>, ExprError> {
    let toks = lex(s)?;
    let mut p = Parser {
        toks,
        pos: 0,
        end: s.len(),
        depth: 0,
    };
    if p.peek().is_none() {
        return p.err("empty expression");
    }
    let e = p.or()?;
    if p.pos < p.toks.len() {
        return match p.peek() {
            Some(Tok::Close) => p.err("unexpected `)`"),
            _ => p.err("expected `&&`, `||` or end of expression"),
        };
    }
    Ok(e)
}

impl Expr<Name> {
    /// Every name referenced, in order.
    pub fn names(&self) -> Vec<&Name> {
        let mut out = Vec::new();
        self.walk(&mut |n| out.push(n));
        out
    }
    fn walk<'a>(&'a self, f: &mut impl FnMut(&'a Name)) {
        match self {
            Expr::Rule(n) => f(n),
            Expr::Not(e) => e.walk(f),
            Expr::And(v) | Expr::Or(v) => v.iter().for_each(|e| e.walk(f)),
        }
    }
    /// Maps names to indices; `lookup` returns `None` for unknown ids (then so does this).
    pub fn resolve(&self, lookup: &impl Fn(&str) -> Option<u32>) -> Option<Expr<u32>> {
        Some(match self {
            Expr::Rule((n, _)) => Expr::Rule(lookup(n)?),
            Expr::Not(e) => Expr::Not(Box::new(e.resolve(lookup)?)),
            Expr::And(v) => Expr::And(v.iter().map(|e| e.resolve(lookup)).collect::<Option<_>>()?),
            Expr::Or(v) => Expr::Or(v.iter().map(|e| e.resolve(lookup)).collect::<Option<_>>()?),
        })
    }
}

impl Expr<u32> {
    /// Evaluates with `hit(rule)` telling whether a rule matched.
    pub fn eval(&self, hit: &impl Fn(u32) -> bool) -> bool {
        match self {
            Expr::Rule(r) => hit(*r),
            Expr::Not(e) => !e.eval(hit),
            Expr::And(v) => v.iter().all(|e| e.eval(hit)),
            Expr::Or(v) => v.iter().any(|e| e.eval(hit)),
        }
    }
    /// Every rule index referenced.
    pub fn deps(&self, out: &mut Vec<u32>) {
        match self {
            Expr::Rule(r) => out.push(*r),
            Expr::Not(e) => e.deps(out),
            Expr::And(v) | Expr::Or(v) => v.iter().for_each(|e| e.deps(out)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str, o: usize) -> Expr<Name> {
        Expr::Rule((s.to_string(), o))
    }

    #[test]
    fn precedence() {
        assert_eq!(
            parse("A || B && !C").unwrap(),
            Expr::Or(vec![
                r("A", 0),
                Expr::And(vec![r("B", 5), Expr::Not(Box::new(r("C", 11)))])
            ])
        );
        assert_eq!(
            parse("(A||B)&&C").unwrap(),
            Expr::And(vec![Expr::Or(vec![r("A", 1), r("B", 4)]), r("C", 8)])
        );
        assert_eq!(
            parse("!!A").unwrap(),
            Expr::Not(Box::new(Expr::Not(Box::new(r("A", 2)))))
        );
    }

    #[test]
    fn errors() {
        let e = |s: &str| parse(s).unwrap_err();
        assert_eq!(e("").offset, 0);
        assert_eq!(e("A &&").offset, 4);
        assert_eq!(e("A & B").offset, 2);
        assert!(e("A & B").message.contains("use &&"));
        assert_eq!(e("(A || B").offset, 7);
        assert_eq!(e("A B").offset, 2);
        assert_eq!(e("A)").offset, 1);
        assert!(e(&"(".repeat(500)).message.contains("deeply"));
    }

    #[test]
    fn eval() {
        let e = parse("A && !(B || C)").unwrap();
        let ids = ["A", "B", "C"];
        let x = e
            .resolve(&|n| ids.iter().position(|i| *i == n).map(|p| p as u32))
            .unwrap();
        assert!(x.eval(&|r| r == 0));
        assert!(!x.eval(&|r| r == 0 || r == 2));
    }
}
