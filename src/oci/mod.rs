//! The registry domain, pure and without I/O: typed digests, repository names, references, manifest
//! media types, manifest verification, the OCI error codes a client sees and who is to blame.

mod digest;
mod error;
mod host;
mod manifest;
mod media;
mod name;
mod upstream_repo;
mod verify;

pub use digest::{Algorithm, Digest, DigestError, Hasher};
pub use error::{first_error, Blame, ErrorBody, ErrorCode};
pub use host::{RegistryHost, DOCKER_HUB};
pub use media::{
    AcceptList, ManifestKind, DOCKER_LIST, DOCKER_MANIFEST, MANIFEST_MEDIA_TYPES, OCI_INDEX, OCI_MANIFEST, SCHEMA1,
    SCHEMA1_SIGNED,
};
pub use manifest::{references, Child, Refs};
pub use name::{is_registry_host, ImageRef, NameError, Reference, RepositoryName, Tag, MAX_TAG_LEN};
pub use upstream_repo::UpstreamRepo;
pub use verify::{verify_manifest, ManifestError, VerifiedManifest};
#[cfg(test)]
pub(crate) use verify::signed_schema1;
