//! Which tokens weighed most in one message's spam probability, for the review page's
//! detail view (issue 13): "why did the classifier say 0.98?".
//!
//! Not the classification path ([`super::Model::classify`] works on token hashes and keeps
//! nothing): this tokenizes the same header block again with the model's own tokenizer,
//! takes the clues the combining step uses ([`super::Model::clues`], the same
//! strength cut-off and cap) and keeps the [`TOP`] whose log-odds `ln(p / (1 − p))` are
//! largest in magnitude: the tokens that pulled the probability furthest towards spam or
//! ham. It runs only for messages the model was consulted for that are spam, fired a rule or
//! lean to spam, and only when the decision history records them (see
//! `session::verdicts::evaluate`): the clues stay with the verdict for the session and the
//! verdict memo, so plain ham carries none.
use serde::{Deserialize, Serialize};

use super::Model;
use crate::rules::Headers;

/// Tokens kept per message.
pub const TOP: usize = 10;
/// Longest token text kept, in characters (tokens are header words and addresses).
const TOKEN_CHARS: usize = 40;

/// One token's weight in a message's probability.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Clue {
    pub token: String,
    /// The token's spam probability f(w) (Robinson), as the combining step used it.
    pub probability: f64,
    /// Trained spam and ham messages that had the token.
    pub spam: u32,
    pub ham: u32,
}

impl Clue {
    /// `ln(p / (1 − p))`: positive towards spam, negative towards ham.
    pub fn log_odds(&self) -> f64 {
        let p = self.probability.clamp(1e-9, 1.0 - 1e-9);
        (p / (1.0 - p)).ln()
    }
}

/// The [`TOP`] tokens of `h` (plus the `rule:` tokens of `rules_fired`) that weighed most
/// in `model`'s probability, strongest first. Empty when the model is not ready.
pub fn weighed_most(model: &Model, h: &Headers, rules_fired: &[&str]) -> Vec<Clue> {
    if !model.ready() {
        return Vec::new();
    }
    let tokens = model.tokenizer().token_set(h, rules_fired);
    let mut clues: Vec<Clue> = model
        .clues(tokens.iter())
        .into_iter()
        .map(|(t, p)| {
            let c = model.counts(t);
            let token = match t.char_indices().nth(TOKEN_CHARS) {
                Some((i, _)) => format!("{}…", &t[..i]),
                None => t.to_string(),
            };
            Clue { token, probability: p, spam: c.spam, ham: c.ham }
        })
        .collect();
    clues.sort_by(|a, b| b.log_odds().abs().total_cmp(&a.log_odds().abs()).then_with(|| a.token.cmp(&b.token)));
    clues.truncate(TOP);
    clues
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::Tokenizer;

    fn model() -> Model {
        let tok = Tokenizer::new(std::iter::empty());
        let mut m = Model::default().with_minimums(1, 1).with_tokenizer(tok.clone());
        let spam = Headers::parse(b"From: Deals <win@prize.example>\r\nSubject: win a prize now\r\n\r\n");
        let ham = Headers::parse(b"From: Ann <ann@work.example>\r\nSubject: meeting notes\r\n\r\n");
        for _ in 0..5 {
            m.learn(&tok.tokens(&spam, &["SPAM_DOMAIN"]), true, 1);
            m.learn(&tok.tokens(&ham, &[]), false, 1);
        }
        m
    }

    #[test]
    fn strongest_tokens_first_with_counts() {
        let m = model();
        let h = Headers::parse(b"From: Deals <win@prize.example>\r\nSubject: meeting prize\r\n\r\n");
        let clues = weighed_most(&m, &h, &["SPAM_DOMAIN"]);
        assert!(!clues.is_empty() && clues.len() <= TOP);
        // Sorted by |log-odds|, and both directions appear: "prize" pulls to spam,
        // "meeting" to ham.
        for w in clues.windows(2) {
            assert!(w[0].log_odds().abs() >= w[1].log_odds().abs());
        }
        let find = |needle: &str| clues.iter().find(|c| c.token.contains(needle)).cloned();
        let prize = find("prize").expect("a spam clue");
        assert!(prize.probability > 0.5 && prize.spam == 5 && prize.ham == 0, "{prize:?}");
        let meeting = find("meeting").expect("a ham clue");
        assert!(meeting.probability < 0.5 && meeting.ham == 5, "{meeting:?}");
        assert!(clues.iter().any(|c| c.token.contains("SPAM_DOMAIN")), "{clues:?}");
        // The same clues the probability was combined from.
        let p = m.classify(&h, &["SPAM_DOMAIN"]).unwrap();
        assert!((0.0..=1.0).contains(&p));
    }

    #[test]
    fn an_untrained_model_explains_nothing() {
        let m = Model::default();
        let h = Headers::parse(b"Subject: x\r\n\r\n");
        assert!(weighed_most(&m, &h, &[]).is_empty());
    }
}
