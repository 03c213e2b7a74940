//! A program as a child process of a test: `uplink gateway`, `uplink sled`, `uplink demo` (the path is the
//! test's `env!("CARGO_BIN_EXE_uplink")`), or any other (an example, Node, Chromium).
//!
//! [`Program`] says how to start it; [`Program::start`] starts it in a clean environment (none of the
//! program's own variables from the test's environment, `RUST_LOG=warn` unless the test sets it, a fresh state
//! directory of its own for `uplink`), reads its banner (its first lines, with a bounded wait) and from then on
//! reads the rest of its output as it comes, so that a full pipe never stops it. The [`Running`] program is
//! killed when dropped, and its fresh state directory removed.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output, Stdio};

use tokio::io::{AsyncBufReadExt as _, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::{START_WAIT, within, within_for};

/// The variables of the test's own environment no program is given: `uplink`'s own (`UPLINK_*`, and the
/// sled's `HUSKIES_UPSTREAM_GATEWAY`), which would change what it does, and `RUST_LOG`.
fn inherited_settings() -> impl Iterator<Item = OsString> {
    std::env::vars_os().map(|(name, _)| name).filter(|name| {
        let name = name.to_string_lossy();
        name.starts_with("UPLINK_") || name == "HUSKIES_UPSTREAM_GATEWAY" || name == "RUST_LOG"
    })
}

/// `program` in the clean environment, for a command run to completion (it logs at its own default level).
pub fn command(program: impl AsRef<OsStr>) -> std::process::Command {
    let mut command = std::process::Command::new(program);
    for name in inherited_settings() {
        command.env_remove(name);
    }
    command
}

/// Runs `program ARGS` to completion in the clean environment plus `env`; what it printed and its status.
pub fn run(program: impl AsRef<OsStr>, args: &[&str], env: &[(&str, &str)]) -> Output {
    command(program).args(args).envs(env.iter().copied()).output().unwrap()
}

/// As [`run`], failing the test if it takes longer than [`crate::WAIT`].
pub async fn run_within(what: &str, program: impl AsRef<OsStr>, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = command(program);
    command.args(args).envs(env.iter().copied());
    within(what, Command::from(command).output()).await.unwrap()
}

/// How many lines of its standard output a program's banner has.
enum Banner {
    /// This many.
    Lines(usize),
    /// Up to and with the first line that contains this.
    Until(String),
}

/// Where a program keeps its state (`UPLINK_STATE_DIR`).
enum State {
    /// Nowhere in particular: the variable is not set.
    Unset,
    /// A fresh directory of its own, removed with the [`Running`] program.
    Fresh,
    /// The test's.
    Given(PathBuf),
}

/// What becomes of a program's standard error (its log).
enum Log {
    Dropped,
    /// Read by the test.
    Captured,
    /// The test's own standard error.
    Shown,
}

/// How to start a program; [`Program::start`] starts it.
#[must_use = "a program is started by `start`"]
pub struct Program {
    name: String,
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, Option<OsString>)>,
    wrapper: Vec<OsString>,
    state: State,
    log: Log,
    stdout_unread: bool,
    banner: Banner,
}

impl Program {
    /// `program`, in the clean environment, its banner its first line.
    pub fn new(program: impl AsRef<OsStr>) -> Program {
        let program = program.as_ref().to_owned();
        let name = Path::new(&program).file_name().unwrap_or(&program).to_string_lossy().into_owned();
        Program {
            name,
            program,
            args: Vec::new(),
            env: vec![("RUST_LOG".into(), Some("warn".into()))],
            wrapper: Vec::new(),
            state: State::Unset,
            log: Log::Dropped,
            stdout_unread: false,
            banner: Banner::Lines(1),
        }
    }

    /// `uplink ARGS` (`exe` is the test's `env!("CARGO_BIN_EXE_uplink")`), with a fresh state directory.
    pub fn uplink(exe: &str, args: &[&str]) -> Program {
        let mut program = Program::new(exe).args(args);
        program.name = format!("uplink {}", args.first().copied().unwrap_or_default());
        program.state = State::Fresh;
        program
    }

