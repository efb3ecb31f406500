//! `GET /NAME` (full or abbreviated packument) and `GET /NAME/VERSION|TAG`.
//! Packuments are served from the pre-rendered served record: pick the representation from
//! `Accept`, answer 304 when the client sent a matching validator, gzip when accepted.

use engine::names::{DistTag, PackageName, Version};
use engine::served::DocKind;

use crate::api_error::ApiError;
use crate::cores::Core;
use crate::http::parse::RequestHead;
use crate::http::respond::{Etag, Reply, ABBREVIATED_JSON, JSON};

pub(super) fn full_or_abbreviated(
    name: &PackageName,
    head: &RequestHead<'_>,
    core: &Core,
) -> Result<Reply, ApiError> {
    let shard = core.shared.shard(name.as_str());
    let content_type = if head.accept_abbreviated {
        ABBREVIATED_JSON
    } else {
        JSON
    };
    if let Some(base) = core.shared.rebase_for(head.host) {
        let kind = DocKind::of(head.accept_abbreviated, false);
        let document = core.packages.borrow_mut().doc(shard, name.as_str(), kind)?;
        let document = document.ok_or_else(|| not_found(name))?;
        let rebased = core.rebased.borrow_mut().get(
            name.as_str(),
            &document,
            head.accept_abbreviated,
            shard.base_url(),
            &base,
        );
        if head
            .if_none_match
            .is_some_and(|v| matches_any(v, |c| c == &rebased.etag[..]))
        {
            return Ok(Reply::not_modified(Etag::new(&rebased.etag), true));
        }
        let mut reply = Reply::json(200, rebased.body.clone());
        reply.content_type = content_type;
        reply.vary_accept = true;
        reply.etag = Etag::new(&rebased.etag);
        return Ok(reply);
    }
    // One lookup: the representation this client takes. Both encodings of a revision share
    // one validator, so a client that switches encodings still gets its 304.
    let kind = DocKind::of(head.accept_abbreviated, head.accept_gzip);
    let document = core.packages.borrow_mut().doc(shard, name.as_str(), kind)?;
    let document = document.ok_or_else(|| not_found(name))?;
    if head
        .if_none_match
        .is_some_and(|v| matches_any(v, |c| document.etag_matches(c)))
    {
        return Ok(Reply::not_modified(Etag::new(document.etag()), true));
    }
    let mut reply = Reply::document(document);
    reply.content_type = content_type;
    reply.vary_accept = true;
    reply.gzip = kind.is_gzip();
    Ok(reply)
}

pub(super) fn version(
    name: &PackageName,
    spec: &str,
    head: &RequestHead<'_>,
    core: &Core,
) -> Result<Reply, ApiError> {
    let shard = core.shared.shard(name.as_str());
    let stored = shard
        .read_stored(name.as_str())?
        .ok_or_else(|| not_found(name))?;
    let version = if let Ok(version) = Version::parse(spec) {
        version.as_str().to_owned()
    } else {
        let tag = DistTag::parse(spec)?;
        stored
            .dist_tags()
            .get(tag.as_str())
            .cloned()
            .ok_or_else(|| {
                ApiError::not_found(format!("{name} has no version or dist-tag {spec:?}"))
            })?
    };
    let body = stored
        .render_version(
            &version,
            &core
                .shared
                .rebase_for(head.host)
                .unwrap_or_else(|| core.shared.base_url.clone()),
        )
        .ok_or_else(|| ApiError::not_found(format!("version {version} of {name} not found")))?;
    Ok(Reply::json(200, body))
}

pub(super) fn not_found(name: &PackageName) -> ApiError {
    ApiError::not_found(format!("package {name} not found"))
}

/// `If-None-Match` is a list of validators or `*`; weak prefixes compare equal (RFC 9110's
/// weak comparison, which is what a GET may use).
fn matches_any(header: &[u8], matches: impl Fn(&[u8]) -> bool) -> bool {
    header.split(|&b| b == b',').any(|candidate| {
        let candidate = candidate.trim_ascii();
        let candidate = candidate.strip_prefix(b"W/").unwrap_or(candidate);
        candidate == b"*" || matches(candidate)
    })
}

#[cfg(test)]
mod tests {
    use super::matches_any;

    #[test]
    fn validator_lists() {
        let is_a = |c: &[u8]| c == b"\"a\"";
        assert!(matches_any(b"\"a\"", is_a));
        assert!(matches_any(b"\"x\", W/\"a\"", is_a));
        assert!(matches_any(b"*", is_a));
        assert!(!matches_any(b"\"b\"", is_a));
        assert!(!matches_any(b"", is_a));
    }
}
