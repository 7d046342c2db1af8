//! `WWW-Authenticate` challenges: `Bearer realm="…",service="…",scope="…"` and `Basic realm="…"`.

use std::collections::HashMap;

/// One parsed challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    /// Get a token from `realm`, then retry with `Authorization: Bearer`.
    Bearer {
        /// The token endpoint.
        realm: String,
        /// The `service` parameter to send it.
        service: Option<String>,
        /// The scope the registry asked for, if it said.
        scope: Option<String>,
    },
    /// Retry with `Authorization: Basic`.
    Basic,
}

/// The challenge in the `WWW-Authenticate` header values, preferring Bearer. `None` if none parses.
pub fn parse_challenges<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<Challenge> {
    let mut basic = false;
    for value in values {
        for (scheme, params) in split_challenges(value) {
            if scheme.eq_ignore_ascii_case("bearer") {
                if let Some(realm) = params.get("realm").filter(|r| !r.is_empty()) {
                    return Some(Challenge::Bearer {
                        realm: realm.clone(),
                        service: params.get("service").cloned(),
                        scope: params.get("scope").cloned(),
                    });
                }
            } else if scheme.eq_ignore_ascii_case("basic") {
                basic = true;
            }
        }
    }
    basic.then_some(Challenge::Basic)
}

/// Split one header value into `(scheme, params)` pairs. Quoted strings may hold commas and `\"`.
fn split_challenges(value: &str) -> Vec<(String, HashMap<String, String>)> {
    let mut out: Vec<(String, HashMap<String, String>)> = Vec::new();
    let mut rest = value.trim();
    while !rest.is_empty() {
        rest = rest.trim_start_matches([',', ' ', '\t']);
        // A token followed by `=` is a parameter of the current challenge; otherwise a new scheme.
        let end = rest.find(|c: char| c == '=' || c == ',' || c.is_whitespace()).unwrap_or(rest.len());
        let word = &rest[..end];
        if word.is_empty() {
            break;
        }
        let after = rest[end..].trim_start();
        if let (Some(stripped), Some(current)) = (after.strip_prefix('='), out.last_mut()) {
            let (val, remaining) = parse_value(stripped.trim_start());
            current.1.insert(word.to_ascii_lowercase(), val);
            rest = remaining;
        } else {
            out.push((word.to_owned(), HashMap::new()));
            rest = after;
        }
    }
    out
}

/// A quoted string or a token, and what follows it.
fn parse_value(s: &str) -> (String, &str) {
    if let Some(quoted) = s.strip_prefix('"') {
        let mut val = String::new();
        let mut chars = quoted.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        val.push(n);
                    }
                }
                '"' => return (val, &quoted[i + 1..]),
                _ => val.push(c),
            }
        }
        (val, "")
    } else {
        let end = s.find(',').unwrap_or(s.len());
        (s[..end].trim().to_owned(), &s[end..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub() {
        let h = r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#;
        assert_eq!(
            parse_challenges([h]),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/alpine:pull".into()),
            })
        );
    }

    #[test]
    fn table() {
        let cases: &[(&[&str], Option<Challenge>)] = &[
            (&[r#"Basic realm="Registry Realm""#], Some(Challenge::Basic)),
            (&["basic"], Some(Challenge::Basic)),
            (&[""], None),
            (&["Bearer"], None),
            (&[r#"Bearer service="x""#], None),
            (
                &[r#"Basic realm="r", Bearer realm="https://a/t",scope="repository:a/b:pull,push""#],
                Some(Challenge::Bearer {
                    realm: "https://a/t".into(),
                    service: None,
                    scope: Some("repository:a/b:pull,push".into()),
                }),
            ),
            (
                &["Basic realm=x", "bearer Realm=https://q/t , service=quay.io"],
                Some(Challenge::Bearer { realm: "https://q/t".into(), service: Some("quay.io".into()), scope: None }),
            ),
            (
                &[r#"Bearer realm="https://a/\"t\"",service="s""#],
                Some(Challenge::Bearer { realm: "https://a/\"t\"".into(), service: Some("s".into()), scope: None }),
            ),
            (&[r#"Bearer realm="unterminated"#], Some(Challenge::Bearer { realm: "unterminated".into(), service: None, scope: None })),
        ];
        for (input, want) in cases {
            assert_eq!(&parse_challenges(input.iter().copied()), want, "{input:?}");
        }
    }
}