    /// `uplink gateway` listening on a loopback port of its own; its banner is its two addresses.
    pub fn gateway(exe: &str) -> Program {
        Program::gateway_on(exe, "127.0.0.1:0")
    }

    /// `uplink gateway --listen LISTEN`; its banner is its two addresses.
    pub fn gateway_on(exe: &str, listen: &str) -> Program {
        Program::uplink(exe, &["gateway", "--listen", listen]).banner_lines(2)
    }

    /// `uplink sled` serving agents on a loopback port of its own; its banner is the line naming it.
    pub fn sled(exe: &str) -> Program {
        Program::uplink(exe, &["sled", "--permission-listen", "127.0.0.1:0"])
    }

    /// `uplink demo --keep-running`; its banner runs to the last line of the addresses it keeps serving.
    pub fn demo(exe: &str) -> Program {
        Program::uplink(exe, &["demo", "--keep-running"]).banner_until("  and: ")
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Program {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<A: AsRef<OsStr>>(mut self, args: impl IntoIterator<Item = A>) -> Program {
        self.args.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets `name` (`RUST_LOG` too: `info` to read the log at that level).
    pub fn env(mut self, name: &str, value: impl AsRef<OsStr>) -> Program {
        self.env.push((name.into(), Some(value.as_ref().to_owned())));
        self
    }

    /// Removes `name` from the environment the program is given.
    pub fn env_remove(mut self, name: &str) -> Program {
        self.env.push((name.into(), None));
        self
    }

    /// Keeps the state in `dir` (the test's; it outlives the program) instead of a fresh directory.
    pub fn state_dir(mut self, dir: impl AsRef<Path>) -> Program {
        self.state = State::Given(dir.as_ref().to_owned());
        self
    }

    /// Captures the program's standard error (its log), for [`Running::log_until`] and [`Running::log_rest`];
    /// without this it is dropped.
    pub fn log(mut self) -> Program {
        self.log = Log::Captured;
        self
    }

    /// Lets the program's standard error through to the test's, for a person reading a failure.
    pub fn show_log(mut self) -> Program {
        self.log = Log::Shown;
        self
    }

    /// Gives the program a pipe for its standard output that nobody reads: each line it prints fails. It has no
    /// banner then.
    pub fn stdout_unread(mut self) -> Program {
        self.stdout_unread = true;
        self.banner_lines(0)
    }

    /// The banner is the first `n` lines.
    pub fn banner_lines(mut self, n: usize) -> Program {
        self.banner = Banner::Lines(n);
        self
    }

    /// The banner runs up to and with the first line that contains `marker`.
    pub fn banner_until(mut self, marker: &str) -> Program {
        self.banner = Banner::Until(marker.to_owned());
        self
    }

    /// Runs the program through `wrapper` (`taskset -c 1`): the command line is the wrapper's words, then
    /// the program and its arguments.
    pub fn wrapped(mut self, wrapper: &[&str]) -> Program {
        self.wrapper = wrapper.iter().map(OsString::from).collect();
        self
    }

    /// Has `sh` run `commands` (`umask 022`, `ulimit -n 64`) and then, if they succeed, `exec` the program (the
    /// same process).
    pub fn after_shell(self, commands: &str) -> Program {
        self.wrapped(&["sh", "-c", &format!("{commands} && exec \"$0\" \"$@\"")])
    }

    /// Starts the program and reads its banner (failing the test if it takes longer than [`crate::WAIT`]).
    pub async fn start(self) -> Running {
        let Program { name, program, args, env, wrapper, state, log, stdout_unread, banner: until } = self;
        let (scratch, state) = match state {
            State::Unset => (None, None),
            State::Given(dir) => (None, Some(dir)),
            State::Fresh => {
                let scratch = crate::temp_dir();
                // Not made here: the program makes it, as on a first start.
                let dir = scratch.path().join("state");
                (Some(scratch), Some(dir))
            }
        };
        let mut words = wrapper.into_iter().chain([program]);
        let mut command = Command::new(words.next().unwrap());
        command.args(words).args(&args);
        for name in inherited_settings() {
            command.env_remove(name);
        }
        if let Some(dir) = &state {
            command.env("UPLINK_STATE_DIR", dir);
        }
        for (variable, value) in &env {
            match value {
                Some(value) => command.env(variable, value),
                None => command.env_remove(variable),
            };
        }
        let stdout = if stdout_unread {
            let (reader, writer) = std::io::pipe().unwrap();
            drop(reader);
            Stdio::from(writer)
        } else {
            Stdio::piped()
        };
        let stderr = match log {
            Log::Dropped => Stdio::null(),
            Log::Captured => Stdio::piped(),
            Log::Shown => Stdio::inherit(),
        };
        let mut child = command
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("{name} does not start: {e}"));
        let mut out = child.stdout.take().map(read_lines);
        let log = child.stderr.take().map(read_lines);
        let banner = match &mut out {
            None => Vec::new(),
            Some(out) => {
                within_for(&format!("{name}'s banner"), START_WAIT, async {
                    let mut banner: Vec<String> = Vec::new();
                    loop {
                        let done = match &until {
                            Banner::Lines(n) => banner.len() >= *n,
                            Banner::Until(marker) => banner.last().is_some_and(|l| l.contains(marker.as_str())),
                        };
                        if done {
                            return banner;
                        }
                        match out.recv().await {
                            Some(line) => banner.push(text(&name, line)),
                            None => panic!("{name} ended before its banner was out: {banner:?}"),
                        }
                    }
                })
                .await
            }
        };
        let out = out.unwrap_or_else(|| mpsc::unbounded_channel().1);
        Running { child, banner, name, out, log, state, _scratch: scratch }
    }
}

/// One line a program printed: text, or (lossily read) what is not.
type Line = Result<String, String>;

/// The text of `line`, which `name` printed; a line that is not UTF-8 fails the test.
fn text(name: &str, line: Line) -> String {
    line.unwrap_or_else(|lossy| panic!("{name} printed a line that is not UTF-8: {lossy}"))
}

/// Reads `from` line by line as it comes, until it ends; the lines. It goes on reading when nobody takes
/// them any more.
fn read_lines(from: impl AsyncRead + Unpin + Send + 'static) -> mpsc::UnboundedReceiver<Line> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut from = BufReader::new(from);
        let mut line = Vec::new();
        loop {
            line.clear();
            match from.read_until(b'\n', &mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    let text = line.strip_suffix(b"\n").unwrap_or(&line);
                    let text = text.strip_suffix(b"\r").unwrap_or(text);
                    let line = String::from_utf8(text.to_vec()).map_err(|_| String::from_utf8_lossy(text).into_owned());
                    let _ = tx.send(line);
                }
            }
        }
    });
    rx
}

