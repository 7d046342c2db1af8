//! What upstreams send regcache's client: `WWW-Authenticate` challenges and token responses.

use std::time::Duration;

use proptest::prelude::*;
use regcache::upstream::{parse_challenges, parse_token_response, Challenge};
use serde_json::{json, Value};

use super::{config, oracle};

/// `s` as an HTTP quoted string.
fn quoted(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Parameter values: printable, with the characters quoting is for.
fn value() -> impl Strategy<Value = String> {
    "[ -~]{0,40}"
}

/// A scheme name in any case.
fn scheme(name: &'static str) -> impl Strategy<Value = String> {
    prop::collection::vec(any::<bool>(), name.len()).prop_map(move |upper| {
        name.chars().zip(upper).map(|(c, u)| if u { c.to_ascii_uppercase() } else { c }).collect()
    })
}

proptest! {
    #![proptest_config(config(512, "tests/properties/regressions/upstream.txt"))]

    #[test]
    fn any_header_is_read_within_bounds(values in prop::collection::vec("[ -~\t]{0,80}", 0..4)) {
        let values: Vec<&str> = values.iter().map(String::as_str).collect();
        oracle::challenges(&values);
    }

    #[test]
    fn near_challenges_are_read_within_bounds(values in prop::collection::vec("(Bearer|Basic|realm|scope|=|\"|\\\\|,| |x)*", 0..4)) {
        let values: Vec<&str> = values.iter().map(String::as_str).collect();
        oracle::challenges(&values);
    }

    #[test]
    fn quoted_parameters_come_back_exactly(
        bearer in scheme("bearer"),
        realm in "[ -~]{1,40}",
        service in prop::option::of(value()),
        scope in prop::option::of(value()),
        extra in prop::option::of(("[a-z]{1,6}", value())),
        order in any::<prop::sample::Index>(),
        basic_first in prop::option::of(scheme("basic")),
        gap in "[ ]{0,2}",
    ) {
        let mut params = vec![format!("realm={}", quoted(&realm))];
        if let Some(s) = &service {
            params.push(format!("service={}", quoted(s)));
        }
        if let Some(s) = &scope {
            params.push(format!("scope={}", quoted(s)));
        }
        if let Some((k, v)) = &extra {
            prop_assume!(!["realm", "service", "scope"].contains(&k.as_str()));
            params.push(format!("{k}={}", quoted(v)));
        }
        let n = params.len();
        params.rotate_left(order.index(n));
        let mut header = format!("{bearer} {}", params.join(&format!(",{gap}")));
        if let Some(basic) = basic_first {
            header = format!("{basic} realm=\"r\", {header}");
        }
        oracle::challenges(&[&header]);
        prop_assert_eq!(parse_challenges([header.as_str()]), Some(Challenge::Bearer { realm, service, scope }), "{}", header);
    }

    #[test]
    fn any_body_is_read_within_bounds(body in any::<Vec<u8>>()) {
        oracle::token_response(&body);
    }

    #[test]
    fn the_token_is_whichever_field_holds_one(
        token in prop::option::of(prop_oneof![Just(String::new()), "[!-~]{1,20}"]),
        access_token in prop::option::of(prop_oneof![Just(String::new()), "[!-~]{1,20}"]),
        expires_in in prop::option::of(prop_oneof![
            any::<u64>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(|f| json!(f)),
            any::<u64>().prop_map(|n| json!(n.to_string())),
            "[ -~]{0,8}".prop_map(Value::from),
        ]),
    ) {
        let mut doc = json!({});
        if let Some(t) = &token {
            doc["token"] = json!(t);
        }
        if let Some(t) = &access_token {
            doc["access_token"] = json!(t);
        }
        if let Some(e) = &expires_in {
            doc["expires_in"] = e.clone();
        }
        let body = serde_json::to_vec(&doc).unwrap();
        oracle::token_response(&body);
        let want = token.clone().filter(|t| !t.is_empty()).or(access_token.clone().filter(|t| !t.is_empty()));
        let got = parse_token_response(&body);
        prop_assert_eq!(got.as_ref().ok().map(|(t, _)| t.expose().to_owned()), want);
        if let Ok((_, lifetime)) = got {
            // The lifetime claimed, as whole seconds, if it is a positive number of them.
            let claimed = match &expires_in {
                Some(Value::Number(n)) => n.as_u64().or_else(|| n.as_f64().filter(|f| f.is_finite() && *f >= 1.0).map(|f| f as u64)),
                Some(Value::String(s)) => s.trim().parse::<u64>().ok(),
                _ => None,
            };
            let want = claimed.filter(|s| *s > 0).unwrap_or(60).min(24 * 60 * 60);
            prop_assert_eq!(lifetime, Duration::from_secs(want));
        }
    }
}

/// Found by the property tests: `{"token":"","access_token":"A"}` was refused as having no token
/// (the empty `token` was taken, then found empty).
#[test]
fn an_empty_token_beside_an_access_token_is_no_token() {
    let (token, _) = parse_token_response(br#"{"token":"","access_token":"A"}"#).unwrap();
    assert_eq!(token.expose(), "A");
    oracle::token_response(br#"{"token":"","access_token":"A"}"#);
}
