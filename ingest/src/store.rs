//! The storage root: where an instance's Delta tables, serving store and lease live.
//!
//! Owns: resolving `--data` (a path or a URL) to an object store, creating and opening
//! the Delta tables with fhirlake's table properties, and the single-writer lease. The
//! names and file formats of the layout are `fhirlake_schemas::layout`'s. Must not: decide
//! what is written (that is [`crate::writer`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use deltalake::kernel::StructType;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError};
use fhirlake_schemas::layout::{self, LeaseRecord};
use fhirlake_schemas::shape::reserved;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use url::Url;

use crate::durable::SyncingLocalStore;
use crate::{Error, Result};

pub use fhirlake_schemas::layout::TableKind;

/// A storage root (one instance's data).
#[derive(Debug, Clone)]
pub struct StorageRoot {
    url: Url,
    store: Arc<dyn ObjectStore>,
    local: Option<PathBuf>,
}

impl StorageRoot {
    /// Resolves `--data`: a local path (created if missing) or a `file://` / `memory://`
    /// URL.
    pub fn open(data: &str) -> Result<Self> {
        let url = if data.contains("://") {
            Url::parse(data).map_err(|e| Error::Config(format!("--data '{data}' is not a valid URL: {e}")))?
        } else {
            let path = std::path::Path::new(data);
            std::fs::create_dir_all(path)
                .map_err(|e| Error::Config(format!("cannot create data directory '{data}': {e}")))?;
            let abs = std::fs::canonicalize(path).map_err(|e| Error::Config(format!("'{data}': {e}")))?;
            Url::from_directory_path(&abs).map_err(|_| Error::Config(format!("'{data}' is not an absolute path")))?
        };
        let mut url = url;
        if !url.path().ends_with('/') {
            url.set_path(&format!("{}/", url.path()));
        }
        match url.scheme() {
            "file" => {
                let local = url.to_file_path().map_err(|_| Error::Config(format!("bad file URL {url}")))?;
                std::fs::create_dir_all(&local)
                    .map_err(|e| Error::Config(format!("cannot create {}: {e}", local.display())))?;
                Ok(Self { url, store: Arc::new(SyncingLocalStore::new()), local: Some(local) })
            }
            "memory" => Ok(Self { url, store: Arc::new(object_store::memory::InMemory::new()), local: None }),
            other => Err(Error::Config(format!(
                "storage scheme '{other}://' is not supported by this build; use a local path or file:// URL"
            ))),
        }
    }

    /// The root URL (ends with `/`).
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The root's folder when it is local.
    pub fn local_path(&self) -> Option<&std::path::Path> {
        self.local.as_deref()
    }

