//! Where the test fixtures are: `FHIRLAKE_FIXTURES` when set, else the repository's
//! `tests/fixtures`, whose large sources are unpacked from their archives on first use
//! (`tests/fixtures/unpack.sh`, idempotent). Shared by the test crates with `#[path]`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The fixtures root, unpacked.
pub fn root() -> PathBuf {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        if let Some(dir) = std::env::var_os("FHIRLAKE_FIXTURES") {
            return PathBuf::from(dir);
        }
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .ancestors()
            .map(|a| a.join("tests/fixtures"))
            .find(|d| d.join("unpack.sh").is_file())
            .expect("tests/fixtures/unpack.sh not found above the crate");
        let status = std::process::Command::new("bash")
            .arg(dir.join("unpack.sh"))
            .status()
            .unwrap_or_else(|e| panic!("cannot run {}/unpack.sh: {e}", dir.display()));
        assert!(status.success(), "{}/unpack.sh failed ({status})", dir.display());
        dir
    })
    .clone()
}
