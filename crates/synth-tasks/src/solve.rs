//! Answers recomputed from prompts: what lets a problem from any source (an API, a
//! user's file) be checked against the domain's own rules rather than trusted.

use crate::Domain;

/// The answer to `prompt` under `domain`'s rules, or `None` when the prompt is not in
/// the domain's format (or, for `sequence`, continues no arithmetic or geometric
/// progression). Exact for every prompt the domain's generator makes.
///
/// ```
/// use synth_tasks::{Domain, solve};
///
/// assert_eq!(solve(Domain::Arithmetic, "47+25=").as_deref(), Some("72"));
/// assert_eq!(solve(Domain::Code, "x=3;x*=2;x+=1;x?").as_deref(), Some("7"));
/// assert_eq!(solve(Domain::Arithmetic, "what is 47+25?"), None);
/// ```
pub fn solve(domain: Domain, prompt: &str) -> Option<String> {
    match domain {
        Domain::Arithmetic | Domain::MultiStep => {
            let (numbers, operators) = expression(prompt.strip_suffix('=')?)?;
            if domain == Domain::Arithmetic && operators.len() != 1 {
                return None;
            }
            Some(crate::domains::evaluate_with_precedence(&numbers, &operators).to_string())
        }
        Domain::Boolean => {
            let body = prompt.strip_suffix('=')?;
            let mut parser = BooleanParser {
                text: body.as_bytes(),
                at: 0,
            };
            let value = parser.expression()?;
            (parser.at == body.len()).then(|| (if value { "T" } else { "F" }).to_owned())
        }
        Domain::Comparison => {
            let (name, arguments) = call(prompt)?;
            let numbers: Vec<i64> = arguments
                .split(',')
                .map(|n| n.parse().ok())
                .collect::<Option<_>>()?;
            match (name, numbers.as_slice()) {
                ("max", [a, b]) => Some(a.max(b).to_string()),
                ("min", [a, b]) => Some(a.min(b).to_string()),
                ("sort", list) if !list.is_empty() => {
                    let mut list = list.to_vec();
                    list.sort_unstable();
                    Some(crate::domains::join_numbers(&list))
                }
                _ => None,
            }
        }
        Domain::Strings => {
            let (name, text) = call(prompt)?;
            if text.is_empty() || !text.bytes().all(|b| b.is_ascii_lowercase()) {
                return None;
            }
            match name {
                "rev" => Some(text.chars().rev().collect()),
                "sortc" => {
                    let mut chars: Vec<char> = text.chars().collect();
                    chars.sort_unstable();
                    Some(chars.into_iter().collect())
                }
                _ => None,
            }
        }
        Domain::Counting => {
            let (name, arguments) = call(prompt)?;
            let (target, text) = arguments.split_once(',')?;
            let mut target_chars = target.chars();
            let (Some(target), None) = (target_chars.next(), target_chars.next()) else {
                return None;
            };
            (name == "count").then(|| text.chars().filter(|&c| c == target).count().to_string())
        }
        Domain::Code => {
            let mut statements = prompt.strip_suffix("x?")?.split_terminator(';');
            let mut x: i64 = statements.next()?.strip_prefix("x=")?.parse().ok()?;
            for statement in statements {
                let rest = statement.strip_prefix('x')?;
                let (op, k) = rest.split_once('=')?;
                let k: i64 = k.parse().ok()?;
                x = match op {
                    "+" => x.checked_add(k)?,
                    "-" => x.checked_sub(k)?,
                    "*" => x.checked_mul(k)?,
                    _ => return None,
                };
            }
            Some(x.to_string())
        }
        Domain::Sequence => {
            let shown = prompt.strip_suffix(",?")?;
            let terms: Vec<i64> = shown
                .split(',')
                .map(|n| n.parse().ok())
                .collect::<Option<_>>()?;
            if terms.len() < 3 {
                return None;
            }
            let last = *terms.last()?;
            let step = terms[1] - terms[0];
            if terms.windows(2).all(|w| w[1] - w[0] == step) {
                return Some((last + step).to_string());
            }
            if terms[0] != 0 && terms[1] % terms[0] == 0 {
                let ratio = terms[1] / terms[0];
                if terms
                    .windows(2)
                    .all(|w| w[0].checked_mul(ratio) == Some(w[1]))
                {
                    return Some(last.checked_mul(ratio)?.to_string());
                }
            }
            None
        }
    }
}

