//! What clients send regcache: paths and query strings, `Range`, `Accept`, Basic credentials.

use base64::Engine as _;
use http::{HeaderMap, HeaderValue, Method};
use proptest::prelude::*;
use proptest::strategy::LazyJust;
use regcache::access::parse_basic;
use regcache::http::{query, route, RepoRoute, Route};
use regcache::oci::{AcceptList, Digest, Reference, RepositoryName, DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};

use super::{config, oracle};

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        4 => Just(Method::GET),
        2 => Just(Method::HEAD),
        1 => Just(Method::PUT),
        1 => Just(Method::POST),
        1 => Just(Method::DELETE),
        1 => Just(Method::PATCH),
    ]
}

/// Names by the spec's grammar, some with components named like routes.
fn name() -> impl Strategy<Value = RepositoryName> {
    let component = prop_oneof![
        4 => "[a-z0-9]{1,4}((\\.|_|__|-{1,2})[a-z0-9]{1,4}){0,2}",
        1 => prop_oneof![Just("manifests"), Just("blobs"), Just("tags"), Just("list"), Just("referrers"), Just("v2")].prop_map(String::from),
    ];
    prop::collection::vec(component, 1..5).prop_map(|c| c.join("/").parse().unwrap())
}

fn digest() -> impl Strategy<Value = Digest> {
    any::<Vec<u8>>().prop_map(|b| Digest::sha256_of(&b))
}

fn repo_route() -> impl Strategy<Value = RepoRoute> {
    prop_oneof![
        "[A-Za-z0-9_][A-Za-z0-9._-]{0,30}".prop_map(|t| RepoRoute::Manifest(Reference::Tag(t.parse().unwrap()))),
        digest().prop_map(|d| RepoRoute::Manifest(Reference::Digest(d))),
        digest().prop_map(RepoRoute::Blob),
        LazyJust::new(|| RepoRoute::Tags),
        digest().prop_map(RepoRoute::Referrers),
    ]
}

/// Paths near regcache's routes.
fn near_path() -> impl Strategy<Value = String> {
    let part = prop_oneof![
        Just("/v2".to_owned()),
        Just("/".to_owned()),
        Just("manifests".to_owned()),
        Just("blobs".to_owned()),
        Just("uploads".to_owned()),
        Just("tags/list".to_owned()),
        Just("referrers".to_owned()),
        Just("sha256:".to_owned()),
        Just("%2f".to_owned()),
        Just("..".to_owned()),
        "[a-zA-Z0-9._:-]{1,6}",
    ];
    prop::collection::vec(part, 0..10).prop_map(|p| p.concat())
}

fn header_values() -> impl Strategy<Value = Vec<Vec<u8>>> {
    let item = prop_oneof![
        Just(DOCKER_MANIFEST.to_owned()),
        Just(DOCKER_LIST.to_owned()),
        Just(OCI_MANIFEST.to_owned()),
        Just(OCI_INDEX.to_owned()),
        Just("*/*".to_owned()),
        Just("application/*".to_owned()),
        Just("Application/JSON".to_owned()),
        "[a-zA-Z]{1,4}/[a-zA-Z+.]{1,6}",
        "[ -~]{0,12}",
    ];
    let line = prop::collection::vec((item, prop::option::of("; ?q=0\\.[0-9]")), 0..5)
        .prop_map(|items| items.into_iter().map(|(i, q)| i + &q.unwrap_or_default()).collect::<Vec<_>>().join(", ").into_bytes());
    prop::collection::vec(prop_oneof![4 => line, 1 => any::<Vec<u8>>()], 0..4)
}