/// A started [`Program`]: killed when dropped, its fresh state directory removed.
pub struct Running {
    pub child: Child,
    /// The banner's lines.
    pub banner: Vec<String>,
    name: String,
    out: mpsc::UnboundedReceiver<Line>,
    log: Option<mpsc::UnboundedReceiver<Line>>,
    state: Option<PathBuf>,
    // Last: removed once the child is killed.
    _scratch: Option<tempfile::TempDir>,
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.id().expect("the program runs")
    }

    /// Where the program keeps its state.
    pub fn state_dir(&self) -> &Path {
        self.state.as_deref().expect("a program with a state directory")
    }

    /// The first word after `marker` in the banner.
    pub fn word_after(&self, marker: &str) -> String {
        self.banner
            .iter()
            .find_map(|line| line.split(marker).nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no {marker:?} in {}'s banner {:?}", self.name, self.banner))
            .to_owned()
    }

    /// A gateway's base URL, `http://ADDR`.
    pub fn base_url(&self) -> String {
        self.word_after("listening on ")
    }

    /// A gateway's URL for sleds, `ws://ADDR/api/sled-uplink`.
    pub fn ws_url(&self) -> String {
        self.word_after("sleds connect to ")
    }

    /// The sled token a gateway generated at its first start.
    pub fn sled_token(&self) -> String {
        self.word_after("sled token (generated):")
    }

    /// The admin token a gateway generated at its first start.
    pub fn admin_token(&self) -> String {
        self.word_after("admin token (generated):")
    }

    /// Where a sled's agents ask, `http://ADDR/permission`.
    pub fn ask_url(&self) -> String {
        self.word_after("agents ask at ")
    }

    /// A sled's local face, `http://ADDR`.
    pub fn local_url(&self) -> String {
        let ask = self.ask_url();
        ask.strip_suffix("/permission").unwrap_or_else(|| panic!("{ask} is no permission URL")).to_owned()
    }

    /// The next line of standard output after the banner.
    pub async fn line(&mut self) -> String {
        let line = within(&format!("a line from {}", self.name), self.out.recv()).await.expect("the output ended");
        text(&self.name, line)
    }

    /// The lines of standard output not read yet, up to its end (the program has exited, or is about to).
    pub async fn rest(&mut self) -> Vec<String> {
        let (out, name) = (&mut self.out, &self.name);
        within(&format!("the rest of {name}'s output"), async {
            let mut rest = Vec::new();
            while let Some(line) = out.recv().await {
                rest.push(text(name, line));
            }
            rest
        })
        .await
    }

    /// The log's lines, and the program's name.
    fn log_lines(&mut self) -> (&mut mpsc::UnboundedReceiver<Line>, &str) {
        (self.log.as_mut().expect("a program started with `log()`"), &self.name)
    }

    /// Log lines until one contains `marker`; all of them.
    pub async fn log_until(&mut self, marker: &str) -> Vec<String> {
        self.log_until_one(marker, |line| line.contains(marker)).await
    }

    /// Log lines until `done` holds for one; all of them.
    pub async fn log_until_one(&mut self, what: &str, done: impl Fn(&str) -> bool) -> Vec<String> {
        let (log, name) = self.log_lines();
        within(what, async {
            let mut lines = Vec::new();
            loop {
                let line = text(name, log.recv().await.expect("the log ended"));
                let last = done(&line);
                lines.push(line);
                if last {
                    return lines;
                }
            }
        })
        .await
    }

    /// The log not read yet, up to its end (the program has exited, or is about to), a line a line.
    pub async fn log_rest(&mut self) -> String {
        let what = format!("the rest of {}'s log", self.name);
        let (log, name) = self.log_lines();
        within(&what, async {
            let mut rest = Vec::new();
            while let Some(line) = log.recv().await {
                rest.push(text(name, line));
            }
            rest.join("\n")
        })
        .await
    }

    /// Sends the signal `name` (`-HUP`, `-TERM`) with `kill`.
    pub fn signal(&self, name: &str) {
        let pid = self.pid().to_string();
        let sent = std::process::Command::new("kill").args([name, &pid]).status().unwrap();
        assert!(sent.success(), "kill {name} {pid}: {sent}");
    }

    /// Sends SIGTERM: the program is asked to stop.
    pub fn terminate(&self) {
        self.signal("-TERM");
    }

    /// Waits for the program to exit.
    pub async fn wait(&mut self) -> ExitStatus {
        within(&format!("{} to exit", self.name), self.child.wait()).await.unwrap()
    }

    /// SIGTERM, then waits for the program to exit.
    pub async fn stop(&mut self) -> ExitStatus {
        self.terminate();
        self.wait().await
    }

    /// SIGKILL, then waits for the program to be gone.
    pub async fn kill(&mut self) {
        within(&format!("{} to be killed", self.name), self.child.kill()).await.unwrap();
    }
}
