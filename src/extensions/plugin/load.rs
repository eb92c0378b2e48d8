//! Finding, checking and loading one version of a plugin library. Each version is copied
//! to a private path named by the SHA-256 of its content before the dynamic loader opens
//! it. `dlopen` of a path that is already loaded returns the old code, and a loaded file
//! overwritten in place crashes the process on its next call.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::elf;
use super::library::PluginLibrary;
use crate::config::{ExtensionConfig, ExtensionKind};

/// Prefix and suffix of the file name of a shipped plugin: `builtin` `calc` is
/// `libgoose_plugin_calc.so`, as cargo names the cdylib of crate `goose-plugin-calc`.
const BUILTIN_PREFIX: &str = "libgoose_plugin_";
const BUILTIN_SUFFIX: &str = ".so";

/// Serializes writing, opening and deleting private copies, which two extensions with
/// identical libraries share.
static COPY_LOCK: Mutex<()> = Mutex::new(());

/// Identity of one state of a file on disk, which any write or replacement changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileIdentity {
    device: u64,
    inode: u64,
    len: u64,
    modified_ns: i128,
    changed_ns: i128,
}

impl FileIdentity {
    /// Reads the identity of `path`, following symbolic links.
    pub fn of(path: &Path) -> std::io::Result<Self> {
        let metadata = std::fs::metadata(path)?;
        let nanos = |secs: i64, nsecs: i64| i128::from(secs) * 1_000_000_000 + i128::from(nsecs);
        Ok(Self {
            device: metadata.dev(),
            inode: metadata.ino(),
            len: metadata.len(),
            modified_ns: nanos(metadata.mtime(), metadata.mtime_nsec()),
            changed_ns: nanos(metadata.ctime(), metadata.ctime_nsec()),
        })
    }
}

/// The manifest a plugin returns.
#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    /// Plugin name.
    pub name: String,
    /// Plugin version.
    pub version: String,
    /// Tools, in the plugin's order.
    #[serde(default)]
    pub tools: Vec<ManifestTool>,
}

/// One tool of a manifest.
#[derive(Debug, Clone, Deserialize)]
pub struct ManifestTool {
    /// Tool name.
    pub name: String,
    /// Description shown to the model.
    #[serde(default)]
    pub description: String,
    /// JSON Schema of the arguments object.
    #[serde(default = "empty_object_schema")]
    pub input_schema: serde_json::Value,
}

fn empty_object_schema() -> serde_json::Value {
    serde_json::json!({"type": "object"})
}

/// One loaded version of a plugin.
#[derive(Debug)]
pub struct PluginVersion {
    /// The library; it stays loaded while this value lives.
    pub library: PluginLibrary,
    /// Its manifest.
    pub manifest: Manifest,
    /// Hex SHA-256 of the library file.
    pub sha256: String,
    /// The file it was read from.
    pub file: PathBuf,
}

/// Returns the library file of a `plugin` or `builtin` extension.
pub fn library_path(name: &str, config: &ExtensionConfig) -> Result<PathBuf, String> {
    match (config.kind, &config.path) {
        (ExtensionKind::Plugin, Some(path)) => Ok(path.clone()),
        (ExtensionKind::Builtin, _) => builtin_path(config.name.as_deref().unwrap_or(name)),
        _ => Err("the extension is not a native plugin".to_owned()),
    }
}

/// Finds a shipped plugin: in the directory of the daemon's executable, where
/// `cargo build` puts the workspace's plugins, or in its `deps` subdirectory, where
/// `cargo test` puts them, whichever file is newer.
fn builtin_path(name: &str) -> Result<PathBuf, String> {
    let executable = std::env::current_exe()
        .map_err(|error| format!("cannot find the daemon's executable: {error}"))?;
    let dir = executable.parent().unwrap_or(Path::new("/"));
    let file = format!("{BUILTIN_PREFIX}{}{BUILTIN_SUFFIX}", name.replace('-', "_"));
    // Both exist after `cargo build` followed by `cargo test`; the newer one is current.
    let newest = [dir.join(&file), dir.join("deps").join(&file)]
        .into_iter()
        .filter_map(|path| {
            let modified = std::fs::metadata(&path).ok()?.modified().ok()?;
            Some((modified, path))
        })
        .max();
    if let Some((_, found)) = newest {
        return Ok(found);
    }
    let shipped = shipped_names(dir);
    let available = if shipped.is_empty() {
        "none; build them with `cargo build`, which builds the workspace's plugins".to_owned()
    } else {
        shipped.join(", ")
    };
    Err(format!(
        "no builtin plugin named {name:?}: {file} is not in {} or its deps directory; \
         shipped plugins: {available}",
        dir.display()
    ))
}

fn shipped_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let file = entry.file_name().into_string().ok()?;
            let stem = file
                .strip_prefix(BUILTIN_PREFIX)?
                .strip_suffix(BUILTIN_SUFFIX)?;
            Some(stem.to_owned())
        })
        .collect();
    names.sort();
    names
}

