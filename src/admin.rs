//! The maintenance commands that work on the data directory itself: `ls`, `gc` and `verify`. They
//! need the directory to themselves (sled locks it), so they refuse clearly while a server runs.
//!
//! With `[storage] backend = "s3"` each also works on the shared bucket ([`ls_bucket`],
//! [`gc_bucket`], [`verify_bucket`]), which needs no server stopped: eviction and verification
//! are safe beside running nodes (they only delete blobs nobody used lately, or corrupt ones).

use std::io::{self, IsTerminal, Write};
use std::time::Duration;

use std::collections::BTreeMap;

use crate::oci::{is_registry_host, references, Digest, Hasher, NameError, RegistryHost, RepositoryName, UpstreamRepo};
use crate::store::bucket_lru::{self, Limits};
use crate::store::records::folder;
use crate::store::{now_secs, RecordKey, SharedBackend, SharedSizes, Store, TagAnswer};

/// `regcache ls [REPO]`: cached repositories and tags, when each was last revalidated, and sizes.
/// `filter` is `name`, `library/name` or `host/name`.
pub fn ls(store: &Store, filter: Option<&str>, out: &mut dyn Write) -> io::Result<()> {
    let tags = store.index().all_tags().map_err(io::Error::other)?;
    let wanted = filter.map(parse_filter).transpose().map_err(io::Error::other)?;
    let mut current = String::new();
    let mut shown = 0;
    for (upstream, repo, tag, entry) in tags {
        if !wanted.as_ref().is_none_or(|w| matches_filter(w, &upstream, &repo)) {
            continue;
        }
        let heading = format!("{upstream}/{repo}");
        if heading != current {
            writeln!(out, "{heading}")?;
            current = heading;
        }
        // The answer confirmed last (a tag has one per kind of answer: index, image, schema1).
        let Some(entry) = entry.latest() else { continue };
        let size = image_size(store, &entry.digest).map_or_else(|| "?".to_owned(), human_bytes);
        let digest = entry.digest.to_string();
        let short = digest.get(..19).unwrap_or(&digest);
        let age = humantime::format_duration(Duration::from_secs(now_secs().saturating_sub(entry.checked_at)));
        writeln!(out, "  {tag:<24} {short}…  {size:>10}  revalidated {age} ago")?;
        shown += 1;
    }
    if shown == 0 {
        writeln!(out, "nothing cached{}", filter.map(|f| format!(" for {f}")).unwrap_or_default())?;
    }
    writeln!(out, "{} stored in total", human_bytes(store.index().used_bytes()))?;
    Ok(())
}

/// Whether `repo` on `upstream` is what an `ls` filter asks for.
fn matches_filter((host, name): &(Option<RegistryHost>, RepositoryName), upstream: &str, repo: &str) -> bool {
    let stored_under = RegistryHost::new(upstream);
    let same_host = host.as_ref().is_none_or(|h| h.same_registry(&stored_under));
    let short = stored_under.short_name(repo);
    same_host && (repo == name.as_str() || short == Some(name.as_str()))
}

/// `host/name` or `name` → (host, name as stored upstream).
/// The registry host (if written) and repository an `ls` filter names.
fn parse_filter(f: &str) -> Result<(Option<RegistryHost>, RepositoryName), NameError> {
    let (host, name) = match f.split_once('/') {
        Some((h, n)) if is_registry_host(h) => (Some(RegistryHost::new(h)), n),
        _ => (None, f),
    };
    Ok((host, name.parse()?))
}

/// The bytes an image's manifests say it has (an index: its cached children).
fn image_size(store: &Store, digest: &Digest) -> Option<u64> {
    let m = store.index().manifest(digest).ok()??;
    let refs = references(&m.bytes)?;
    let mut total = refs.blob_bytes();
    for child in refs.children {
        if let Some(c) = store.index().manifest(&child.digest).ok().flatten() {
            total = total.saturating_add(references(&c.bytes).map_or(0, |r| r.blob_bytes()));
        }
    }
    Some(total)
}

/// `1.2 GiB`.
pub fn human_bytes(n: u64) -> String {
    bytesize::ByteSize::b(n).to_string_as(false)
}

