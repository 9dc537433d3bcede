//! xCAT's value rules, pure: the regular-expression values of `Table.pm` `transRegexAttrs`
//! (`/pat/repl/` and `|pat|repl|` with integer arithmetic in parentheses) and the `$table.column` /
//! `$node` substitution of `SvrUtils.pm` `subVars` used in `statelite.statemnt` and
//! `litetree.directory`. No I/O: the caller supplies attribute lookups.
//!
//! Perl details kept on purpose, because hanfs must see what xCAT sees:
//! - the replacement is used literally (`s/$pat/$repl/` interpolates `$repl` once, so a `$1` in it is
//!   not expanded); numbers come only from the parenthesised expressions, where `$1`.. are the
//!   captures of the pattern on the node name;
//! - only the first match is replaced; an empty result means "no value";
//! - `|repl|` with a single part builds the pattern `[\D0]*(\d+)` once per number in the node name,
//!   then `.*$`, so leading zeros are dropped;
//! - arithmetic is `use integer`: truncating division, remainder with the sign of the dividend, and
//!   a capture such as `010` is the number 10 (a string in numeric context is decimal);
//! - the expressions may call the helpers Table.pm shares into its Safe compartment (`ipadd`,
//!   `dim2idx`, `skip`, `mknum`, `a2idx`, `a2zidx`) and use strings, `.` and `x`.
//!
//! `same_as_xcat_perl` below checks 32 cases against values xCAT's own Perl produced.

use regex::Regex;

/// Why a value could not be computed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError(pub String);

impl std::fmt::Display for RuleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether a value is one of xCAT's regular-expression forms.
pub fn is_regex_value(v: &str) -> bool {
    is_slash_form(v) || is_pipe_form(v)
}

fn is_slash_form(v: &str) -> bool {
    // ^/[^/]*/[^/]*/$
    v.len() >= 3 && v.starts_with('/') && v.ends_with('/') && v.matches('/').count() == 3
}

fn is_pipe_form(v: &str) -> bool {
    // ^\|.*\|$
    v.len() >= 2 && v.starts_with('|') && v.ends_with('|')
}

/// `transRegexAttrs(node, value)`: the value a node gets from a (possibly regex) attribute value.
/// `Ok(None)` is xCAT's undef (an empty result).
pub fn trans_regex(node: &str, value: &str) -> Result<Option<String>, RuleError> {
    let out = if is_slash_form(value) {
        let inner = &value[1..value.len() - 1];
        let (pat, repl) = inner.split_once('/').unwrap_or((inner, ""));
        let re = compile(pat)?;
        replace_first(&re, node, repl)?
    } else if is_pipe_form(value) {
        let inner = &value[1..value.len() - 1];
        let (pat, repl) = match inner.split_once('|') {
            Some((p, r)) => (p.to_string(), r.to_string()),
            None => {
                let n = compile(r"[\D0]*(\d+)")?.find_iter(node).count();
                (format!("{}.*$", r"[\D0]*(\d+)".repeat(n)), inner.to_string())
            }
        };
        let re = compile(&pat)?;
        let caps = re
            .captures(node)
            .ok_or_else(|| RuleError(format!("regex `{pat}` of value `{value}` does not match node `{node}`")))?;
        let whole = caps.get(0).map(|m| m.range()).unwrap_or(0..0);
        let mut retval = repl.clone();
        while let Some((prev, curr, next)) = extract_bracketed(&retval) {
            // Perl: $value = $node; $value =~ s/pat/$curr/; reval("use integer;$value")
            let text = format!("{}{}{}", &node[..whole.start], curr, &node[whole.end..]);
            let value = eval_integer(&text, &caps).unwrap_or_default();
            retval = format!("{prev}{value}{next}");
        }
        replace_first(&re, node, &retval)?
    } else {
        value.to_string()
    };
    Ok(if out.is_empty() { None } else { Some(out) })
}