    /// The object store the root lives in (rooted at the store's root, not at `url`).
    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Replaces the small file `relative` atomically (write, then rename) without fsync:
    /// for state that is only an optimisation for readers and rewritten at start-up (the
    /// watermark). Other stores: a plain put.
    pub async fn put_unsynced(&self, relative: &str, body: Vec<u8>) -> Result<()> {
        match &self.local {
            Some(local) => {
                let path = local.join(relative);
                let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
                let io = |e: std::io::Error| Error::Io { path: path.display().to_string(), source: e };
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(io)?;
                }
                std::fs::write(&tmp, body).map_err(io)?;
                std::fs::rename(&tmp, &path).map_err(io)
            }
            None => {
                self.store.put(&self.path(relative), body.into()).await?;
                Ok(())
            }
        }
    }

    /// Object-store path of `relative` under the root.
    pub fn path(&self, relative: &str) -> Path {
        let base = self.url.path().trim_matches('/');
        Path::from(format!("{base}/{relative}"))
    }

    /// URL of a table.
    pub fn table_url(&self, kind: TableKind, resource_type: &str) -> Url {
        self.url.join(&format!("{}/{resource_type}/", kind.folder())).expect("valid table URL")
    }

    /// Opens a table; `None` if it has not been created yet.
    pub async fn open_table(&self, kind: TableKind, resource_type: &str) -> Result<Option<DeltaTable>> {
        let url = self.table_url(kind, resource_type);
        if let Some(local) = &self.local
            && !local.join(kind.folder()).join(resource_type).join("_delta_log").is_dir()
        {
            return Ok(None);
        }
        let mut table =
            DeltaTableBuilder::from_url(url.clone())?.with_storage_backend(self.store.clone(), url).build()?;
        match table.load().await {
            Ok(()) => Ok(Some(table)),
            Err(DeltaTableError::NotATable(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Creates a table with `schema` and fhirlake's table properties.
    pub async fn create_table(
        &self,
        kind: TableKind,
        resource_type: &str,
        schema: &arrow::datatypes::Schema,
    ) -> Result<DeltaTable> {
        let url = self.table_url(kind, resource_type);
        if let Some(local) = &self.local {
            let dir = local.join(kind.folder()).join(resource_type);
            std::fs::create_dir_all(&dir).map_err(|e| Error::Io { path: dir.display().to_string(), source: e })?;
        }
        let table = DeltaTableBuilder::from_url(url.clone())?.with_storage_backend(self.store.clone(), url).build()?;
        let kernel: StructType =
            schema.try_into_kernel().map_err(|e| Error::Flatten(format!("schema of {resource_type}: {e}")))?;
        let stats_columns = match kind {
            TableKind::Current => {
                Some(format!("id,{},{},{}", reserved::PATIENT, reserved::LAST_UPDATED, reserved::VERSION_ID))
            }
            TableKind::History => Some(format!(
                "id,{},{},{},{}",
                reserved::VERSION_ID,
                reserved::LAST_UPDATED,
                reserved::DELETED,
                reserved::PATIENT
            )),
            TableKind::View => Some(reserved::SOURCE_ID.to_string()),
            // Their own schemas: statistics on the leading columns (Delta's default).
            TableKind::System => None,
        };
        let mut config: HashMap<String, Option<String>> =
            HashMap::from([("delta.checkpointInterval".to_string(), Some("20".to_string()))]);
        if let Some(columns) = stats_columns {
            config.insert("delta.dataSkippingStatsColumns".to_string(), Some(columns));
        }
        let created = table
            .create()
            .with_table_name(format!("{}_{}", kind.folder(), resource_type.to_lowercase()))
            .with_columns(kernel.fields().cloned())
            .with_configuration(config)
            .await;
        match created {
            Ok(t) => Ok(t),
            // Another creator won the race (or a previous run crashed after creating it).
            Err(e) => self.open_table(kind, resource_type).await?.ok_or_else(|| e.into()),
        }
    }

    /// Resource types that have a table of `kind`.
    pub async fn existing_tables(&self, kind: TableKind) -> Result<Vec<String>> {
        let prefix = self.path(kind.folder());
        let listing = self.store.list_with_delimiter(Some(&prefix)).await?;
        let mut types: Vec<String> =
            listing.common_prefixes.iter().filter_map(|p| p.filename().map(str::to_string)).collect();
        types.sort();
        Ok(types)
    }
}

/// The single-writer lease of a storage root (`_fhirlake/lease.json`).
#[derive(Debug)]
pub struct Lease {
    root: StorageRoot,
    path: Path,
}

impl Lease {
    /// Takes the lease, or fails with [`Error::LeaseHeld`] naming the holder. A lease left
    /// by a process of this host that no longer runs is taken over.
    pub async fn acquire(root: &StorageRoot, holder: &str) -> Result<Lease> {
        let path = root.path(layout::LEASE_PATH);
        let host = hostname();
        let record = LeaseRecord {
            format: layout::FORMAT,
            pid: u64::from(std::process::id()),
            host: host.clone(),
            holder: holder.to_string(),
            since: chrono::Utc::now().to_rfc3339(),
        };
        for _ in 0..2 {
            let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
            match root.store.put_opts(&path, PutPayload::from(layout::encode(&record)), opts).await {
                Ok(_) => return Ok(Lease { root: root.clone(), path }),
                Err(object_store::Error::AlreadyExists { .. }) => {
                    let existing = root.store.get(&path).await?.bytes().await?;
                    let info = layout::decode::<LeaseRecord>(layout::LEASE_PATH, &existing).map_err(Error::Config)?;
                    if info.host == host && info.pid != 0 && !process_alive(info.pid) {
                        tracing::warn!(pid = info.pid, "taking over the write lease of a process that is gone");
                        root.store.delete(&path).await?;
                        continue;
                    }
                    return Err(Error::LeaseHeld {
                        root: root.url.to_string(),
                        holder: format!("{} (pid {} on {})", info.holder, info.pid, info.host),
                    });
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Config("could not take the write lease".into()))
    }

    /// Releases the lease.
    pub async fn release(self) -> Result<()> {
        self.root.store.delete(&self.path).await?;
        Ok(())
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

fn process_alive(pid: u64) -> bool {
    pid != 0 && std::path::Path::new(&format!("/proc/{pid}")).exists()
}