/// `regcache gc`: evict least-recently-used content down to `target` bytes.
pub fn gc(store: &Store, target: u64, dry_run: bool, out: &mut dyn Write) -> io::Result<()> {
    let before = store.index().used_bytes();
    let gone = store.evict(target, dry_run)?;
    let verb = if dry_run { "would evict" } else { "evicted" };
    for e in &gone {
        writeln!(out, "{verb} {} {} ({})", e.kind, e.digest, human_bytes(e.size))?;
    }
    let freed: u64 = gone.iter().map(|e| e.size).sum();
    writeln!(
        out,
        "{verb} {} items, {}: {} → {} (target {})",
        gone.len(),
        human_bytes(freed),
        human_bytes(before),
        human_bytes(before.saturating_sub(freed)),
        human_bytes(target)
    )?;
    Ok(())
}

/// `regcache verify`: re-hash everything; `Ok(false)` if anything was corrupt.
pub fn verify(store: &Store, out: &mut dyn Write) -> io::Result<bool> {
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template("verifying {bar:40} {pos}/{len} ({eta})")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    let report = store.verify(|done, total| {
        if let Some(b) = &bar {
            b.set_length(total as u64);
            b.set_position(done as u64);
        }
    })?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    for (what, moved) in &report.corrupt {
        match moved {
            Some(p) => writeln!(out, "corrupt: {what}, moved to {}", p.display())?,
            None => writeln!(out, "corrupt: {what}, removed from the index")?,
        }
    }
    writeln!(
        out,
        "verified {} items ({}): {} corrupt",
        report.checked,
        human_bytes(report.bytes),
        report.corrupt.len()
    )?;
    Ok(report.corrupt.is_empty())
}

/// `regcache ls` on the shared bucket: the tags its records hold per upstream and repository
/// (the answer confirmed last, when), and its blobs' count and bytes.
pub async fn ls_bucket(bucket: &dyn SharedBackend, filter: Option<&str>, out: &mut dyn Write) -> io::Result<()> {
    let wanted = filter.map(parse_filter).transpose().map_err(io::Error::other)?;
    // repository (on its upstream) → tag → the latest answer over its kinds.
    let mut repos: BTreeMap<UpstreamRepo, BTreeMap<String, Option<TagAnswer>>> = BTreeMap::new();
    for key in bucket.list_records(folder::TAGS).await? {
        // Keys are validated as they are read: what is printed is never a terminal escape.
        let Ok(RecordKey::Tag { repo, tag, .. }) = key.parse() else { continue };
        if !wanted.as_ref().is_none_or(|w| matches_filter(w, repo.upstream.as_str(), repo.name.as_str())) {
            continue;
        }
        let answer = match bucket.get(&key, crate::store::MAX_TAG_RECORD).await {
            Ok(record) => record.and_then(|v| serde_json::from_slice::<TagAnswer>(&v).ok()),
            // One oversized record is shown as unreadable, not the end of the listing.
            Err(e) if e.kind() == io::ErrorKind::InvalidData => None,
            Err(e) => return Err(e),
        };
        let slot = repos.entry(repo).or_default().entry(tag.to_string()).or_default();
        if answer.as_ref().map(|a| a.checked_at) > slot.as_ref().map(|a| a.checked_at) {
            *slot = answer;
        }
    }
    writeln!(out, "in the bucket:")?;
    let mut tags = 0;
    for (repo, entries) in &repos {
        writeln!(out, "{repo}")?;
        for (tag, answer) in entries {
            tags += 1;
            match answer {
                Some(a) => {
                    let digest = a.digest.to_string();
                    let short = digest.get(..19).unwrap_or(&digest);
                    let age = humantime::format_duration(Duration::from_secs(now_secs().saturating_sub(a.checked_at)));
                    writeln!(out, "  {tag:<24} {short}…  confirmed {age} ago")?;
                }
                None => writeln!(out, "  {tag:<24} (unreadable record)")?,
            }
        }
    }
    if tags == 0 {
        writeln!(out, "no tags in the bucket{}", filter.map(|f| format!(" for {f}")).unwrap_or_default())?;
    }
    let blobs = bucket.list().await?;
    let bytes = blobs.iter().map(|b| b.size).fold(0, u64::saturating_add);
    writeln!(out, "the bucket holds {} blobs, {}", blobs.len(), human_bytes(bytes))?;
    Ok(())
}