proptest! {
    #![proptest_config(config(512, "tests/properties/regressions/requests.txt"))]

    #[test]
    fn every_route_is_routed_from_its_own_path(name in name(), r in repo_route(), head in any::<bool>()) {
        let method = if head { Method::HEAD } else { Method::GET };
        let route_to = Route::Repo(name, r);
        let path = oracle::route_path(&route_to).unwrap();
        prop_assert_eq!(route(&method, &path), Ok(route_to), "{}", path);
        oracle::route_and_query(&method, &path, "");
        // Anything but a read of it is refused as a write.
        oracle::route_and_query(&Method::PUT, &path, "");
    }

    #[test]
    fn any_path_routes_only_to_itself(method in method(), path in near_path(), q in "[a-zA-Z=&%0-9+]{0,30}") {
        oracle::route_and_query(&method, &path, &q);
    }

    #[test]
    fn any_string_routes_only_to_itself(method in method(), path in any::<String>(), q in any::<String>()) {
        oracle::route_and_query(&method, &path, &q);
    }

    #[test]
    fn query_parameters_come_back_as_sent(
        ns in prop::option::of(any::<String>()),
        n in prop::option::of(any::<u32>()),
        last in prop::option::of(any::<String>()),
        artifact_type in prop::option::of(any::<String>()),
        other in prop::option::of((any::<String>(), any::<String>())),
    ) {
        let mut s = url::form_urlencoded::Serializer::new(String::new());
        if let Some((k, v)) = &other {
            prop_assume!(!["ns", "n", "last", "artifactType"].contains(&k.as_str()));
            s.append_pair(k, v);
        }
        for (k, v) in [("ns", &ns), ("last", &last), ("artifactType", &artifact_type)] {
            if let Some(v) = v {
                s.append_pair(k, v);
            }
        }
        if let Some(n) = n {
            s.append_pair("n", &n.to_string());
        }
        let q = s.finish();
        oracle::route_and_query(&Method::GET, "/v2/", &q);
        let parsed = query(Some(&q)).unwrap();
        prop_assert_eq!((parsed.ns, parsed.n, parsed.last, parsed.artifact_type), (ns, n, last, artifact_type));
    }

    #[test]
    fn a_count_beyond_u32_is_refused_without_work(digits in "[1-9][0-9]{10,4000}") {
        let q = format!("n={}", digits);
        oracle::route_and_query(&Method::GET, "/v2/a/tags/list", &q);
        prop_assert!(query(Some(&q)).is_err());
    }

    #[test]
    fn any_range_selects_only_inside_the_blob(value in any::<String>(), size in any::<u64>()) {
        oracle::range(&value, size);
    }

    #[test]
    fn written_ranges_select_what_they_say(
        first in prop::option::of(prop_oneof![any::<u64>().prop_map(|n| n.to_string()), "[0-9]{1,40}", Just("0".to_owned())]),
        last in prop::option::of(prop_oneof![any::<u64>().prop_map(|n| n.to_string()), "[0-9]{1,40}", Just("0".to_owned())]),
        spaces in "[ ]{0,2}",
        size in prop_oneof![Just(0u64), 1..4096u64, any::<u64>(), Just(u64::MAX)],
    ) {
        let s = &spaces;
        let value = format!("{s}bytes={s}{}{s}-{s}{}{s}", first.unwrap_or_default(), last.unwrap_or_default());
        oracle::range(&value, size);
    }

    #[test]
    fn near_ranges_select_only_inside_the_blob(value in "(bytes|=|-|,| |[0-9]{1,3}|99999999999999999999)*", size in prop_oneof![Just(0u64), 1..100u64, any::<u64>()]) {
        oracle::range(&value, size);
    }

    #[test]
    fn accept_lists_name_each_type_once(lines in header_values(), order in any::<prop::sample::Index>()) {
        let refs: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
        oracle::accept(&refs);
        // The key doesn't depend on the order the lines came in.
        let headers = |lines: &[Vec<u8>]| {
            let mut h = HeaderMap::new();
            for l in lines {
                if let Ok(v) = HeaderValue::from_bytes(l) {
                    h.append(http::header::ACCEPT, v);
                }
            }
            AcceptList::from_headers(&h)
        };
        let mut rotated = lines.clone();
        if !rotated.is_empty() {
            let n = rotated.len();
            rotated.rotate_left(order.index(n));
        }
        prop_assert_eq!(headers(&lines).key(), headers(&rotated).key());
    }

    #[test]
    fn credentials_come_back_as_sent(user in "[^:]{0,20}", password in any::<String>(), scheme in "[bB][aA][sS][iI][cC]", pad in "[ ]{1,3}") {
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", user, password));
        let value = format!("{}{}{}", scheme, pad, b64);
        oracle::basic(&value);
        prop_assert_eq!(parse_basic(&value), Some((user, password)));
    }

    #[test]
    fn any_credentials_are_read_within_bounds(value in any::<String>(), b64 in any::<Vec<u8>>()) {
        oracle::basic(&value);
        oracle::basic(&format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(&b64)));
    }
}
