//! Files in and out: tensors ⇄ bytes on disk, nothing else (no model knows about this module; the Python
//! package maps names and configs on top, in `nanofrontier/formats/`).
//!
//! - `safetensors`  Hugging Face's format: a JSON header + raw little-endian arrays. We write F32 and read
//!   F32/F16/BF16/F64 (converted to f32). Saves are atomic: a crash or error never leaves half a file.

pub mod safetensors;

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Write a file atomically: `write` fills a fresh temporary file in the same directory, which is then
/// flushed to disk (fsync) and renamed over `path`. Readers see the old file or the whole new one, never a
/// half-written one; on any error the temporary file is removed and `path` is left as it was.
pub fn write_atomic(path: &Path, write: impl FnOnce(&mut File) -> std::io::Result<()>) -> Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| Error::Io(format!("cannot write {}: the path has no file name", path.display())))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // pid + counter + time: unique across threads and processes writing into the same directory
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let tmp = dir.join(format!(
        ".{}.{}.{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed),
        nanos % 1_000_000_000
    ));
    let mut file = File::options().write(true).create_new(true).open(&tmp).map_err(|e| {
        Error::Io(format!("cannot write {}: cannot create a file in {}: {e}", path.display(), dir.display()))
    })?;
    let result = write(&mut file).and_then(|()| file.flush()).and_then(|()| file.sync_all());
    drop(file);
    let result = result.and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(Error::Io(format!("cannot write {}: {e}", path.display())));
    }
    // make the rename itself durable (best effort: not every platform can fsync a directory)
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Read a whole file, saying clearly whether it is missing or unreadable.
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::Io(format!("no such file: {}", path.display())),
        _ => Error::Io(format!("cannot read {}: {e}", path.display())),
    })
}

/// A fresh empty directory for a test (the test removes it).
#[cfg(test)]
pub(crate) fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "nanofrontier-io-{tag}-{}-{}",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    fs::create_dir_all(&d).unwrap();
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leftovers(dir: &Path) -> Vec<String> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect()
    }

    #[test]
    fn atomic_write_replaces_whole_file() {
        let dir = temp_dir("atomic-ok");
        let p = dir.join("f.bin");
        fs::write(&p, b"old contents").unwrap();
        write_atomic(&p, |f| f.write_all(b"new")).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"new");
        assert!(leftovers(&dir).is_empty(), "temporary files left behind: {:?}", leftovers(&dir));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn failed_atomic_write_keeps_old_file_and_cleans_up() {
        let dir = temp_dir("atomic-fail");
        let p = dir.join("f.bin");
        fs::write(&p, b"old contents").unwrap();
        // the writer dies half way through (disk full, Ctrl-C, a bug...)
        let err = write_atomic(&p, |f| {
            f.write_all(b"half of the new")?;
            Err(std::io::Error::other("disk full"))
        })
        .unwrap_err();
        assert!(matches!(&err, Error::Io(m) if m.contains("disk full") && m.contains("f.bin")), "{err}");
        assert_eq!(fs::read(&p).unwrap(), b"old contents");
        assert!(leftovers(&dir).is_empty(), "temporary files left behind: {:?}", leftovers(&dir));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn atomic_write_into_missing_dir_is_an_io_error() {
        let dir = temp_dir("atomic-nodir");
        let p = dir.join("no").join("such").join("f.bin");
        let err = write_atomic(&p, |f| f.write_all(b"x")).unwrap_err();
        assert!(matches!(&err, Error::Io(m) if m.contains("cannot create")), "{err}");
        fs::remove_dir_all(dir).unwrap();
    }
}
