use super::*;

#[test]
fn the_disk_bytes_gauge_moves_with_every_insert_and_removal() {
    let dir = tempfile::tempdir().unwrap();
    let idx = Index::open(&dir.path().join("index")).unwrap();
    let (a, b) = (Digest::sha256_of(b"a"), Digest::sha256_of(b"b"));
    idx.put_blob(&a, 100).unwrap();
    let gauge = Gauge::default();
    idx.count_used_in(gauge.clone());
    assert_eq!(gauge.get(), 100, "what was indexed before counts");
    let m = StoredManifest { media_type: "application/json".into(), bytes: Bytes::from_static(b"{}") };
    let steps: [(&dyn Fn(), i64); 6] = [
        (&|| idx.put_blob(&b, 50).unwrap(), 150),
        (&|| idx.put_blob(&b, 20).unwrap(), 120),
        (&|| drop(idx.put_manifest(&a, &m).unwrap()), 120 + 19),
        (&|| idx.put_referrers(&UpstreamRepo::of("docker.io", "app"), &a, b"[]").unwrap(), 141),
        (&|| idx.remove_manifest(&a).unwrap(), 122),
        (&|| idx.remove_blob(&a).unwrap(), 22),
    ];
    for (step, want) in steps {
        step();
        assert_eq!(gauge.get(), want);
        assert_eq!(gauge.get(), idx.used_bytes() as i64);
    }
}

#[test]
fn round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let idx = Index::open(&dir.path().join("index")).unwrap();
    let d = Digest::sha256_of(b"m");
    assert_eq!(idx.blob_size(&d).unwrap(), None);
    idx.put_blob(&d, 42).unwrap();
    idx.put_blob(&d, 42).unwrap();
    assert_eq!(idx.blob_size(&d).unwrap(), Some(42));
    assert_eq!(idx.used_bytes(), 42);
    idx.remove_blob(&d).unwrap();
    assert_eq!(idx.blob_size(&d).unwrap(), None);
    assert_eq!(idx.used_bytes(), 0);

    let m = StoredManifest { media_type: "application/x".into(), bytes: Bytes::from_static(b"{\"a\":\0}") };
    idx.put_manifest(&d, &m).unwrap();
    let back = idx.manifest(&d).unwrap().unwrap();
    assert_eq!(back.media_type, "application/x");
    assert_eq!(back.bytes, m.bytes);
    let used = idx.used_bytes();
    let other_bytes = StoredManifest { media_type: "application/y".into(), bytes: Bytes::from_static(b"{}") };
    let kept = idx.put_manifest(&d, &other_bytes).unwrap();
    assert_eq!((kept.media_type.as_str(), &kept.bytes), ("application/x", &m.bytes), "stored bytes are never replaced");
    assert_eq!(idx.manifest(&d).unwrap().unwrap().bytes, m.bytes);
    assert_eq!(idx.used_bytes(), used);

    let repo = UpstreamRepo::of("docker.io", "library/alpine");
    let tag: Tag = "3".parse().unwrap();
    let a = TagAnswer { digest: d.clone(), checked_at: 1, published_at: None };
    let b = TagAnswer { digest: Digest::sha256_of(b"n"), checked_at: 2, published_at: None };
    idx.put_tag(&repo, &tag, ManifestKind::Index, &a).unwrap();
    idx.put_tag(&repo, &tag, ManifestKind::Image, &b).unwrap();
    let e = idx.tag(&repo, &tag).unwrap().unwrap();
    assert_eq!(e.answer(ManifestKind::Index), Some(&a));
    assert_eq!(e.answer(ManifestKind::Image), Some(&b));
    assert_eq!(e.answer(ManifestKind::Schema1), None);
    assert_eq!(e.latest(), Some(&b));
    assert_eq!(idx.tag(&UpstreamRepo::of("ghcr.io", "library/alpine"), &tag).unwrap(), None);
    let other = UpstreamRepo::of("docker.io", "library/alpine2");
    idx.put_tag(&other, &tag, ManifestKind::Index, &a).unwrap();
    idx.put_tag(&repo, &"edge".parse().unwrap(), ManifestKind::Index, &a).unwrap();
    assert_eq!(idx.tags_of(&repo).unwrap(), vec![("3".to_owned(), 2), ("edge".to_owned(), 1)], "with the latest confirmation");
}

#[test]
fn keys_are_the_upstream_the_repository_and_the_rest_separated_by_nul() {
    let repo = UpstreamRepo::of("localhost:5000", "org/app");
    let d = Digest::sha256_of(b"m");
    assert_eq!(tag_key(&repo, &"v1".parse().unwrap()), b"localhost:5000\0org/app\0v1");
    assert_eq!(referrers_key(&repo, &d), format!("localhost:5000\0org/app\0{d}"));
    assert_eq!(tag_lists::tag_list_key(&repo), b"localhost:5000\0org/app");
}

