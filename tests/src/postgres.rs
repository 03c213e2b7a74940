//! A throwaway PostgreSQL server for a test: made in a temporary directory (`initdb`), listening on a Unix
//! socket in it alone (no port to race for), never flushing to the disk (nothing here outlives the test; a
//! commit is still written before it is acknowledged, so a server killed keeps it), and stopped by its pid
//! when the test is done with it, or when the test's process dies.
//!
//! The server runs under a small shell that keeps reading its standard input from this process: when the
//! [`Postgres`] is dropped, or the process ends however it ends (a panic, `kill -9`), that input closes and
//! the shell stops the server (`SIGQUIT` to the postmaster named in its pid file) and removes its directory.
//! Run as root, the server runs as the `postgres` user (it refuses root), through `runuser`.
//!
//! The server's binaries are Debian's (`/usr/lib/postgresql/<version>/bin`, the newest), or those in
//! `UPLINK_PG_BIN`. `scripts/test` installs Debian's package.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a start may take before the test fails with the server's log.
const START_WITHIN: Duration = Duration::from_secs(60);

/// A server of the test's own. See the [module docs](self).
pub struct Postgres {
    /// Removed by the server's keeper once the server stopped for good.
    dir: PathBuf,
    bin: PathBuf,
    running: Mutex<Option<Running>>,
    next_db: AtomicU64,
}

struct Running {
    keeper: Child,
    input: Option<ChildStdin>,
}

/// Where the server's binaries are: `UPLINK_PG_BIN`, or the newest of Debian's.
fn binaries() -> Result<PathBuf, String> {
    if let Some(bin) = std::env::var_os("UPLINK_PG_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| format!("/usr/lib/postgresql: {e}"))?
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| bin.join("postgres").exists())
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).ok_or_else(|| "no PostgreSQL server under /usr/lib/postgresql".to_owned())
}

fn as_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// `program args…`, as the `postgres` user when this process is root.
fn server_command(bin: &Path, program: &str) -> Command {
    if as_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(bin.join(program));
        cmd
    } else {
        Command::new(bin.join(program))
    }
}

impl Postgres {
    /// Makes a server in a temporary directory and starts it. Fails (with what `initdb` or the server said)
    /// when PostgreSQL is not installed or does not start.
    pub fn start() -> Result<Postgres, String> {
        let bin = binaries().map_err(|e| {
            format!("PostgreSQL's server is needed for this test and was not found ({e}); scripts/test installs it")
        })?;
        let dir = tempfile::Builder::new().prefix("uplink-pg.").tempdir().map_err(|e| e.to_string())?.keep();
        if as_root() {
            let status = Command::new("chown").arg("postgres:").arg(&dir).status().map_err(|e| e.to_string())?;
            if !status.success() {
                return Err("chown postgres: the server's directory failed".into());
            }
        }
        let out = server_command(&bin, "initdb")
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-U", "uplink", "-A", "trust", "-E", "UTF8", "--no-locale", "--no-sync"])
            .output()
            .map_err(|e| format!("initdb: {e}"))?;
        if !out.status.success() {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(format!("initdb failed: {}", String::from_utf8_lossy(&out.stderr)));
        }
        let pg = Postgres { dir, bin, running: Mutex::new(None), next_db: AtomicU64::new(0) };
        pg.start_server()?;
        Ok(pg)
    }

    /// One server for every test of this process that asks (each makes databases of its own on it): started
    /// by the first, stopped (and its directory removed) when the process ends, however it ends.
    pub fn shared() -> &'static Postgres {
        static SHARED: OnceLock<Postgres> = OnceLock::new();
        SHARED.get_or_init(|| Postgres::start().unwrap_or_else(|e| panic!("{e}")))
    }

    /// The directory of the server's socket (and of its data and log).
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// The URL of database `db` on this server, as `uplink gateway --store` takes it.
    pub fn url(&self, db: &str) -> String {
        format!("postgresql://uplink@/{db}?host={}", self.socket_dir().display())
    }

    /// Makes a database of its own and gives its URL.
    pub fn fresh_database(&self) -> String {
        let db = format!("t{}", self.next_db.fetch_add(1, Ordering::Relaxed));
        self.sql("postgres", &format!("CREATE DATABASE {db}")).unwrap_or_else(|e| panic!("{e}"));
        self.url(&db)
    }

    /// Runs `sql` in database `db` with `psql`; what it printed (unaligned, tuples only), or why it failed.
    pub fn sql(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(self.socket_dir())
            .args(["-U", "uplink", "-d", db, "-c", sql])
            .output()
            .map_err(|e| format!("psql: {e}"))?;
        if !out.status.success() {
            return Err(format!("psql {sql:?}: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.join("data").join("postmaster.pid")
    }

    fn log_file(&self) -> PathBuf {
        self.dir.join("log")
    }

    /// The server's log so far (for a failing test's message).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_file()).unwrap_or_default()
    }

    /// Starts the server (again, after [`Postgres::stop_server`]), and waits until it accepts connections.
    pub fn start_server(&self) -> Result<(), String> {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if running.is_some() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_file())
            .map_err(|e| format!("the server's log: {e}"))?;
        let data = self.dir.join("data");
        let mut server = server_command(&self.bin, "postgres");
        let mut keeper = Command::new("sh");
        // The shell starts the server, then waits for its input to end, then stops the server by the pid in
        // its pid file, and removes the directory unless it was told to keep it (for a start again).
        keeper
            .arg("-c")
            .arg(
                r#"dir="$1"; shift; "$@" & read -r keep; kill -QUIT "$(head -1 "$dir/data/postmaster.pid")" 2>/dev/null; wait; [ "$keep" = keep ] || rm -rf "$dir""#,
            )
            .arg("sh")
            .arg(&self.dir)
            .arg(server.get_program());
        keeper.args(server.get_args());
        server = keeper;
        server
            .arg("-D")
            .arg(&data)
            .arg("-k")
            .arg(self.socket_dir())
            // Nothing is flushed to the disk (the server's data outlives no test), but every commit is written
            // before it is acknowledged: a server killed keeps what it acknowledged, as a real one does.
            .args(["-c", "listen_addresses=", "-c", "fsync=off"])
            .args(["-c", "full_page_writes=off", "-c", "max_connections=200"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(log);
        let mut keeper = server.spawn().map_err(|e| format!("starting the server: {e}"))?;
        let input = keeper.stdin.take();
        *running = Some(Running { keeper, input });
        drop(running);
        let until = Instant::now() + START_WITHIN;
        loop {
            let ready = std::fs::read_to_string(self.pid_file())
                .is_ok_and(|pid| pid.lines().nth(7).is_some_and(|status| status.trim() == "ready"));
            if ready {
                return Ok(());
            }
            let log = self.log();
            if log.contains("FATAL") || Instant::now() > until {
                self.stop_server();
                return Err(format!("the PostgreSQL server did not start; its log:\n{log}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server at once (as a crash would: `SIGQUIT`) and waits until it is gone; its data stays,
    /// for [`Postgres::start_server`].
    pub fn stop_server(&self) {
        self.stop(true);
    }

    fn stop(&self, keep: bool) {
        let Some(mut running) = self.running.lock().unwrap_or_else(|e| e.into_inner()).take() else { return };
        if let Some(mut input) = running.input.take() {
            if keep {
                let _ = input.write_all(b"keep\n");
            }
            let _ = input.flush();
        }
        let _ = running.keeper.wait();
        // The postmaster removes its pid file last.
        let until = Instant::now() + Duration::from_secs(10);
        while keep && self.pid_file().exists() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop(false);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