/// Compiled patterns, shared: a cluster has few distinct regex values but applies them per node.
fn compile(pat: &str) -> Result<Regex, RuleError> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static CACHE: OnceLock<Mutex<HashMap<String, Result<Regex, RuleError>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let mut m = cache.lock().unwrap_or_else(|p| p.into_inner());
    if m.len() > 4096 {
        m.clear();
    }
    m.entry(pat.to_string())
        .or_insert_with(|| Regex::new(pat).map_err(|e| RuleError(format!("regex `{pat}` is not supported: {e}"))))
        .clone()
}

/// Perl `s/re/repl/` with a literal replacement: the first match only.
fn replace_first(re: &Regex, node: &str, repl: &str) -> Result<String, RuleError> {
    match re.find(node) {
        Some(m) => Ok(format!("{}{}{}", &node[..m.start()], repl, &node[m.end()..])),
        None => Err(RuleError(format!("regex `{}` does not match node `{node}`", re.as_str()))),
    }
}

/// Text::Balanced `extract_bracketed($s, '()', qr/[^()]*/)`: the text before the first `(`, the
/// balanced `(...)` group, and the rest. `None` when there is no balanced group.
fn extract_bracketed(s: &str) -> Option<(String, String, String)> {
    let start = s.find(['(', ')'])?;
    if s.as_bytes()[start] != b'(' {
        return None;
    }
    let mut depth = 0usize;
    for (i, c) in s[start..].char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    let end = start + i + 1;
                    return Some((s[..start].to_string(), s[start..end].to_string(), s[end..].to_string()));
                }
            }
            _ => {}
        }
    }
    None
}
/// Evaluate the Perl expression of a parenthesised part, as xCAT's `Safe` compartment does under
/// `use integer`: integers (a literal with a leading zero is octal), `'..'` and `".."` strings, the
/// captures `$1`.. (strings, decimal in numeric context), `+ - * / % ** . x`, parentheses, and the
/// helpers Table.pm shares into the compartment: `mknum`, `a2idx`, `a2zidx`, `dim2idx`, `skip`,
/// `ipadd`. `None` where Perl's eval would fail (xCAT then gets undef, i.e. an empty part).
pub fn eval_integer(text: &str, caps: &regex::Captures<'_>) -> Option<String> {
    let toks = tokenize(text, caps)?;
    let mut p = Expr { toks: &toks, pos: 0 };
    let v = p.sum()?;
    if p.pos != toks.len() {
        return None;
    }
    Some(v.into_string())
}

#[derive(Debug, Clone, PartialEq)]
enum Val {
    Int(i64),
    Str(String),
}

