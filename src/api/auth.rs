//! Who may change things through the API: a request carrying the bearer token, compared in
//! constant time, the token read at start from a file only its owner may write.

use super::{Resp, error};
use crate::daemon::Shared;
use hyper::StatusCode;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use subtle::ConstantTimeEq;

/// Why the token file is not used (the daemon then refuses to start).
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("{}: cannot read the API token: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: the API token file is {kind}, not a regular file", path.display())]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error(
        "{}: the API token file has mode {mode:04o}: its group or other users could write their own token into it; make it writable by its owner only (chmod go-w)",
        path.display()
    )]
    Writable { path: PathBuf, mode: u32 },
    #[error("{}: the API token file is empty", path.display())]
    Empty { path: PathBuf },
}

/// The world-readable token file is warned of once per process, however often it is read.
static WARNED_READABLE: AtomicBool = AtomicBool::new(false);

/// The API token from `path`, trimmed. Refused: a file that is not a regular one (a
/// directory, a FIFO, a device: following symlinks, so a secret linked in from elsewhere
/// counts as the file it names), one its group or others may write (whoever can write the
/// token can change anything through the API), an empty one. A file every user may read is
/// used, with a warning, once.
pub fn read_token_file(path: &Path) -> Result<String, TokenFileError> {
    read_token_file_warning(path, &WARNED_READABLE)
}

