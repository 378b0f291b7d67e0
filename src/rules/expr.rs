//! The `expr:` language: boolean expressions over rule ids.
//!
//! Grammar (precedence low to high, `&&`/`||` left-associative):
//! ```text
//! or   = and { "||" and }
//! and  = cmp { "&&" cmp }
//! cmp  = sum [ (">" | ">=" | "<" | "<=" | "==" | "!=") NUMBER ]
//! sum  = not { ("+" | "-") not }
//! not  = "!" not | atom
//! atom = ID | "(" or ")"          ID = [A-Za-z0-9_.-]+, NUMBER = [0-9]+
//! ```
//! A rule counts 1 when it matched and 0 when not, so `A + B + C >= 2` means "at least two
//! of A, B, C" (SpamAssassin's counting metas). `&&`, `||`, `!` and comparisons give 0 or 1;
//! an expression is true when its value is not 0. A `-` between ids needs spaces around it
//! (`A - B`), since `-` may also be part of an id.
//! Parsing yields names with their byte offsets; [`Expr::resolve`] turns them into rule
//! indices once every file is loaded (so an expr may name a rule from any file).

/// A parsed expression; `R` is a name (`String` + offset) before resolving, an index after.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr<R> {
    Rule(R),
    Not(Box<Expr<R>>),
    And(Vec<Expr<R>>),
    Or(Vec<Expr<R>>),
    /// Terms added (`false`) or subtracted (`true`).
    Sum(Vec<(bool, Expr<R>)>),
    /// A value compared with a constant.
    Cmp(Box<Expr<R>>, CmpOp, i64),
}

/// A comparison operator of a counting expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Gt,
    Ge,
    Lt,
    Le,
    Eq,
    Ne,
}

impl CmpOp {
    fn apply(self, a: i64, b: i64) -> bool {
        match self {
            CmpOp::Gt => a > b,
            CmpOp::Ge => a >= b,
            CmpOp::Lt => a < b,
            CmpOp::Le => a <= b,
            CmpOp::Eq => a == b,
            CmpOp::Ne => a != b,
        }
    }
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
    Plus,
    Minus,
    Cmp(CmpOp),
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
            b'!' if two == Some(b"!=") => {
                out.push((Tok::Cmp(CmpOp::Ne), i));
                i += 2;
            }
            b'!' => {
                out.push((Tok::Not, i));
                i += 1;
            }
            b'=' if two == Some(b"==") => {
                out.push((Tok::Cmp(CmpOp::Eq), i));
                i += 2;
            }
            b'>' | b'<' => {
                let eq = b.get(i + 1) == Some(&b'=');
                let op = match (c, eq) {
                    (b'>', true) => CmpOp::Ge,
                    (b'>', false) => CmpOp::Gt,
                    (_, true) => CmpOp::Le,
                    (_, false) => CmpOp::Lt,
                };
                out.push((Tok::Cmp(op), i));
                i += 1 + eq as usize;
            }
            b'+' => {
                out.push((Tok::Plus, i));
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
                let tok = match &s[start..i] {
                    "-" => Tok::Minus,
                    id => Tok::Id(id.to_string()),
                };
                out.push((tok, start));
            }
            _ => {
                let ch = s[i..].chars().next().unwrap_or('?');
                let hint = match c {
                    b'&' => " (use &&)",
                    b'|' => " (use ||)",
                    _ => "",
                };
                return Err(ExprError { offset: i, message: format!("unexpected {ch:?}{hint}") });
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
        Err(ExprError { offset: self.offset(), message: message.into() })
    }
    fn or(&mut self) -> Result<Expr<Name>, ExprError> {
        let mut v = vec![self.and()?];
        while self.peek() == Some(&Tok::Or) {
            self.pos += 1;
            v.push(self.and()?);
        }
        Ok(if v.len() == 1 { v.remove(0) } else { Expr::Or(v) })
    }
    fn and(&mut self) -> Result<Expr<Name>, ExprError> {
        let mut v = vec![self.cmp()?];
        while self.peek() == Some(&Tok::And) {
            self.pos += 1;
            v.push(self.cmp()?);
        }
        Ok(if v.len() == 1 { v.remove(0) } else { Expr::And(v) })
    }
    fn cmp(&mut self) -> Result<Expr<Name>, ExprError> {
        let e = self.sum()?;
        let Some(Tok::Cmp(op)) = self.peek().cloned() else {
            return Ok(e);
        };
        self.pos += 1;
        let n = match self.peek() {
            Some(Tok::Id(id)) => match id.parse::<i64>() {
                Ok(n) => n,
                Err(_) => return self.err("expected a whole number after the comparison"),
            },
            _ => return self.err("expected a whole number after the comparison"),
        };
        self.pos += 1;
        Ok(Expr::Cmp(Box::new(e), op, n))
    }
    fn sum(&mut self) -> Result<Expr<Name>, ExprError> {
        let first = self.not()?;
        let mut v = vec![(false, first)];
        loop {
            let neg = match self.peek() {
                Some(Tok::Plus) => false,
                Some(Tok::Minus) => true,
                _ => break,
            };
            self.pos += 1;
            v.push((neg, self.not()?));
        }
        Ok(if v.len() == 1 { v.remove(0).1 } else { Expr::Sum(v) })
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
                    return Err(ExprError { offset: self.offset(), message: "expected `)`".into() });
                }
                self.pos += 1;
                Ok(e)
            }
            Some(Tok::Close) => self.err("unexpected `)`"),
            Some(Tok::And) | Some(Tok::Or) | Some(Tok::Plus) | Some(Tok::Minus) | Some(Tok::Cmp(_)) => {
                self.err("expected a rule id, `!` or `(`")
            }
            Some(Tok::Not) => self.err("unexpected `!`"),
            None => self.err("unexpected end of expression"),
        }
    }
}

