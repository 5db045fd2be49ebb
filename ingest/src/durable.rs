//! An `ObjectStore` over the local file system that makes every completed write durable.
//!
//! Owns: fsync. object_store's `LocalFileSystem` (the one deltalake uses for `file://`)
//! writes through a temporary file and a rename but never calls `fsync`, so a power loss
//! can lose a Delta commit that was reported as done. [`SyncingLocalStore`] delegates every
//! call to `LocalFileSystem` and, once a put, multipart upload, copy or rename has
//! completed, fsyncs the file and its directory before returning. Object stores such as
//! S3 are durable when a put returns and need no wrapper. Must not: change semantics of
//! the wrapped store in any other way.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions,
    PutOptions, PutPayload, PutResult, RenameOptions, Result, UploadPart,
};

/// `LocalFileSystem` plus fsync of every completed write (see the module docs).
#[derive(Debug, Clone)]
pub struct SyncingLocalStore {
    inner: Arc<LocalFileSystem>,
}

impl Default for SyncingLocalStore {
    fn default() -> Self {
        Self::new()
    }
}

impl SyncingLocalStore {
    /// A store rooted at the file-system root, as deltalake expects for `file://` URLs.
    pub fn new() -> Self {
        Self { inner: Arc::new(LocalFileSystem::new()) }
    }

    async fn sync(&self, location: &Path) -> Result<()> {
        let file = self.inner.path_to_filesystem(location)?;
        sync_file_and_dir(file).await
    }
}

/// fsyncs `file` and then its parent directory (so a rename into it is durable too).
pub async fn sync_file_and_dir(file: PathBuf) -> Result<()> {
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        std::fs::File::open(&file)?.sync_all()?;
        if let Some(dir) = file.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })
    .await
    .map_err(|e| object_store::Error::Generic { store: "SyncingLocalStore", source: Box::new(e) })?
    .map_err(|e| object_store::Error::Generic { store: "SyncingLocalStore", source: Box::new(e) })
}

impl fmt::Display for SyncingLocalStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SyncingLocalStore({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for SyncingLocalStore {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        let r = self.inner.put_opts(location, payload, opts).await?;
        self.sync(location).await?;
        Ok(r)
    }

    async fn put_multipart_opts(&self, location: &Path, opts: PutMultipartOptions) -> Result<Box<dyn MultipartUpload>> {
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        let file = self.inner.path_to_filesystem(location)?;
        Ok(Box::new(SyncingUpload { inner, file }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[std::ops::Range<u64>]) -> Result<Vec<bytes::Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(&self, locations: BoxStream<'static, Result<Path>>) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(&self, prefix: Option<&Path>, offset: &Path) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await?;
        self.sync(to).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.inner.rename_opts(from, to, options).await?;
        self.sync(to).await
    }
}

#[derive(Debug)]
struct SyncingUpload {
    inner: Box<dyn MultipartUpload>,
    file: PathBuf,
}

#[async_trait]
impl MultipartUpload for SyncingUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> Result<PutResult> {
        let r = self.inner.complete().await?;
        sync_file_and_dir(self.file.clone()).await?;
        Ok(r)
    }

    async fn abort(&mut self) -> Result<()> {
        self.inner.abort().await
    }
}