fn read_token_file_warning(path: &Path, warned: &AtomicBool) -> Result<String, TokenFileError> {
    let read_err = |source| TokenFileError::Read {
        path: path.to_path_buf(),
        source,
    };
    // Opened without blocking (a FIFO would wait for a writer) and checked by the handle
    // that is read, so what is checked is what is read.
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(read_err)?;
    let meta = f.metadata().map_err(read_err)?;
    let kind = meta.file_type();
    if !kind.is_file() {
        let kind = if kind.is_dir() {
            "a directory"
        } else if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_socket() {
            "a socket"
        } else if kind.is_char_device() || kind.is_block_device() {
            "a device"
        } else {
            "something else"
        };
        return Err(TokenFileError::NotRegular {
            path: path.to_path_buf(),
            kind,
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(TokenFileError::Writable {
            path: path.to_path_buf(),
            mode,
        });
    }
    if mode & 0o004 != 0 && !warned.swap(true, Ordering::Relaxed) {
        tracing::warn!(file = %path.display(), mode = %format!("{mode:04o}"),
            "the API token file is readable by every user: anyone on this machine can change things through the API; make it readable by its owner (and group) only (chmod o-r)");
    }
    let mut text = String::new();
    f.read_to_string(&mut text).map_err(read_err)?;
    let token = text.trim();
    if token.is_empty() {
        return Err(TokenFileError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(token.to_string())
}

/// Whether `given` is the token. The time taken depends on the lengths only, never on where
/// the bytes first differ, so the token cannot be guessed byte by byte from answer times
/// (`subtle` keeps the compiler from turning the loop back into an early exit). An empty token
/// matches nothing, even an empty one.
pub fn token_matches(given: &[u8], token: &[u8]) -> bool {
    !token.is_empty() && bool::from(given.ct_eq(token))
}

/// The refusal, if the request may not change anything.
pub fn refusal(s: &Shared, headers: &hyper::HeaderMap) -> Option<Resp> {
    let Some(token) = &s.api_token else {
        return Some(error(
            StatusCode::FORBIDDEN,
            "changes through the API are off: set api_token_file in the config",
        ));
    };
    let given = headers
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        None => Some(error(StatusCode::UNAUTHORIZED, "missing bearer token")),
        Some(t) if !token_matches(t.trim().as_bytes(), token.as_bytes()) => {
            Some(error(StatusCode::UNAUTHORIZED, "wrong bearer token"))
        }
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::{TokenFileError, read_token_file, read_token_file_warning, token_matches};
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::AtomicBool;
    use std::sync::{Arc, Mutex};

    fn file_with_mode(
        dir: &std::path::Path,
        name: &str,
        text: &str,
        mode: u32,
    ) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
        p
    }

    #[test]
    fn a_token_file_others_may_write_is_refused_with_its_name_and_mode() {
        let dir = tempfile::tempdir().expect("dir");
        for mode in [0o620, 0o602, 0o666, 0o660] {
            let p = file_with_mode(dir.path(), &format!("t{mode:o}"), "tok\n", mode);
            match read_token_file(&p) {
                Err(e @ TokenFileError::Writable { .. }) => {
                    let m = e.to_string();
                    assert!(m.contains(&p.display().to_string()), "{m}");
                    assert!(m.contains(&format!("mode {mode:04o}")), "{m}");
                }
                other => panic!("mode {mode:o}: {other:?}"),
            }
        }
        for mode in [0o600, 0o400, 0o640, 0o644] {
            let p = file_with_mode(dir.path(), &format!("ok{mode:o}"), " tok\n", mode);
            assert_eq!(read_token_file(&p).expect("taken"), "tok", "mode {mode:o}");
        }
    }

    #[test]
    fn a_token_file_that_is_not_a_regular_file_is_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let d = dir.path().join("adir");
        std::fs::create_dir(&d).expect("mkdir");
        let e = read_token_file(&d).expect_err("a directory");
        assert!(
            e.to_string().contains("is a directory, not a regular file"),
            "{e}"
        );
        // A FIFO is refused at once: reading it would wait for a writer.
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = read_token_file(&fifo).expect_err("a FIFO");
        assert!(e.to_string().contains("a FIFO"), "{e}");
        let e = read_token_file(std::path::Path::new("/dev/null")).expect_err("a device");
        assert!(e.to_string().contains("a device"), "{e}");
        // A symlink counts as the file it names.
        let target = file_with_mode(dir.path(), "target", "tok", 0o600);
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        assert_eq!(read_token_file(&link).expect("linked"), "tok");
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o664)).expect("chmod");
        assert!(matches!(
            read_token_file(&link),
            Err(TokenFileError::Writable { .. })
        ));
        let empty = file_with_mode(dir.path(), "empty", " \n", 0o600);
        assert!(matches!(
            read_token_file(&empty),
            Err(TokenFileError::Empty { .. })
        ));
        let e = read_token_file(&dir.path().join("missing")).expect_err("missing");
        assert!(matches!(e, TokenFileError::Read { .. }), "{e}");
    }

    /// Collects what the tracing subscriber writes.
    #[derive(Clone, Default)]
    struct Logged(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Logged {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("log buffer").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_world_readable_token_file_is_used_and_warned_of_once() {
        let dir = tempfile::tempdir().expect("dir");
        let p = file_with_mode(dir.path(), "t", "tok", 0o644);
        let private = file_with_mode(dir.path(), "p", "tok", 0o640);
        let logged = Logged::default();
        let writer = logged.clone();
        let sub = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let warned = AtomicBool::new(false);
        tracing::subscriber::with_default(sub, || {
            assert_eq!(
                read_token_file_warning(&private, &warned).expect("read"),
                "tok"
            );
            for _ in 0..3 {
                assert_eq!(read_token_file_warning(&p, &warned).expect("read"), "tok");
            }
        });
        let text = String::from_utf8_lossy(&logged.0.lock().expect("log buffer")).into_owned();
        assert_eq!(text.matches("readable by every user").count(), 1, "{text}");
        assert!(
            text.contains("WARN") && text.contains("mode=0644"),
            "{text}"
        );
    }

    #[test]
    fn only_the_whole_token_matches() {
        let token = b"s3cret-token";
        assert!(token_matches(b"s3cret-token", token), "right");
        assert!(!token_matches(b"s3cret-tokex", token), "wrong last byte");
        assert!(!token_matches(b"x3cret-token", token), "wrong first byte");
        assert!(!token_matches(b"", token), "empty");
        assert!(!token_matches(b"s3cret", token), "prefix");
        assert!(!token_matches(b"s3cret-token2", token), "longer");
        assert!(
            !token_matches(b"", b""),
            "no token configured matches nothing"
        );
        assert!(!token_matches(b"anything", b""), "nor does anything else");
    }
}