/// `regcache gc` on the shared bucket: one eviction round now, as the node `node` (see
/// `store::bucket_lru`), down to `target` bytes of blobs; blobs used within `protected` stay (the
/// nodes use `bucket_lru::PROTECTED`). Evicted blobs are forgotten in `sizes` (this data
/// directory's record of the bucket).
pub async fn gc_bucket(
    bucket: &dyn SharedBackend,
    sizes: &SharedSizes,
    node: &str,
    target: u64,
    protected: Duration,
    dry_run: bool,
    out: &mut dyn Write,
) -> io::Result<()> {
    let now = bucket_lru::Clock::default().now_ms();
    let forget = |b: &bucket_lru::BlobUse| {
        let _ = sizes.remove(&b.digest);
    };
    let limits = Limits { max: target, target, protected };
    let report = bucket_lru::evict_bucket(bucket, node, now, limits, dry_run, forget).await?;
    let verb = if dry_run { "would evict" } else { "evicted" };
    for b in &report.evicted {
        let age = humantime::format_duration(Duration::from_secs(now.saturating_sub(b.last_access) / 1000));
        writeln!(out, "bucket: {verb} blob {} ({}, last used {age} ago)", b.digest, human_bytes(b.size))?;
    }
    let freed = report.bytes_evicted();
    let after = report.bytes_before.saturating_sub(freed);
    writeln!(
        out,
        "bucket: {verb} {} blobs, {}: {} → {} (target {})",
        report.evicted.len(),
        human_bytes(freed),
        human_bytes(report.bytes_before),
        human_bytes(after),
        human_bytes(target)
    )?;
    if after > target {
        let window = humantime::format_duration(protected);
        writeln!(out, "bucket: still over the target: the rest was used within the last {window}")?;
    }
    Ok(())
}

/// `regcache verify` on the shared bucket: re-hash every blob (streamed) and every manifest record;
/// corrupt ones are deleted from the bucket (and forgotten in `sizes`) and named. `Ok(false)` if
/// any was corrupt.
pub async fn verify_bucket(bucket: &dyn SharedBackend, sizes: &SharedSizes, out: &mut dyn Write) -> io::Result<bool> {
    let (mut blobs, mut bytes, mut corrupt) = (0usize, 0u64, 0usize);
    for listed in bucket.list().await? {
        let Some(digest) = listed.digest else {
            writeln!(out, "bucket: not a blob (left alone): {:?}", listed.name)?;
            continue;
        };
        let Some(opened) = bucket.open(&digest, 0..listed.size).await? else { continue };
        let mut reader = opened.reader;
        let mut hasher = Hasher::new(digest.algorithm());
        let mut read = 0u64;
        while let Some(chunk) = reader.next_chunk().await {
            let chunk = chunk?;
            read += chunk.len() as u64;
            hasher.update(&chunk);
        }
        blobs += 1;
        bytes += read;
        if read != opened.size || hasher.finish() != digest {
            corrupt += 1;
            bucket.remove(&digest).await?;
            let _ = sizes.remove(&digest);
            writeln!(out, "corrupt in the bucket: blob {digest}, removed")?;
        }
    }
    let mut manifests = 0usize;
    for key in bucket.list_records(folder::MANIFESTS).await? {
        let Ok(RecordKey::Manifest(digest)) = key.parse() else {
            writeln!(out, "bucket: not a manifest record (left alone): {key:?}")?;
            continue;
        };
        let record = match bucket.get(&key, crate::store::MAX_MANIFEST_RECORD).await {
            Ok(Some(r)) => Some(r),
            Ok(None) => continue,
            // Larger than any manifest regcache keeps: not one it wrote.
            Err(e) if e.kind() == io::ErrorKind::InvalidData => None,
            Err(e) => return Err(e),
        };
        manifests += 1;
        let good = record.is_some_and(|r| crate::store::read_manifest_record(r, &digest).is_ok());
        if !good {
            corrupt += 1;
            bucket.remove_record(&key).await?;
            writeln!(out, "corrupt in the bucket: manifest {digest}, removed")?;
        }
    }
    writeln!(out, "bucket: verified {blobs} blobs ({}) and {manifests} manifests: {corrupt} corrupt", human_bytes(bytes))?;
    Ok(corrupt == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ls_filters_parse_into_a_host_and_a_repository() {
        let cases = [
            ("alpine", None, Some("alpine")),
            ("library/alpine", None, Some("library/alpine")),
            ("GHCR.io/org/app", Some("ghcr.io"), Some("org/app")),
            ("localhost:5000/app", Some("localhost:5000"), Some("app")),
            ("ghcr.io/Bad Name", Some("ghcr.io"), None),
        ];
        for (filter, host, name) in cases {
            match (parse_filter(filter), name) {
                (Ok((h, n)), Some(name)) => {
                    assert_eq!(h.as_ref().map(RegistryHost::as_str), host, "{filter}");
                    assert_eq!(n.as_str(), name, "{filter}");
                }
                (Err(_), None) => {}
                (got, _) => panic!("{filter}: {got:?}"),
            }
        }
    }
}
