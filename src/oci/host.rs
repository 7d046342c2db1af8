//! A registry host as clients name it, and the one place that knows Docker Hub's aliases and its
//! `library/` rule.

use std::fmt;

use super::RepositoryName;

/// The name Docker Hub goes by when no registry host is written.
pub const DOCKER_HUB: &str = "docker.io";

/// The names Docker Hub answers to.
const DOCKER_HUB_ALIASES: [&str; 3] = [DOCKER_HUB, "registry-1.docker.io", "index.docker.io"];

/// Whether `host` is a plain host name as an upstream is configured: letters, digits and `.-:[]`
/// (a name, an IPv4 or `[IPv6]` address, a port), beginning with a letter, a digit or `[`.
/// Nothing else: an upstream's name is a component of the shared bucket's record keys, which must
/// read back as written, print safely and stay in their folder (so never `.` or `..`).
pub fn is_plain_host(host: &str) -> bool {
    let starts = host.chars().next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '[');
    starts && host.chars().all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
}

/// A registry host as clients name it (`docker.io`, `ghcr.io`, `localhost:5000`), lowercased.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RegistryHost(String);

impl RegistryHost {
    /// The host `host` names, lowercased (no other checks: the caller validates the shape).
    pub fn new(host: &str) -> RegistryHost {
        RegistryHost(host.to_ascii_lowercase())
    }

    /// Docker Hub.
    pub fn docker_hub() -> RegistryHost {
        RegistryHost(DOCKER_HUB.to_owned())
    }

    /// The host name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this names Docker Hub (by any of its aliases).
    pub fn is_docker_hub(&self) -> bool {
        DOCKER_HUB_ALIASES.contains(&self.0.as_str())
    }

    /// Whether `other` names the same registry: the same host, or both Docker Hub.
    pub fn same_registry(&self, other: &RegistryHost) -> bool {
        self == other || (self.is_docker_hub() && other.is_docker_hub())
    }

    /// The name to ask this registry for: Docker Hub's official images (one component) live under
    /// `library/`.
    pub fn upstream_name(&self, repo: &RepositoryName) -> RepositoryName {
        if self.is_docker_hub() && repo.components() == 1 {
            repo.with_prefix("library").unwrap_or_else(|_| repo.clone())
        } else {
            repo.clone()
        }
    }

    /// The name people write for `repo` as stored under this registry: `library/alpine` on
    /// Docker Hub is `alpine`. `None` when there is no shorter name.
    pub fn short_name<'a>(&self, repo: &'a str) -> Option<&'a str> {
        repo.strip_prefix("library/").filter(|_| self.is_docker_hub())
    }
}

impl fmt::Display for RegistryHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for RegistryHost {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for RegistryHost {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_answers_to_its_aliases_and_keeps_official_images_under_library() {
        let cases = [
            ("docker.io", true, "alpine", "library/alpine"),
            ("Registry-1.Docker.io", true, "alpine", "library/alpine"),
            ("index.docker.io", true, "org/app", "org/app"),
            ("ghcr.io", false, "alpine", "alpine"),
            ("docker.io.evil.example", false, "alpine", "alpine"),
        ];
        for (host, hub, repo, upstream) in cases {
            let h = RegistryHost::new(host);
            assert_eq!(h.is_docker_hub(), hub, "{host}");
            assert_eq!(h.same_registry(&RegistryHost::docker_hub()), hub, "{host}");
            assert_eq!(h.upstream_name(&repo.parse().unwrap()).as_str(), upstream, "{host} {repo}");
        }
        assert!(RegistryHost::new("ghcr.io").same_registry(&RegistryHost::new("GHCR.io")));
        assert_eq!(RegistryHost::docker_hub().short_name("library/alpine"), Some("alpine"));
        assert_eq!(RegistryHost::new("ghcr.io").short_name("library/alpine"), None);
    }
}
