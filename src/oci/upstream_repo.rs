//! A repository on one upstream: what the store keys tags, tag lists and referrers lists by.

use std::fmt;

use super::{RegistryHost, RepositoryName};

/// A repository as one upstream names it (`library/alpine` on `docker.io`): the upstream's name as
/// configured and the repository name asked of it. Shown as `docker.io/library/alpine`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UpstreamRepo {
    /// The upstream's name, as the configuration names it.
    pub upstream: RegistryHost,
    /// The repository, as the upstream names it (Docker Hub's `library/` written out).
    pub name: RepositoryName,
}

impl UpstreamRepo {
    /// `repo` on `upstream`, as the upstream names it (Docker Hub's official images under `library/`).
    pub fn on(upstream: &RegistryHost, repo: &RepositoryName) -> UpstreamRepo {
        UpstreamRepo { upstream: upstream.clone(), name: upstream.upstream_name(repo) }
    }
}

#[cfg(test)]
impl UpstreamRepo {
    /// `repo` on `upstream`, both written out as kept (no `library/` added).
    pub(crate) fn of(upstream: &str, repo: &str) -> UpstreamRepo {
        UpstreamRepo { upstream: RegistryHost::new(upstream), name: repo.parse().expect("a repository name") }
    }
}

impl fmt::Display for UpstreamRepo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.upstream, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_as_the_upstream_names_it_and_shown_with_its_upstream() {
        let name = |s: &str| s.parse::<RepositoryName>().unwrap();
        let cases = [
            ("docker.io", "alpine", "docker.io/library/alpine"),
            ("docker.io", "library/alpine", "docker.io/library/alpine"),
            ("docker.io", "org/app", "docker.io/org/app"),
            ("ghcr.io", "alpine", "ghcr.io/alpine"),
            ("localhost:5000", "team/app", "localhost:5000/team/app"),
        ];
        for (upstream, repo, shown) in cases {
            let r = UpstreamRepo::on(&RegistryHost::new(upstream), &name(repo));
            assert_eq!(r.to_string(), shown, "{upstream} {repo}");
            assert_eq!(r.upstream.as_str(), upstream);
        }
    }
}
