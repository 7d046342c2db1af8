//! Repository names, tags, digests and references: exactly the spec's grammar, and a parsed value
//! prints back to the text it was parsed from.

use proptest::prelude::*;
use regcache::oci::{Algorithm, Digest, ImageRef, Reference, RepositoryName, Tag};

use super::{config, oracle};

/// One path component by the spec's grammar.
const COMPONENT: &str = "[a-z0-9]{1,4}((\\.|_|__|-{1,3})[a-z0-9]{1,4}){0,3}";

/// Names by the spec's grammar (one to five components), of any length.
fn spec_names() -> impl Strategy<Value = String> {
    prop::collection::vec(COMPONENT, 1..6).prop_map(|c| c.join("/"))
}

/// Strings mostly of the characters names, tags and digests are made of, to land near the edges.
fn near_names() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9._/:@-]{0,80}"
}

/// Digests of either algorithm.
fn digests() -> impl Strategy<Value = Digest> {
    (any::<bool>(), any::<Vec<u8>>()).prop_map(|(sha512, b)| Digest::of(if sha512 { Algorithm::Sha512 } else { Algorithm::Sha256 }, &b))
}

proptest! {
    #![proptest_config(config(512, "tests/properties/regressions/names.txt"))]

    #[test]
    fn any_string_parses_only_as_the_spec_allows(s in any::<String>()) {
        oracle::names(&s);
    }

    #[test]
    fn strings_near_names_parse_only_as_the_spec_allows(s in near_names()) {
        oracle::names(&s);
    }

    #[test]
    fn every_name_of_the_grammar_parses_back_to_itself(name in spec_names()) {
        let parsed = name.parse::<RepositoryName>();
        prop_assert_eq!(parsed.is_ok(), name.len() <= 255, "{:?}: {:?}", name, parsed);
        oracle::repository_name(&name);
    }

    #[test]
    fn every_tag_of_the_grammar_parses_back_to_itself(t in "[A-Za-z0-9_][A-Za-z0-9._-]{0,127}") {
        prop_assert_eq!(t.parse::<Tag>().map(|t| t.to_string()), Ok(t.clone()));
        prop_assert_eq!(t.parse::<Reference>().map(|r| r.to_string()), Ok(t.clone()));
    }

    #[test]
    fn every_digest_prints_back_to_itself_and_matches_its_bytes(d in digests(), bytes in any::<Vec<u8>>()) {
        let text = d.to_string();
        prop_assert_eq!(text.parse::<Digest>().ok(), Some(d.clone()));
        prop_assert_eq!(text.parse::<Reference>(), Ok(Reference::Digest(d.clone())));
        oracle::digest(&text);
        oracle::digest(&text.to_uppercase());
        oracle::digest(&text[..text.len() - 1]);
        prop_assert_eq!(d.matches(&bytes), Digest::of(d.algorithm(), &bytes) == d);
    }

    #[test]
    fn every_part_of_an_image_written_is_valid(name in spec_names(), tag in "[ -~]{0,12}", digest in prop::option::of(digests())) {
        let at = digest.map(|d| format!("@{}", d)).unwrap_or_default();
        oracle::image_ref(&format!("{}:{}{}", name, tag, at));
    }

    #[test]
    fn images_print_back_to_what_they_were_parsed_as(
        registry in prop::option::of("(localhost|[a-z0-9]{1,6}\\.[a-z]{2,3})(:[0-9]{1,5})?"),
        name in spec_names(),
        tag in prop::option::of("[A-Za-z0-9_][A-Za-z0-9._-]{0,20}"),
        digest in prop::option::of(digests()),
    ) {
        // Without a registry, a first component with a `.` is read as one (Docker's rule).
        prop_assume!(registry.is_some() || !name.split('/').next().unwrap_or("").contains('.') || !name.contains('/'));
        let mut s = registry.clone().map(|r| format!("{r}/")).unwrap_or_default() + &name;
        if let Some(t) = &tag {
            s += &format!(":{t}");
        }
        if let Some(d) = &digest {
            s += &format!("@{d}");
        }
        oracle::image_ref(&s);
        let Ok(image) = s.parse::<ImageRef>() else {
            prop_assert!(name.len() > 255, "{:?} refused", s);
            return Ok(());
        };
        prop_assert_eq!(image.registry, registry.unwrap_or_else(|| "docker.io".into()));
        prop_assert_eq!(image.name.as_str(), name);
        let want = match (digest, tag) {
            (Some(d), _) => Reference::Digest(d),
            (None, Some(t)) => Reference::Tag(t.parse().unwrap()),
            (None, None) => Reference::Tag("latest".parse().unwrap()),
        };
        prop_assert_eq!(image.reference, want);
    }
}

/// Found by the property tests: a tag written beside a digest was not checked at all
/// (`alpine:bad tag@sha256:…` was accepted, the tag silently dropped).
#[test]
fn a_tag_beside_a_digest_is_checked() {
    let d = Digest::sha256_of(b"");
    for image in [format!("alpine:bad tag@{d}"), format!("alpine:@{d}"), format!("ghcr.io/a/b:.x@{d}")] {
        assert!(image.parse::<ImageRef>().is_err(), "{image}");
        oracle::image_ref(&image);
    }
    let image: ImageRef = format!("alpine:3@{d}").parse().unwrap();
    assert_eq!(image.reference, Reference::Digest(d));
}
