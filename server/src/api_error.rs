//! `ApiError`: the single mapping from engine and server failures to an HTTP status and npm's
//! error body `{"error": "<type>", "message": "..."}` (SPEC section 6). Matches over engine
//! error enums are exhaustive (no `_` arm), so a new variant forces a decision here.
//! 5xx messages never echo internals; the detail is logged once, here.

use engine::blob::BlobError;
use engine::names::{DistTagError, NameError, VersionError};
use engine::publish::PublishError;
use engine::shard::{ReadError, WriteError};

use crate::auth::LoginError;
use crate::http::respond::Reply;
use crate::writer::WriterGone;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    pub status: u16,
    pub kind: &'static str,
    pub message: String,
}

impl ApiError {
    /// Builds an error answer.
    pub fn new(status: u16, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            kind,
            message: message.into(),
        }
    }

    /// 400 with a message.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "bad_request", message)
    }

    /// 401: a token is needed.
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(401, "unauthorized", message)
    }

    /// 404 with a message.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(404, "not_found", message)
    }

    fn internal(what: &str, detail: &dyn std::fmt::Display) -> ApiError {
        tracing::error!(error = %detail, "{what}");
        ApiError::new(500, "internal_error", format!("{what}; see the server log"))
    }

    fn storage_full() -> ApiError {
        ApiError::new(
            507,
            "insufficient_storage",
            "the registry's disk is full; the write was refused and the package is \
             unchanged; retry when space is available",
        )
    }

    /// The reply for this error.
    #[must_use]
    pub fn reply(&self) -> Reply {
        Reply::error(self.status, self.kind, &self.message)
    }
}

impl From<NameError> for ApiError {
    fn from(e: NameError) -> ApiError {
        ApiError::new(400, "invalid_package_name", e.to_string())
    }
}

impl From<VersionError> for ApiError {
    fn from(e: VersionError) -> ApiError {
        ApiError::new(400, "invalid_version", e.to_string())
    }
}

impl From<DistTagError> for ApiError {
    fn from(e: DistTagError) -> ApiError {
        ApiError::new(400, "invalid_dist_tag", e.to_string())
    }
}

impl From<PublishError> for ApiError {
    fn from(e: PublishError) -> ApiError {
        let message = e.to_string();
        let (status, kind) = match e {
            PublishError::MalformedJson { .. } => (400, "malformed_json"),
            PublishError::Missing { .. }
            | PublishError::WrongType { .. }
            | PublishError::NoVersions
            | PublishError::MissingAttachment { .. }
            | PublishError::AttachmentCount { .. } => (400, "bad_request"),
            PublishError::NameMismatch { .. } => (400, "name_mismatch"),
            PublishError::InvalidName(_) => (400, "invalid_package_name"),
            PublishError::InvalidVersion(_) | PublishError::VersionMismatch { .. } => {
                (400, "invalid_version")
            }
            PublishError::InvalidDistTag(_) => (400, "invalid_dist_tag"),
            PublishError::BadBase64 { .. } => (400, "bad_base64"),
            PublishError::LengthMismatch { .. } | PublishError::Integrity(_) => {
                (422, "integrity_mismatch")
            }
            PublishError::TarballTooLarge { .. } => (413, "payload_too_large"),
            PublishError::BadTarball { .. } => (400, "bad_tarball"),
            PublishError::VersionExists { .. } | PublishError::VersionReused { .. } => {
                (409, "version_exists")
            }
            PublishError::NotMaintainer { .. } => (403, "forbidden"),
            PublishError::PackageNotFound { .. }
            | PublishError::VersionNotFound { .. }
            | PublishError::TagNotFound { .. } => (404, "not_found"),
            PublishError::LatestTagRequired | PublishError::NoMaintainers => (400, "bad_request"),
            PublishError::RevConflict { .. } => (409, "conflict"),
            PublishError::RevMismatch { .. } | PublishError::BadRev { .. } => (400, "bad_request"),
            PublishError::UnknownUser { .. } => (404, "not_found"),
            PublishError::TooManyVersions { .. } => (422, "too_many_versions"),
        };
        ApiError::new(status, kind, message)
    }
}

impl From<BlobError> for ApiError {
    fn from(e: BlobError) -> ApiError {
        if e.is_storage_full() {
            return ApiError::storage_full();
        }
        match e {
            BlobError::NotFound { .. } => ApiError::internal("a tarball's blob is missing", &e),
            BlobError::Corrupt { .. } => ApiError::internal("a tarball's blob is corrupt", &e),
            BlobError::Io { .. } => ApiError::internal("blob store I/O failed", &e),
        }
    }
}

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> ApiError {
        if e.is_storage_full() {
            tracing::error!(error = %e, "write refused: disk full");
            return ApiError::storage_full();
        }
        match e {
            WriteError::NoSpace { .. } => ApiError::storage_full(),
            WriteError::Refused(refused) => refused.into(),
            WriteError::Blob(blob) => blob.into(),
            WriteError::Storage { .. } | WriteError::Corrupt { .. } => {
                ApiError::internal("the write failed in storage", &e)
            }
            WriteError::Poisoned { .. } => {
                tracing::error!(error = %e, "write refused");
                ApiError::new(
                    503,
                    "service_unavailable",
                    "writes are stopped after a storage failure; restart the registry",
                )
            }
        }
    }
}

impl From<ReadError> for ApiError {
    fn from(e: ReadError) -> ApiError {
        match e {
            ReadError::Storage { .. } => ApiError::internal("a read failed in storage", &e),
            ReadError::Corrupt { .. } => ApiError::internal("a stored record is corrupt", &e),
            ReadError::Blob(blob) => blob.into(),
        }
    }
}

impl From<LoginError> for ApiError {
    fn from(e: LoginError) -> ApiError {
        match e {
            LoginError::BadCredentials => ApiError::unauthorized(e.to_string()),
            LoginError::RegistrationClosed => ApiError::new(403, "forbidden", e.to_string()),
            LoginError::Storage(_) | LoginError::WorkerGone => {
                ApiError::internal("the auth store failed", &e)
            }
        }
    }
}

impl From<WriterGone> for ApiError {
    fn from(e: WriterGone) -> ApiError {
        ApiError::internal("a shard writer stopped", &e)
    }
}
