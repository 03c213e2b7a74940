//! Files and directories that only their owner may read: the gateway's state (its database, which holds
//! tool inputs and the credentials' hashes, its lock, the tokens it generated, its receipts), whatever the
//! process's umask.
//!
//! New directories are made `0700` and new files `0600`. A file that exists with wider permissions (made by
//! an older uplink) is narrowed to `0600`. An existing directory is never changed (a state directory may be
//! one the operator shares on purpose, or `/tmp`): one that others may enter is reported, and the files in
//! it are owner-only all the same.

use std::io;
use std::path::Path;

/// `dir` and its missing parents, each new one made `0700`. Returns whether `dir` (new or not) is open to
/// others (group or other permission bits).
pub(crate) fn dir(dir: &Path) -> io::Result<bool> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        Ok(std::fs::metadata(dir)?.permissions().mode() & 0o077 != 0)
    }
    #[cfg(not(unix))]
    Ok(false)
}

/// Makes `path` owner-only: created empty as `0600` when it does not exist, narrowed to `0600` when it
/// allows anyone else anything.
pub(crate) fn file(path: &Path) -> io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let opened = options.open(path)?;
    narrow(&opened)
}

/// Narrows the file `path` to `0600` if it exists; nothing if not.
pub(crate) fn narrow_if_there(path: &Path) -> io::Result<()> {
    match std::fs::File::open(path) {
        Ok(f) => narrow(&f),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn narrow(file: &std::fs::File) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = file.metadata()?.permissions().mode();
        if mode & 0o077 != 0 {
            file.set_permissions(std::fs::Permissions::from_mode(mode & 0o700))?;
        }
    }
    #[cfg(not(unix))]
    let _ = file;
    Ok(())
}

#[cfg(all(test, unix))]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    fn mode(path: &std::path::Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn new_ones_are_owner_only_and_wide_files_are_narrowed_but_dirs_are_left() {
        let base = std::env::temp_dir().join(format!("uplink-owner-only-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let nested = base.join("a/b");
        assert!(!super::dir(&nested).unwrap(), "a new directory is open to others");
        assert_eq!((mode(&base), mode(&base.join("a")), mode(&nested)), (0o700, 0o700, 0o700));
        let f = nested.join("f");
        super::file(&f).unwrap();
        assert_eq!(mode(&f), 0o600);
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(&f, "kept").unwrap();
        super::file(&f).unwrap();
        assert_eq!((mode(&f), std::fs::read_to_string(&f).unwrap().as_str()), (0o600, "kept"));
        let g = nested.join("g");
        super::narrow_if_there(&g).unwrap();
        assert!(!g.exists());
        std::fs::write(&g, "").unwrap();
        std::fs::set_permissions(&g, std::fs::Permissions::from_mode(0o666)).unwrap();
        super::narrow_if_there(&g).unwrap();
        assert_eq!(mode(&g), 0o600);
        // An existing directory others may enter is reported, not changed.
        std::fs::set_permissions(&nested, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(super::dir(&nested).unwrap());
        assert_eq!(mode(&nested), 0o755);
        let _ = std::fs::remove_dir_all(&base);
    }
}