impl Val {
    fn int(&self) -> i64 {
        match self {
            Val::Int(i) => *i,
            Val::Str(s) => perl_numify(s),
        }
    }
    fn into_string(self) -> String {
        match self {
            Val::Int(i) => i.to_string(),
            Val::Str(s) => s,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Val(Val),
    Ident(String),
    Op(char),
    Pow,
    Open,
    Close,
    Comma,
}

fn capture(caps: &regex::Captures<'_>, n: usize) -> String {
    caps.get(n).map(|m| m.as_str().to_string()).unwrap_or_default()
}

/// `$N` or `${N}` at `b[i]` (just after the `$`): the group number and the index after it.
fn capture_ref(b: &[char], mut i: usize) -> Option<(usize, usize)> {
    let braced = b.get(i) == Some(&'{');
    if braced {
        i += 1;
    }
    let s = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    if s == i {
        return None;
    }
    let n: usize = b[s..i].iter().collect::<String>().parse().ok()?;
    if braced {
        if b.get(i) != Some(&'}') {
            return None;
        }
        i += 1;
    }
    Some((n, i))
}

fn tokenize(text: &str, caps: &regex::Captures<'_>) -> Option<Vec<Tok>> {
    let b: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            ' ' | '\t' | '\n' => i += 1,
            '0'..='9' => {
                let s = i;
                while i < b.len() && (b[i].is_ascii_digit() || b[i] == '_') {
                    i += 1;
                }
                let lit: String = b[s..i].iter().filter(|c| **c != '_').collect();
                // A literal with a leading zero is octal in Perl source; 08 does not compile.
                let v = if lit.len() > 1 && lit.starts_with('0') {
                    i64::from_str_radix(&lit[1..], 8).ok()?
                } else {
                    lit.parse().ok()?
                };
                out.push(Tok::Val(Val::Int(v)));
            }
            '$' => {
                let (n, next) = capture_ref(&b, i + 1)?;
                i = next;
                out.push(Tok::Val(Val::Str(capture(caps, n))));
            }
            '\'' | '"' => {
                let q = c;
                i += 1;
                let mut s = String::new();
                loop {
                    let ch = *b.get(i)?;
                    i += 1;
                    match ch {
                        ch if ch == q => break,
                        '\\' => {
                            let e = *b.get(i)?;
                            i += 1;
                            match (q, e) {
                                ('"', 'n') => s.push('\n'),
                                ('"', 't') => s.push('\t'),
                                ('\'', e) if e != '\'' && e != '\\' => {
                                    s.push('\\');
                                    s.push(e);
                                }
                                (_, e) => s.push(e),
                            }
                        }
                        '$' if q == '"' => {
                            let (n, next) = capture_ref(&b, i)?;
                            i = next;
                            s.push_str(&capture(caps, n));
                        }
                        ch => s.push(ch),
                    }
                }
                out.push(Tok::Val(Val::Str(s)));
            }
            'a'..='z' | 'A'..='Z' | '_' => {
                let s = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == '_') {
                    i += 1;
                }
                out.push(Tok::Ident(b[s..i].iter().collect()));
            }
            '*' if b.get(i + 1) == Some(&'*') => {
                out.push(Tok::Pow);
                i += 2;
            }
            '+' | '-' | '*' | '/' | '%' | '.' => {
                out.push(Tok::Op(c));
                i += 1;
            }
            '(' => {
                out.push(Tok::Open);
                i += 1;
            }
            ')' => {
                out.push(Tok::Close);
                i += 1;
            }
            ',' => {
                out.push(Tok::Comma);
                i += 1;
            }
            _ => return None,
        }
    }
    Some(out)
}

/// A string in Perl numeric context under `use integer`: its leading decimal integer, else 0.
fn perl_numify(s: &str) -> i64 {
    let t = s.trim_start();
    let (neg, digits) = match t.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let d: String = digits.chars().take_while(|c| c.is_ascii_digit()).collect();
    let v: i64 = d.parse().unwrap_or(0);
    if neg {
        -v
    } else {
        v
    }
}

/// The helpers Table.pm shares into the Safe compartment, with its semantics.
fn call(name: &str, args: &[Val]) -> Option<Val> {
    let int = |i: usize| args.get(i).map(Val::int).unwrap_or(0);
    let text = |i: usize| args.get(i).cloned().map(Val::into_string).unwrap_or_default();
    Some(match name {
        // Sum of the bytes: a number for unnumbered names (round robin).
        "mknum" => Val::Int(text(0).bytes().map(i64::from).sum()),
        "a2idx" => Val::Int(text(0).to_lowercase().chars().next().map(|c| c as i64).unwrap_or(0) - 96),
        "a2zidx" => Val::Int(text(0).to_lowercase().chars().next().map(|c| c as i64).unwrap_or(0) - 97),
        "dim2idx" => {
            let mut val: i64 = 0;
            for (k, a) in args.iter().enumerate() {
                if k % 2 == 0 {
                    val = val.checked_add(a.int().checked_sub(1)?)?;
                } else {
                    val = val.checked_mul(a.int())?;
                }
            }
            Val::Int(val.checked_add(1)?)
        }
        "skip" => {
            let idx = int(0);
            let mut val = idx;
            for element in text(1).split(',') {
                let mut it = element.split(':');
                let start = perl_numify(it.next().unwrap_or(""));
                let count = it.next().map(perl_numify).unwrap_or(1);
                if idx >= start {
                    if idx < start.checked_add(count)? {
                        return Some(Val::Int(-1));
                    }
                    val = val.checked_sub(count)?;
                } else {
                    break;
                }
            }
            Val::Int(val)
        }
        "ipadd" => {
            let (b1, b2, mut b3, mut b4) = (int(0), int(1), int(2), int(3));
            let (toadd, ss, se) = (int(4), int(5), int(6));
            let offset = if b4 >= ss { b4 - ss } else { 0 };
            let span = 256i64.checked_sub(ss)?.checked_sub(se)?;
            let sum = offset.checked_add(toadd)?;
            b3 = b3.checked_add(sum.checked_div(span)?)?;
            b4 = sum.checked_rem(span)?.checked_add(ss)?;
            Val::Str(format!("{b1}.{b2}.{b3}.{b4}"))
        }
        _ => return None, // an unknown function dies in Perl's eval
    })
}

