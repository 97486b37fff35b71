//! Writing the site to `output.dir`: every file atomically, so that a web server never serves
//! half a feed.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Makes temporary names unique within the process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// How a write went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// The file already held these bytes; it was left alone.
    Unchanged,
    Replaced,
}

/// Mode of what the site is made of: readable by any web server.
const PUBLIC_FILE: u32 = 0o644;
const PUBLIC_DIR: u32 = 0o755;

/// The file mode mask [`set_umask`] gave the process; `u32::MAX` while unknown (every file
/// and folder then gets its mode set).
static UMASK: AtomicU32 = AtomicU32::new(u32::MAX);

/// Sets the process's file mode mask, and remembers it. Call it before any thread starts.
pub fn set_umask(mask: u32) {
    // SAFETY: umask only sets this process's file mode mask.
    unsafe {
        libc::umask(mask as libc::mode_t);
    }
    UMASK.store(mask, Ordering::Relaxed);
}

/// Whether what this process creates is public as created (a `build`, whose mask is 022):
/// no mode to set on each of its thousands of files.
fn born_public() -> bool {
    let mask = UMASK.load(Ordering::Relaxed);
    mask != u32::MAX && 0o666 & !mask == PUBLIC_FILE && 0o777 & !mask == PUBLIC_DIR
}

/// Creates `dir` and the folders above it that are missing, readable by everyone whatever
/// the umask (the daemon runs with a private one, for its state).
pub fn create_public_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_public_dir(parent)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) if born_public() => Ok(()),
        Ok(()) => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(PUBLIC_DIR)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Creates `dir` (and what is missing above it) and makes it private: 0700, whatever the
/// umask or the mode it had (the state, the outbox).
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

fn make_public(file: &std::fs::File) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if born_public() {
        return Ok(());
    }
    file.set_permissions(std::fs::Permissions::from_mode(PUBLIC_FILE))
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename. A file
/// that already holds the same bytes is left untouched (its mtime stays, static servers keep
/// their caches).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<Written> {
    write_atomic_as(path, bytes, true)
}

/// [`write_atomic`] for a private file (the outbox's mails, the state's marker): created
/// 0600 (or less, by the umask).
pub fn write_atomic_private(path: &Path, bytes: &[u8]) -> std::io::Result<Written> {
    write_atomic_as(path, bytes, false)
}

fn write_atomic_as(path: &Path, bytes: &[u8], public: bool) -> std::io::Result<Written> {
    if let Ok(meta) = std::fs::metadata(path)
        && meta.len() == bytes.len() as u64
        && std::fs::read(path).is_ok_and(|old| old == bytes)
    {
        return Ok(Written::Unchanged);
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let temp = temp_path(dir, path);
    let create = || {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(if public { PUBLIC_FILE } else { 0o600 })
            .open(&temp)
    };
    let result = (|| {
        let mut file = match create() {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if public {
                    create_public_dir(dir)?;
                } else {
                    std::fs::create_dir_all(dir)?;
                }
                create()?
            }
            Err(e) => return Err(e),
        };
        if public {
            make_public(&file)?;
        }
        file.write_all(bytes)?;
        drop(file);
        std::fs::rename(&temp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result.map(|()| Written::Replaced)
}

/// Writes a new file in a folder that is not served yet (no temporary file needed), creating
/// its folders.
pub fn write_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let create = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(path)?;
        make_public(&file)?;
        file.write_all(bytes)
    };
    match create() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            create_public_dir(path.parent().unwrap_or(Path::new(".")))?;
            create()
        }
        other => other,
    }
}

fn temp_path(dir: &Path, path: &Path) -> PathBuf {
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()))
}

/// Removes a file; a missing one is fine. Empty folders left behind under `root` go too.
pub fn remove(root: &Path, path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    let mut dir = path.parent();
    while let Some(d) = dir {
        if d == root || !d.starts_with(root) || std::fs::remove_dir(d).is_err() {
            break;
        }
        dir = d.parent();
    }
    Ok(())
}

/// Every file under `dir` (recursively) whose name ends with `suffix`, relative to `dir`.
pub fn files_under(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(dir.join(&rel)) else {
            continue;
        };
        for entry in entries.flatten() {
            let rel = rel.join(entry.file_name());
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(rel),
                Ok(t) if t.is_file() && rel.to_str().is_some_and(|s| s.ends_with(suffix)) => {
                    out.push(rel);
                }
                _ => {}
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_creates_folders_and_skips_identical_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/c.html");
        assert_eq!(write_atomic(&path, b"one").unwrap(), Written::Replaced);
        assert_eq!(write_atomic(&path, b"one").unwrap(), Written::Unchanged);
        assert_eq!(write_atomic(&path, b"two").unwrap(), Written::Replaced);
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("a/b")).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file is left behind");
        remove(dir.path(), &path).unwrap();
        assert!(!dir.path().join("a").exists(), "empty folders are removed");
    }
}