/// `a op b op c ...` with non-negative integers and `+ - *`.
fn expression(body: &str) -> Option<(Vec<i64>, Vec<char>)> {
    let mut numbers = Vec::new();
    let mut operators = Vec::new();
    let mut current = String::new();
    for c in body.chars() {
        if c.is_ascii_digit() {
            current.push(c);
        } else if matches!(c, '+' | '-' | '*') && !current.is_empty() {
            numbers.push(current.parse().ok()?);
            current.clear();
            operators.push(c);
        } else {
            return None;
        }
    }
    numbers.push(current.parse().ok()?);
    (!operators.is_empty()).then_some((numbers, operators))
}

/// `name(arguments)=`.
fn call(prompt: &str) -> Option<(&str, &str)> {
    let inner = prompt.strip_suffix(")=")?;
    let (name, arguments) = inner.split_once('(')?;
    Some((name, arguments))
}

/// Recursive descent over `T`, `F`, `!`, parentheses, `&` and `|`. The generator
/// parenthesises every binary sub-expression, so a top level `a&b|c` never occurs; it
/// is read left to right here.
struct BooleanParser<'a> {
    text: &'a [u8],
    at: usize,
}

impl BooleanParser<'_> {
    fn expression(&mut self) -> Option<bool> {
        let mut value = self.unary()?;
        while let Some(&op) = self.text.get(self.at) {
            if op != b'&' && op != b'|' {
                break;
            }
            self.at += 1;
            let right = self.unary()?;
            value = if op == b'&' {
                value && right
            } else {
                value || right
            };
        }
        Some(value)
    }

    fn unary(&mut self) -> Option<bool> {
        let c = *self.text.get(self.at)?;
        self.at += 1;
        match c {
            b'T' => Some(true),
            b'F' => Some(false),
            b'!' => Some(!self.unary()?),
            b'(' => {
                let value = self.expression()?;
                (self.text.get(self.at) == Some(&b')')).then(|| {
                    self.at += 1;
                    value
                })
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Rng, generate};

    #[test]
    fn every_generated_problem_is_solved_exactly() {
        let mut rng = Rng::new(11);
        for domain in Domain::ALL {
            for difficulty in 1..=8 {
                for _ in 0..300 {
                    let p = generate(domain, difficulty, &mut rng);
                    assert_eq!(
                        solve(domain, &p.prompt).as_deref(),
                        Some(p.answer.as_str()),
                        "{} d{difficulty}: {}",
                        domain.name(),
                        p.prompt
                    );
                }
            }
        }
    }

    #[test]
    fn malformed_prompts_have_no_answer() {
        for (domain, prompt) in [
            (Domain::Arithmetic, "1+2"),
            (Domain::Arithmetic, "1+2*3="),
            (Domain::MultiStep, "+1="),
            (Domain::Boolean, "T&="),
            (Domain::Boolean, "(T&F="),
            (Domain::Comparison, "max(1,2,3)="),
            (Domain::Comparison, "avg(1,2)="),
            (Domain::Strings, "rev(ABC)="),
            (Domain::Counting, "count(ab,abab)="),
            (Domain::Code, "x=3;y+=2;x?"),
            (Domain::Sequence, "1,2,4,7,?"),
            (Domain::Sequence, "1,2,?"),
        ] {
            assert_eq!(solve(domain, prompt), None, "{prompt}");
        }
    }
}