struct Expr<'a> {
    toks: &'a [Tok],
    pos: usize,
}

impl Expr<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }
    /// `+ - .` (left associative, one precedence level in Perl).
    fn sum(&mut self) -> Option<Val> {
        let mut v = self.product()?;
        while let Some(Tok::Op(op @ ('+' | '-' | '.'))) = self.peek().cloned() {
            self.pos += 1;
            let r = self.product()?;
            v = match op {
                '+' => Val::Int(v.int().checked_add(r.int())?),
                '-' => Val::Int(v.int().checked_sub(r.int())?),
                _ => Val::Str(v.into_string() + &r.into_string()),
            };
        }
        Some(v)
    }
    /// `* / % x`.
    fn product(&mut self) -> Option<Val> {
        let mut v = self.unary()?;
        loop {
            match self.peek().cloned() {
                Some(Tok::Op(op @ ('*' | '/' | '%'))) => {
                    self.pos += 1;
                    let r = self.unary()?.int();
                    let l = v.int();
                    v = Val::Int(match op {
                        '*' => l.checked_mul(r)?,
                        '/' => l.checked_div(r)?,
                        _ => l.checked_rem(r)?,
                    });
                }
                Some(Tok::Ident(x)) if x == "x" => {
                    self.pos += 1;
                    let n = usize::try_from(self.unary()?.int().max(0)).ok()?.min(4096);
                    v = Val::Str(v.into_string().repeat(n));
                }
                _ => return Some(v),
            }
        }
    }
    fn unary(&mut self) -> Option<Val> {
        match self.peek() {
            Some(Tok::Op('-')) => {
                self.pos += 1;
                Some(Val::Int(self.unary()?.int().checked_neg()?))
            }
            Some(Tok::Op('+')) => {
                self.pos += 1;
                self.unary()
            }
            _ => self.power(),
        }
    }
    /// `**`, right associative, tighter than unary minus.
    fn power(&mut self) -> Option<Val> {
        let base = self.atom()?;
        if self.peek() == Some(&Tok::Pow) {
            self.pos += 1;
            let e = self.unary()?.int();
            let b = base.int();
            return Some(Val::Int(match u32::try_from(e) {
                Ok(e) => b.checked_pow(e)?,
                Err(_) => i64::from(b == 1),
            }));
        }
        Some(base)
    }
    fn atom(&mut self) -> Option<Val> {
        match self.peek().cloned()? {
            Tok::Val(v) => {
                self.pos += 1;
                Some(v)
            }
            Tok::Open => {
                self.pos += 1;
                let v = self.sum()?;
                if self.peek() != Some(&Tok::Close) {
                    return None;
                }
                self.pos += 1;
                Some(v)
            }
            Tok::Ident(name) => {
                self.pos += 1;
                let mut args = Vec::new();
                if self.peek() == Some(&Tok::Open) {
                    self.pos += 1;
                    if self.peek() != Some(&Tok::Close) {
                        loop {
                            args.push(self.sum()?);
                            match self.peek() {
                                Some(Tok::Comma) => self.pos += 1,
                                Some(Tok::Close) => break,
                                _ => return None,
                            }
                        }
                    }
                    self.pos += 1;
                }
                call(&name, &args)
            }
            _ => None,
        }
    }
}