#[test]
fn while_the_room_kept_is_given_up_reads_work_and_writes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let idx = Index::open(&dir.path().join("index")).unwrap();
    assert_eq!(std::fs::metadata(dir.path().join("index.reserve")).unwrap().len(), 8 << 20, "room kept");
    let (kept, new) = (Digest::sha256_of(b"kept"), Digest::sha256_of(b"new"));
    idx.put_blob(&kept, 1).unwrap();
    idx.reopen().unwrap();
    assert!(!dir.path().join("index.reserve").exists(), "given up when opened again");
    assert!(idx.is_read_only() && idx.take_repair_due());
    assert_eq!(idx.blob_size(&kept).unwrap(), Some(1), "reads work");
    assert!(idx.put_blob(&new, 2).is_err());
    assert!(idx.shared_sizes().put(&new, 2).is_err());
    assert!(idx.backlog().push(&crate::store::Pending::Blob { digest: new.clone(), size: 2 }).is_err());
    assert!(!idx.restore_reserve(2 * (8 << 20) - 1), "not without room");
    assert!(idx.restore_reserve(u64::MAX) && !idx.is_read_only());
    assert!(dir.path().join("index.reserve").exists(), "written back");
    idx.put_blob(&new, 2).unwrap();
    idx.shared_sizes().put(&new, 2).unwrap();
    assert_eq!(idx.used_bytes(), 3);
}

#[test]
fn a_tag_answer_is_stored_with_its_digest_as_a_string() {
    let d = Digest::sha256_of(b"m");
    let a = TagAnswer { digest: d.clone(), checked_at: 7, published_at: None };
    let json = serde_json::to_string(&a).unwrap();
    assert_eq!(json, format!(r#"{{"digest":"{d}","checked_at":7}}"#));
    assert_eq!(serde_json::from_str::<TagAnswer>(&json).unwrap(), a);
    assert!(serde_json::from_str::<TagAnswer>(r#"{"digest":"md5:00","checked_at":7}"#).is_err());
}

#[test]
fn tags_written_by_the_previous_version_are_of_unknown_kind() {
    let dir = tempfile::tempdir().unwrap();
    let idx = Index::open(&dir.path().join("index")).unwrap();
    let repo = UpstreamRepo::of("docker.io", "library/alpine");
    let tag: Tag = "3".parse().unwrap();
    let d = Digest::sha256_of(b"m");
    // The previous layout: one digest per tag.
    idx.t().unwrap().tags.insert(tag_key(&repo, &tag), format!(r#"{{"digest":"{d}","checked_at":7}}"#).as_bytes()).unwrap();
    let old = TagAnswer { digest: d.clone(), checked_at: 7, published_at: None };
    let e = idx.tag(&repo, &tag).unwrap().unwrap();
    assert_eq!(e, TagEntry { answers: BTreeMap::new(), unknown: Some(old.clone()) });
    assert_eq!(e.latest(), Some(&old), "still listed");
    assert_eq!(idx.all_tags().unwrap().len(), 1);
    let new = TagAnswer { digest: d, checked_at: 8, published_at: None };
    idx.put_tag(&repo, &tag, ManifestKind::Image, &new).unwrap();
    let e = idx.tag(&repo, &tag).unwrap().unwrap();
    assert_eq!(e.answer(ManifestKind::Image), Some(&new));
    assert_eq!(e.unknown, None, "a new answer replaces the one of unknown kind");
}

#[test]
fn referrers_lists_count_in_used_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index");
    let subject = Digest::sha256_of(b"subject");
    let repo = UpstreamRepo::of("docker.io", "library/alpine");
    {
        let idx = Index::open(&path).unwrap();
        idx.put_referrers(&repo, &subject, &[b'x'; 100]).unwrap();
        idx.put_referrers(&repo, &subject, &[b'x'; 40]).unwrap();
        idx.put_referrers(&UpstreamRepo::of("ghcr.io", "library/alpine"), &subject, &[b'y'; 10]).unwrap();
        assert_eq!(idx.used_bytes(), 50, "a list replaced counts once");
        idx.flush().unwrap();
    }
    let idx = Index::open(&path).unwrap();
    assert_eq!(idx.used_bytes(), 50, "counted again on open");
    let lists = idx.referrers_lists().unwrap();
    assert_eq!(lists.iter().map(|(_, d, n)| (d.clone(), *n)).collect::<Vec<_>>(), vec![(subject.clone(), 40), (subject.clone(), 10)]);
    idx.remove_referrers(&lists[0].0).unwrap();
    assert_eq!(idx.used_bytes(), 10);
    assert_eq!(idx.referrers(&repo, &subject).unwrap(), None);
    assert!(idx.referrers(&UpstreamRepo::of("ghcr.io", "library/alpine"), &subject).unwrap().is_some());
}
