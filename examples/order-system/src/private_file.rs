//! Files only their owner may read, written whole or not at all.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

/// How old a part must be to be taken for one a killed write left.
const STALE_PART: std::time::Duration = std::time::Duration::from_secs(60);

/// Writes `bytes` to `path`, readable and writable by its owner only
/// (0600), whole or not at all: into a file of its own beside `path`,
/// synced, then moved into place and the directory synced. With `new`,
/// it is linked there only if nothing is (a file another start made
/// meanwhile is kept, and this fails as `AlreadyExists`); on a file
/// system without links it is made in place as new instead (and removed
/// if it could not be written whole). A part an earlier, killed write
/// left beside it (a minute old) is removed.
///
/// A process killed midway leaves the file as it was (or none), never a
/// part of it: a key or identity file cut short at the first start
/// stopped every later start until someone deleted it by hand.
///
/// # Errors
///
/// The file system's.
pub(crate) fn write(path: &Path, bytes: &[u8], new: bool) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("no file name"))?
        .to_string_lossy();
    // Parts an earlier write left when its process was killed: each holds
    // what it was writing (a key, password hashes). Not one another
    // writer may be filling now: only those a minute old.
    let prefix = format!(".{name}.");
    for entry in fs::read_dir(dir)?.flatten() {
        let left = entry.file_name();
        let left = left.to_string_lossy();
        let stale = entry
            .metadata()
            .and_then(|metadata| metadata.modified())
            .is_ok_and(|modified| modified.elapsed().is_ok_and(|age| age > STALE_PART));
        if left.starts_with(&prefix) && left.ends_with(".part") && stale {
            let _ = fs::remove_file(entry.path());
        }
    }
    let part = dir.join(format!("{prefix}{:016x}.part", fastrand::u64(..)));
    let placed = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&part)
        .and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_all()
        })
        .and_then(|()| {
            if !new {
                return fs::rename(&part, path);
            }
            match fs::hard_link(&part, path) {
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::Unsupported | io::ErrorKind::PermissionDenied
                    ) =>
                {
                    // A file system without links (FAT, some network and
                    // FUSE mounts): made in place, as new, instead, and
                    // taken away again if it could not be written whole.
                    let mut file = OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(path)?;
                    file.write_all(bytes)
                        .and_then(|()| file.sync_all())
                        .inspect_err(|_| {
                            let _ = fs::remove_file(path);
                        })
                }
                linked => linked,
            }
        });
    // Gone already once renamed; a link leaves the part's name behind.
    let _ = fs::remove_file(&part);
    placed?;
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn a_file_is_written_whole_private_and_alone() {
        let dir = std::env::temp_dir().join(format!("palisade-private-{}", fastrand::u64(..)));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key");
        write(&path, b"first", true).unwrap();
        let again = write(&path, b"second", true).unwrap_err();
        assert_eq!(again.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(
            fs::read(&path).unwrap(),
            b"first",
            "a new file never replaces one"
        );
        write(&path, b"third", false).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"third");
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, ["key"], "no part left behind");
        // A part a killed write left is taken away by the next write.
        let left = dir.join(".key.0123456789abcdef.part");
        fs::write(&left, b"half").unwrap();
        let long_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3_600);
        File::options()
            .write(true)
            .open(&left)
            .unwrap()
            .set_modified(long_ago)
            .unwrap();
        // One another writer is filling now stays.
        let filling = dir.join(".key.fedcba9876543210.part");
        fs::write(&filling, b"filling").unwrap();
        write(&path, b"fourth", false).unwrap();
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        let mut names: Vec<_> = names
            .into_iter()
            .map(|name| name.into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [".key.fedcba9876543210.part", "key"],
            "the killed write's part is gone, the one being filled is not"
        );
        let _ = fs::remove_dir_all(dir);
    }
}
