//! AgentRegistry storage engine. Storage only: no HTTP, no sockets, no request types.
//!
//! A data directory (`data_dir`) holds N shards (`shard`), each one redb file owned by a single
//! writer, a content-addressed blob store (`blob`) for tarballs bigger than
//! `limits::INLINE_BLOB_BYTES_MAX` (smaller ones are stored inline in their package's shard,
//! keyed and verified by blake3 all the same), an auth database (`auth`) and the config record
//! (`config_record`). A package lives in shard `xxh3(name) % N`.
//!
//! Write path: the server parses a publish (`publish::parse_publish`: pure, on any core; each
//! tarball is read, never unpacked, by `tarball::inspect`), sends it to the shard's writer,
//! which calls `ShardStore::apply_batch`: plan each op (`publish::plan_*`, pure), write blob
//! files durably, store the package, its inline tarballs and its pre-rendered served values
//! (`served`), commit once for the batch.
//! Read path: `ShardStore::read_doc` returns one pre-rendered document; nothing is parsed or
//! rendered per request.

pub mod auth;
pub mod backup;
pub mod blob;
pub mod config_record;
pub mod data_dir;
pub mod error;
pub mod fixture;
pub mod fsck;
pub mod integrity;
pub mod limits;
pub mod names;
pub mod packument;
pub mod publish;
pub mod served;
pub mod shard;
pub mod tarball;
pub mod update;