/// A `server:dir` value (statemnt, litetree directory) split as xCAT splits it: `split(/:/)`, the first
/// two fields; a value without a server is all directory.
pub fn split_server_dir(v: &str) -> (String, String) {
    let mut it = v.split(':');
    let a = it.next().unwrap_or("").to_string();
    match it.next() {
        Some(b) if !b.is_empty() => (a, b.to_string()),
        _ => (String::new(), a),
    }
}

/// `subVars(value, node, type)`: `$node` and `$table.column` replaced. `lookup(table, column)` gives
/// the node's value of an attribute (`None` becomes `UNDEFINED`, as in xCAT). `is_dir` selects the
/// directory form, in which components are rejoined with `/` and `//` collapsed.
pub fn sub_vars(
    value: &str,
    node: &str,
    is_dir: bool,
    lookup: &mut dyn FnMut(&str, &str) -> Option<String>,
) -> Result<String, RuleError> {
    if value.contains("#CMD=") {
        return Err(RuleError(format!("`{value}` runs a command (#CMD=) that hanfs cannot evaluate")));
    }
    let mut parts: Vec<&str> = value.split('/').collect();
    while parts.last() == Some(&"") && parts.len() > 1 {
        parts.pop(); // Perl's split drops trailing empty fields
    }
    let mut out = String::new();
    for p in parts {
        if let Some(d) = p.find('$') {
            let pre = &p[..d];
            let rest = &p[d..];
            let end = rest.find(['#', ' ']).unwrap_or(rest.len());
            let (vars, suf) = rest.split_at(end);
            let mut vals = Vec::new();
            for part in vars.split('$').filter(|s| !s.is_empty()) {
                if part == "node" {
                    vals.push(node.to_string());
                } else {
                    let (table, col) = part.split_once('.').unwrap_or((part, "UNDEFINED"));
                    vals.push(lookup(table, col).filter(|v| !v.is_empty()).unwrap_or_else(|| "UNDEFINED".into()));
                }
            }
            let val = vals.join(".");
            if is_dir {
                out.push('/');
            }
            out.push_str(pre);
            out.push_str(&val);
            out.push_str(suf);
        } else if is_dir {
            out.push('/');
            out.push_str(p);
        } else {
            out.push_str(p);
        }
    }
    if is_dir {
        while out.contains("//") {
            out = out.replace("//", "/");
        }
    }
    Ok(out)
}

