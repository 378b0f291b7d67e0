//! SpamAssassin's ReplaceTags plugin (`replace_rules`, `replace_tag`, `replace_pre`,
//! `replace_inter`, `replace_post`, `replace_start`, `replace_end`): the tags are text
//! substituted into a rule's pattern before it is compiled, so the importer substitutes them
//! the same way (`Mail::SpamAssassin::Plugin::ReplaceTags::finish_parsing_end`, 4.0.1) and
//! translates the result like any other pattern (look-around then runs on the backtracking
//! engine).
use std::collections::HashMap;

/// The tag definitions, later definitions replacing earlier ones.
#[derive(Debug, Clone)]
pub struct Tags {
    start: String,
    end: String,
    /// By kind (`tag`, `pre`, `inter`, `post`) then name.
    defs: HashMap<String, HashMap<String, String>>,
}

impl Default for Tags {
    fn default() -> Self {
        Tags { start: "<".into(), end: ">".into(), defs: HashMap::new() }
    }
}

/// SpamAssassin stops substituting nested tags after this many passes.
const MAX_PASSES: usize = 6;

impl Tags {
    /// One `replace_KIND NAME VALUE` line (`start` / `end` take only a value).
    pub fn set(&mut self, kind: &str, name: &str, value: &str) {
        match kind {
            "start" => self.start = value.to_string(),
            "end" => self.end = value.to_string(),
            _ => {
                self.defs.entry(kind.to_string()).or_default().insert(name.to_string(), value.to_string());
            }
        }
    }

    fn get(&self, kind: &str, name: &str) -> Option<&str> {
        self.defs.get(kind)?.get(name).map(String::as_str).filter(|v| !v.is_empty())
    }

    /// Finds the first `START(.+?)END` in `s` at or after `from`: (match start, end, inner).
    fn find_tag<'a>(&self, s: &'a str, from: usize) -> Option<(usize, usize, &'a str)> {
        let (st, en) = (self.start.as_str(), self.end.as_str());
        let a = from + s.get(from..)?.find(st)?;
        let inner_from = a + st.len();
        // `.+?`: at least one character before END.
        let first = s[inner_from..].chars().next()?;
        let b = inner_from + first.len_utf8() + s[inner_from + first.len_utf8()..].find(en)?;
        Some((a, b + en.len(), &s[inner_from..b]))
    }

    /// Removes the first `START` `word` ` ` NAME `END` and returns NAME.
    fn take_directive(&self, re: &mut String, word: &str) -> Option<String> {
        let key = format!("{}{word} ", self.start);
        let a = re.find(&key)?;
        let from = a + key.len();
        let first = re[from..].chars().next()?;
        let b = from + first.len_utf8() + re[from + first.len_utf8()..].find(&self.end)?;
        let name = re[from..b].to_string();
        re.replace_range(a..b + self.end.len(), "");
        Some(name)
    }

    /// The pattern with its tags substituted.
    pub fn apply(&self, pattern: &str) -> String {
        let mut re = pattern.to_string();
        for _ in 0..MAX_PASSES {
            let pre = self.take_directive(&mut re, "pre").and_then(|n| self.get("pre", &n));
            let post = self.take_directive(&mut re, "post").and_then(|n| self.get("post", &n));
            let inter = self.take_directive(&mut re, "inter").and_then(|n| self.get("inter", &n));
            // Perl's split(/(<[^<>]+>)/): tags and the text between them (empty between two
            // adjacent tags). SpamAssassin splits `(?^flags:…)`, so the text before the first
            // tag is never the empty first field; here the delimiters play that part.
            let mut pieces = split_tags(&re, &self.start, &self.end);
            for (i, p) in pieces.iter_mut().enumerate() {
                if let Some(pre) = pre {
                    if let Some((a, _, _)) = self.find_tag(p, 0) {
                        p.insert_str(a, pre);
                    }
                }
                if let Some(post) = post {
                    let mut at = 0;
                    while let Some((_, b, _)) = self.find_tag(p, at) {
                        p.insert_str(b, post);
                        at = b + post.len();
                    }
                }
                if let Some(inter) = inter {
                    if p.is_empty() && i > 0 {
                        *p = inter.to_string();
                    }
                }
            }
            let mut again = false;
            for p in pieces.iter_mut() {
                if let Some((_, _, name)) = self.find_tag(p, 0) {
                    if let Some(value) = self.get("tag", name) {
                        let tag = format!("{}{name}{}", self.start, self.end);
                        *p = p.replace(&tag, value);
                        again |= self.find_tag(value, 0).is_some();
                    }
                }
            }
            re = pieces.concat();
            if !again {
                break;
            }
        }
        re
    }
}

/// Perl's `split(/(START[^START END]+END)/, s)` with trailing empty fields removed.
fn split_tags(s: &str, start: &str, end: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut last = 0;
    let mut i = 0;
    while let Some(a) = s[i..].find(start).map(|k| i + k) {
        let from = a + start.len();
        match s[from..].find(end).map(|k| from + k) {
            Some(b) if b > from && !s[from..b].contains(start) && !s[from..b].contains(end) => {
                out.push(s[last..a].to_string());
                out.push(s[a..b + end.len()].to_string());
                last = b + end.len();
                i = last;
            }
            _ => i = from,
        }
    }
    out.push(s[last..].to_string());
    while out.last().is_some_and(String::is_empty) {
        out.pop();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stock() -> Tags {
        let mut t = Tags::default();
        t.set("tag", "V", "(?:[vV]|\\\\\\/)");
        t.set("tag", "I", "[iI1!|]");
        t.set("tag", "A", "<AA>");
        t.set("tag", "AA", "[aA@]");
        t.set("inter", "W2", "\\W{0,2}");
        t.set("post", "P3", "{1,3}");
        t
    }

    #[test]
    fn inter_post_and_nested_tags_as_spamassassin_does() {
        let t = stock();
        assert_eq!(
            t.apply("/<inter W2><post P3>x<V><I><A>/i"),
            "/x(?:[vV]|\\\\\\/){1,3}\\W{0,2}[iI1!|]{1,3}\\W{0,2}[aA@]{1,3}/i"
        );
        // Unknown tags stay as written; patterns without tags are unchanged.
        assert_eq!(t.apply("/<Q>(?<!a)b/"), "/<Q>(?<!a)b/");
    }
}