/// Parses an expression.
pub fn parse(s: &str) -> Result<Expr<Name>, ExprError> {
    let toks = lex(s)?;
    let mut p = Parser { toks, pos: 0, end: s.len(), depth: 0 };
    if p.peek().is_none() {
        return p.err("empty expression");
    }
    let e = p.or()?;
    if p.pos < p.toks.len() {
        return match p.peek() {
            Some(Tok::Close) => p.err("unexpected `)`"),
            Some(Tok::Cmp(_)) => p.err("comparisons cannot be chained: use parentheses and `&&`"),
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
            Expr::Sum(v) => v.iter().for_each(|(_, e)| e.walk(f)),
            Expr::Cmp(e, _, _) => e.walk(f),
        }
    }
    /// Maps names to indices; `lookup` returns `None` for unknown ids (then so does this).
    pub fn resolve(&self, lookup: &impl Fn(&str) -> Option<u32>) -> Option<Expr<u32>> {
        Some(match self {
            Expr::Rule((n, _)) => Expr::Rule(lookup(n)?),
            Expr::Not(e) => Expr::Not(Box::new(e.resolve(lookup)?)),
            Expr::And(v) => Expr::And(v.iter().map(|e| e.resolve(lookup)).collect::<Option<_>>()?),
            Expr::Or(v) => Expr::Or(v.iter().map(|e| e.resolve(lookup)).collect::<Option<_>>()?),
            Expr::Sum(v) => Expr::Sum(v.iter().map(|(n, e)| Some((*n, e.resolve(lookup)?))).collect::<Option<_>>()?),
            Expr::Cmp(e, op, n) => Expr::Cmp(Box::new(e.resolve(lookup)?), *op, *n),
        })
    }
}

/// Operand values for [`Expr::eval_lazy`]: some are known, the others computed on request.
pub trait Operands {
    /// The value if already computed.
    fn known(&self, r: u32) -> Option<bool>;
    /// The value, computing it first if needed.
    fn force(&mut self, r: u32) -> bool;
}