/// A statemnt as the node mounts it: `(server, dir)` after substitution, as anaconda.pm does.
pub fn resolve_server_dir(
    value: &str,
    node: &str,
    lookup: &mut dyn FnMut(&str, &str) -> Option<String>,
) -> Result<(String, String), RuleError> {
    let (server, dir) = split_server_dir(value);
    if !value.contains('$') {
        return Ok((server, dir));
    }
    let dir = if dir.contains('$') || dir.contains("#CMD") { sub_vars(&dir, node, true, lookup)? } else { dir };
    let server = if server.is_empty() { server } else { sub_vars(&server, node, false, lookup)? };
    Ok((server, dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(node: &str, v: &str) -> Option<String> {
        trans_regex(node, v).unwrap()
    }

    /// Each expected value was produced by xCAT's own `transRegexAttrs` (perl-xCAT/xCAT/Table.pm,
    /// with its Safe compartment and shared helpers) under perl 5.36.
    #[test]
    fn same_as_xcat_perl() {
        let cases: &[(&str, &str, Option<&str>)] = &[
            ("cn042", r"|\D+(\d+)|10.0.0.($1+0)|", Some("10.0.0.42")),
            ("cn010", r"|\D+(\d+)|10.0.0.($1+0)|", Some("10.0.0.10")),
            ("cn7", r"|cn(\d+)|sn($1%4+1)|", Some("sn4")),
            ("cn150", r"|cn(\d+)|10.1.(($1-1)/100).(($1-1)%100+1)|", Some("10.1.1.50")),
            ("r2n5", r"|r(\d+)n(\d+)|10.($1).0.($2*2)|", Some("10.2.0.10")),
            ("node007", "|10.0.0.($1)|", Some("10.0.0.7")),
            ("frame02node10", "|f($1)n($2+100)|", Some("f2n110")),
            ("cn1", r"|cn(\d+)|x$1|", Some("x$1")),
            ("cn1", r"/\z/-ib/", Some("cn1-ib")),
            ("cn1cn", "/cn/x/", Some("x1cn")),
            ("cn0", r"|cn(\d+)|a($1/0)|", Some("a")),
            ("an005", r"|an(\d+)|aixsn(($1-1)/4+1),aixsn((($1-1)/4+1)%2+1)|", Some("aixsn2,aixsn1")),
            ("cn048", r"|cn(\d+)|10.0.(($1-1)/48+1).254|", Some("10.0.1.254")),
            ("an006", r"|an(\d+)|10.2.0.(($1-1)/4+1):/aixstate|", Some("10.2.0.2:/aixstate")),
            ("cn-7", r"|cn-(\d+)|(-7%3)|", Some("-1")),
            ("node12", r"|node(\d+)|(ipadd(10,0,0,0,$1,1,1))|", Some("10.0.0.13")),
            ("node300", r"|node(\d+)|(ipadd(10,0,0,0,$1,1,1))|", Some("10.0.1.47")),
            ("nodeb3", r"|node(\w)(\d+)|r(a2idx($1))n($2)|", Some("r2n3")),
            ("fred", "|(.*)|x(mknum($1)%4)|", Some("x1")),
            ("cn5", r"|cn(\d+)|(dim2idx(2,10,$1,8))|", Some("113")),
            ("cn5", r#"|cn(\d+)|(skip($1,"3:2"))|"#, Some("3")),
            ("cn4", r#"|cn(\d+)|(skip($1,"3:2"))|"#, Some("-1")),
            ("cn5", r#"|cn(\d+)|($1 . "x")|"#, Some("5x")),
            ("cn08", r"|cn(\d+)|(08+0)|", None),
            ("cn08", r"|cn(\d+)|(010+$1)|", Some("16")),
            ("cn5", r"|cn(\d+)|(2**3)|", Some("8")),
            ("cn5", r"|cn(\d+)|(7/2)|", Some("3")),
            ("cn5", r"|cn(\d+)|(-7/2)|", Some("-3")),
            ("cn5", r"|cn(\d+)|(1+)|", None),
            ("cnab", r"|cn(\w+)|($1+1)|", Some("1")),
            ("cn5", r"|cn(\d+)|($1 x 2)|", Some("55")),
            ("cn5", r#"|cn(\d+)|("a"."b")|"#, Some("ab")),
        ];
        for (node, value, want) in cases {
            assert_eq!(trans_regex(node, value).unwrap().as_deref(), *want, "{node} {value}");
        }
    }

    #[test]
    fn plain_values_pass_through() {
        assert_eq!(t("cn1", "sn1,sn2"), Some("sn1,sn2".into()));
        assert_eq!(t("cn1", ""), None);
        assert_eq!(t("cn1", "/install"), Some("/install".into()));
    }

    #[test]
    fn pipe_arithmetic() {
        assert_eq!(t("cn042", r"|\D+(\d+)|10.0.0.($1+0)|"), Some("10.0.0.42".into()));
        assert_eq!(t("cn010", r"|\D+(\d+)|10.0.0.($1+0)|"), Some("10.0.0.10".into()), "captures are decimal");
        assert_eq!(t("cn7", r"|cn(\d+)|sn($1%4+1)|"), Some("sn4".into()));
        assert_eq!(t("cn8", r"|cn(\d+)|sn($1%4+1)|"), Some("sn1".into()));
        assert_eq!(t("cn150", r"|cn(\d+)|10.1.(($1-1)/100).(($1-1)%100+1)|"), Some("10.1.1.50".into()));
        assert_eq!(t("r2n5", r"|r(\d+)n(\d+)|10.($1).0.($2*2)|"), Some("10.2.0.10".into()));
    }

    #[test]
    fn easy_regex_builds_the_pattern() {
        // |repl| alone: [\D0]*(\d+) per number, leading zeros dropped.
        assert_eq!(t("node007", "|10.0.0.($1)|"), Some("10.0.0.7".into()));
        assert_eq!(t("frame02node10", "|f($1)n($2+100)|"), Some("f2n110".into()));
    }

    #[test]
    fn replacement_is_literal() {
        // xCAT's s/$pat/$repl/ does not expand $1 in the replacement text.
        assert_eq!(t("cn1", "|cn(\\d+)|x$1|"), Some("x$1".into()));
        assert_eq!(t("cn1", r"/\z/-ib/"), Some("cn1-ib".into()));
        assert_eq!(t("cn1", "/cn/sn/"), Some("sn1".into()));
        assert_eq!(t("cn1cn", "/cn/x/"), Some("x1cn".into()), "first match only");
    }

    #[test]
    fn failures() {
        assert!(trans_regex("cn1", r"|sn(\d+)|($1)|").is_err(), "no match");
        assert!(trans_regex("cn1", r"|(?<=c)n|x|").is_err(), "look-behind unsupported");
        // Division by zero fails in Perl's eval: the arithmetic part becomes empty.
        assert_eq!(t("cn0", r"|cn(\d+)|a($1/0)|"), Some("a".into()));
        assert_eq!(t("cn0", r"|cn(\d+)|($1/0)|"), None);
    }

    #[test]
    fn integer_semantics() {
        let re = Regex::new("(.*)").unwrap();
        let caps = re.captures("x").unwrap();
        assert_eq!(eval_integer("(7/2)", &caps).as_deref(), Some("3"));
        assert_eq!(eval_integer("(-7/2)", &caps).as_deref(), Some("-3"));
        assert_eq!(eval_integer("(-7%3)", &caps).as_deref(), Some("-1"));
        assert_eq!(eval_integer("(010+0)", &caps).as_deref(), Some("8"), "octal literal");
        assert_eq!(eval_integer("(08+0)", &caps), None, "illegal octal digit");
        assert_eq!(eval_integer("(2**3*2)", &caps).as_deref(), Some("16"));
        assert_eq!(eval_integer("(1+)", &caps), None);
    }

    #[test]
    fn subvars() {
        let mut lk = |t: &str, c: &str| match (t, c) {
            ("noderes", "xcatmaster") => Some("10.0.0.2".to_string()),
            ("site", "domain") => Some("cl".to_string()),
            _ => None,
        };
        assert_eq!(
            resolve_server_dir("$noderes.xcatmaster:/nodedata", "cn1", &mut lk).unwrap(),
            ("10.0.0.2".into(), "/nodedata".into())
        );
        assert_eq!(
            resolve_server_dir("sn1:/state/$node/x/", "cn1", &mut lk).unwrap(),
            ("sn1".into(), "/state/cn1/x".into())
        );
        assert_eq!(resolve_server_dir("sn1:/d/p$noderes.nfsdir", "cn1", &mut lk).unwrap().1, "/d/pUNDEFINED");
        assert_eq!(
            resolve_server_dir("10.0.0.1:/plain", "cn1", &mut lk).unwrap(),
            ("10.0.0.1".into(), "/plain".into())
        );
        assert!(resolve_server_dir("s:/x/#CMD=uname -r#/$node", "cn1", &mut lk).is_err());
        assert_eq!(split_server_dir("/only/dir"), (String::new(), "/only/dir".into()));
    }
}
