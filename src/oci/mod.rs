//! The registry domain, pure and without I/O: typed digests, repository names, references, manifest
//! media types and the OCI error codes a client sees.

mod digest;
mod error;
mod manifest;
mod media;
mod name;

pub use digest::{Algorithm, Digest, DigestError, Hasher};
pub use error::{first_error, ErrorBody, ErrorCode};
pub use media::{AcceptList, MANIFEST_MEDIA_TYPES, SCHEMA1_SIGNED};
pub use manifest::{references, Child, Refs};
pub use name::{is_registry_host, ImageRef, NameError, Reference, RepositoryName, Tag};