impl Expr<u32> {
    /// Evaluates with `hit(rule)` telling whether a rule matched.
    pub fn eval(&self, hit: &impl Fn(u32) -> bool) -> bool {
        match self {
            Expr::Rule(r) => hit(*r),
            Expr::Not(e) => !e.eval(hit),
            Expr::And(v) => v.iter().all(|e| e.eval(hit)),
            Expr::Or(v) => v.iter().any(|e| e.eval(hit)),
            Expr::Sum(_) => self.value(hit) != 0,
            Expr::Cmp(e, op, n) => op.apply(e.value(hit), *n),
        }
    }
    /// The numeric value: a sum counts, everything else is 0 or 1.
    fn value(&self, hit: &impl Fn(u32) -> bool) -> i64 {
        match self {
            Expr::Sum(v) => v.iter().map(|(neg, e)| if *neg { -e.value(hit) } else { e.value(hit) }).sum(),
            e => e.eval(hit) as i64,
        }
    }
    /// The value when some operands are not computed yet (`known` gives `None` for them):
    /// `Some` when it is decided whatever they turn out to be (`A && B` with `A` false).
    /// Counting forms are decided only when all their operands are known.
    pub fn eval_known(&self, known: &impl Fn(u32) -> Option<bool>) -> Option<bool> {
        match self {
            Expr::Rule(r) => known(*r),
            Expr::Not(e) => e.eval_known(known).map(|b| !b),
            Expr::And(v) | Expr::Or(v) => {
                // `And` is decided by a false operand, `Or` by a true one.
                let decider = matches!(self, Expr::Or(_));
                let mut all_known = true;
                for e in v {
                    match e.eval_known(known) {
                        Some(b) if b == decider => return Some(decider),
                        Some(_) => {}
                        None => all_known = false,
                    }
                }
                all_known.then_some(!decider)
            }
            Expr::Sum(_) | Expr::Cmp(..) => {
                let mut deps = Vec::new();
                self.deps(&mut deps);
                if deps.iter().all(|&d| known(d).is_some()) {
                    Some(self.eval(&|r| known(r).unwrap_or(false)))
                } else {
                    None
                }
            }
        }
    }

    /// Evaluates with operands computed on demand: an operand is forced only when the
    /// operands already known do not decide its `&&`/`||` (so an expensive sub-rule behind a
    /// false guard never runs, wherever the guard is written).
    pub fn eval_lazy(&self, ops: &mut impl Operands) -> bool {
        match self {
            Expr::Rule(r) => ops.force(*r),
            Expr::Not(e) => !e.eval_lazy(ops),
            Expr::And(v) | Expr::Or(v) => {
                let decider = matches!(self, Expr::Or(_));
                if v.iter().any(|e| e.eval_known(&|r| ops.known(r)) == Some(decider)) {
                    return decider;
                }
                for e in v {
                    if e.eval_lazy(ops) == decider {
                        return decider;
                    }
                }
                !decider
            }
            Expr::Sum(_) | Expr::Cmp(..) => {
                let mut deps = Vec::new();
                self.deps(&mut deps);
                for d in deps {
                    ops.force(d);
                }
                self.eval(&|r| ops.known(r).unwrap_or(false))
            }
        }
    }
    /// Every rule index referenced.
    pub fn deps(&self, out: &mut Vec<u32>) {
        match self {
            Expr::Rule(r) => out.push(*r),
            Expr::Not(e) => e.deps(out),
            Expr::And(v) | Expr::Or(v) => v.iter().for_each(|e| e.deps(out)),
            Expr::Sum(v) => v.iter().for_each(|(_, e)| e.deps(out)),
            Expr::Cmp(e, _, _) => e.deps(out),
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
            Expr::Or(vec![r("A", 0), Expr::And(vec![r("B", 5), Expr::Not(Box::new(r("C", 11)))])])
        );
        assert_eq!(parse("(A||B)&&C").unwrap(), Expr::And(vec![Expr::Or(vec![r("A", 1), r("B", 4)]), r("C", 8)]));
        assert_eq!(parse("!!A").unwrap(), Expr::Not(Box::new(Expr::Not(Box::new(r("A", 2))))));
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
        let x = e.resolve(&|n| ids.iter().position(|i| *i == n).map(|p| p as u32)).unwrap();
        assert!(x.eval(&|r| r == 0));
        assert!(!x.eval(&|r| r == 0 || r == 2));
    }