/// Checks, copies and loads the library at `path`. Blocks on file I/O and on the
/// plugin's initializers.
pub fn load(path: &Path) -> Result<PluginVersion, String> {
    let file = std::fs::canonicalize(path)
        .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    check_permissions(&file)?;
    let before = FileIdentity::of(&file).map_err(|error| read_error(&file, &error))?;
    let bytes = std::fs::read(&file).map_err(|error| read_error(&file, &error))?;
    let after = FileIdentity::of(&file).map_err(|error| read_error(&file, &error))?;
    if before != after {
        return Err(format!(
            "{} changed while it was read; it is loaded again once it stops changing",
            file.display()
        ));
    }
    elf::check(&bytes)?;
    let sha256 = hex::encode(Sha256::digest(&bytes));
    let opened = open_private_copy(&sha256, &bytes)?;
    let manifest = parse_manifest(&opened.manifest)?;
    Ok(PluginVersion {
        library: opened.library,
        manifest,
        sha256,
        file,
    })
}

fn read_error(file: &Path, error: &std::io::Error) -> String {
    format!("cannot read {}: {error}", file.display())
}

/// Rejects a library that another user could have changed: the file and its directory
/// must belong to the daemon's user or root and be writable by their owner only.
fn check_permissions(file: &Path) -> Result<(), String> {
    let own_uid = nix::unistd::geteuid().as_raw();
    let dir = file.parent().unwrap_or(Path::new("/"));
    for (what, path) in [("the library", file), ("its directory", dir)] {
        let metadata = std::fs::metadata(path)
            .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
        let mode = metadata.mode() & 0o7777;
        if mode & 0o022 != 0 {
            return Err(format!(
                "{what} {} is writable by other users (mode {mode:o}), so anyone could \
                 replace the code the daemon runs; run chmod go-w {}",
                path.display(),
                path.display()
            ));
        }
        let owner = metadata.uid();
        if owner != own_uid && owner != 0 {
            return Err(format!(
                "{what} {} belongs to user id {owner}, not to the daemon's user ({own_uid}) \
                 or root; chown it to one of them",
                path.display()
            ));
        }
    }
    Ok(())
}

/// Creates or checks the directory of private copies, `goose-api-plugins-<pid>` in the
/// temporary directory. Only the daemon's user can use it, so no other process can swap a
/// copy before it is opened.
fn private_dir() -> Result<PathBuf, String> {
    let dir = std::env::temp_dir().join(format!("goose-api-plugins-{}", std::process::id()));
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => return Ok(dir),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(error) => {
            return Err(format!(
                "cannot create the directory for plugin copies {}: {error}; check that \
                 TMPDIR is writable",
                dir.display()
            ));
        }
    }
    // It exists: from an earlier load of this process, or planted by someone else.
    let metadata = std::fs::symlink_metadata(&dir)
        .map_err(|error| format!("cannot read {}: {error}", dir.display()))?;
    let own_uid = nix::unistd::geteuid().as_raw();
    if !metadata.is_dir() || metadata.uid() != own_uid || metadata.mode() & 0o077 != 0 {
        return Err(format!(
            "{} exists but is not a directory private to the daemon's user; remove it",
            dir.display()
        ));
    }
    Ok(dir)
}

/// Writes `bytes` to `<private dir>/<sha256>.so`, opens it and deletes the file and the
/// directory again: the mapping keeps the code, and no copy is left behind if the daemon is
/// killed.
fn open_private_copy(sha256: &str, bytes: &[u8]) -> Result<super::library::Opened, String> {
    // Held from creating the directory to removing it, so no other load finds it removed.
    let _guard = COPY_LOCK
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let dir = private_dir()?;
    let copy = dir.join(format!("{sha256}.so"));
    let written = write_copy(&copy, bytes)
        .map_err(|error| format!("cannot write the private copy {}: {error}", copy.display()));
    let opened = written.and_then(|()| PluginLibrary::open(&copy));
    if let Err(error) = std::fs::remove_file(&copy)
        && error.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %copy.display(), %error, "cannot delete a plugin's private copy");
    }
    if let Err(error) = std::fs::remove_dir(&dir) {
        tracing::warn!(path = %dir.display(), %error, "cannot delete the directory of plugin copies");
    }
    opened
}

fn write_copy(copy: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o700)
        .open(copy)?;
    // No sync: the copy is deleted right after it is opened, and a crash loses nothing.
    file.write_all(bytes)
}

fn parse_manifest(text: &str) -> Result<Manifest, String> {
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|error| format!("the plugin's manifest is not valid JSON: {error}"))?;
    if let Some(error) = value.get("error") {
        return Err(format!("the plugin failed to build its manifest: {error}"));
    }
    let manifest: Manifest = serde_json::from_value(value)
        .map_err(|error| format!("the plugin's manifest is invalid: {error}"))?;
    let mut seen = std::collections::HashSet::new();
    for tool in &manifest.tools {
        if tool.name.is_empty() || !seen.insert(tool.name.as_str()) {
            return Err(format!(
                "the plugin's manifest lists an empty or repeated tool name {:?}",
                tool.name
            ));
        }
    }
    Ok(manifest)
}