    fn eval_with(src: &str, ids: &[&str], hits: &[&str]) -> bool {
        let e = parse(src).unwrap();
        let x = e.resolve(&|n| ids.iter().position(|i| *i == n).map(|p| p as u32)).unwrap();
        x.eval(&|r| hits.contains(&ids[r as usize]))
    }

    /// Lazy evaluation gives the same value as eager evaluation, and forces an operand only
    /// when the known ones leave the result open.
    #[test]
    fn lazy_agrees_and_skips_decided_operands() {
        struct Ops {
            hits: u32,
            lazy: u32,
            forced: Vec<u32>,
        }
        impl Operands for Ops {
            fn known(&self, r: u32) -> Option<bool> {
                (self.lazy & (1 << r) == 0).then_some(self.hits & (1 << r) != 0)
            }
            fn force(&mut self, r: u32) -> bool {
                if self.lazy & (1 << r) != 0 {
                    self.lazy &= !(1 << r);
                    self.forced.push(r);
                }
                self.hits & (1 << r) != 0
            }
        }
        let ids = ["A", "B", "C", "D"];
        let exprs = [
            "A && B",
            "B && A",
            "A || !B",
            "!(A || B) && (C || D)",
            "(A + B + C) > 1",
            "D && (A + B >= 1)",
            "A - B > 0 || C",
            "(A && B) || (C && !D)",
        ];
        for src in exprs {
            let x = parse(src).unwrap().resolve(&|n| ids.iter().position(|i| *i == n).map(|p| p as u32)).unwrap();
            for hits in 0..16u32 {
                for lazy in 0..16u32 {
                    let mut ops = Ops { hits, lazy, forced: Vec::new() };
                    let want = x.eval(&|r| hits & (1 << r) != 0);
                    assert_eq!(x.eval_lazy(&mut ops), want, "{src} hits {hits:04b} lazy {lazy:04b}");
                }
            }
        }
        // `B && A` with A known false: the lazy B is never computed.
        let x = parse("B && A").unwrap().resolve(&|n| ids.iter().position(|i| *i == n).map(|p| p as u32)).unwrap();
        let mut ops = Ops { hits: 0b0010, lazy: 0b0010, forced: Vec::new() };
        assert!(!x.eval_lazy(&mut ops));
        assert!(ops.forced.is_empty());
        // With A true it is.
        let mut ops = Ops { hits: 0b0011, lazy: 0b0010, forced: Vec::new() };
        assert!(x.eval_lazy(&mut ops));
        assert_eq!(ops.forced, [1]);
    }

    #[test]
    fn counting() {
        let ids = ["A", "B", "C", "D"];
        assert!(eval_with("(A + B + C) > 1", &ids, &["A", "C"]));
        assert!(!eval_with("(A + B + C) > 1", &ids, &["B"]));
        assert!(eval_with("A + B >= 2", &ids, &["A", "B"]));
        assert!(!eval_with("A + B >= 2", &ids, &["A"]));
        assert!(eval_with("D && (A + B + C >= 1)", &ids, &["D", "B"]));
        assert!(!eval_with("D && (A + B + C >= 1)", &ids, &["A"]));
        assert!(eval_with("A - B > 0", &ids, &["A"]));
        assert!(!eval_with("A - B > 0", &ids, &["A", "B"]));
        assert!(eval_with("A + B == 1", &ids, &["B"]));
        assert!(eval_with("A + B != 1", &ids, &[]));
        assert!(eval_with("A + B < 2 && !C", &ids, &["A"]));
        assert!(eval_with("!A + B <= 0", &ids, &["A"]));
        // A bare sum is true when not 0.
        assert!(eval_with("A + B", &ids, &["B"]));
        assert!(!eval_with("A - B", &ids, &["A", "B"]));
        // Ids keep `-` and digits when written without spaces.
        assert_eq!(parse("X-Y").unwrap(), r("X-Y", 0));
    }

    #[test]
    fn counting_errors() {
        let e = |s: &str| parse(s).unwrap_err();
        assert!(e("A + B > C").message.contains("whole number"));
        assert!(e("A > 1 > 0").message.contains("chained"));
        assert_eq!(e("A + ").offset, 4);
        assert_eq!(e("> 1").offset, 0);
    }
}
