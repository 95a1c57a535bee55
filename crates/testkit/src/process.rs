//! Real `lineq` processes: run a command to completion, or start one (an orchestrator, a
//! worker, `lineq serve`) that logs to a file and is killed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use uuid::Uuid;

/// The `lineq` binary under test: `LINEQ_BIN` when set, else the `lineq` that cargo built next
/// to the running test binary (`target/<profile>/deps/<test>` → `target/<profile>/lineq`).
pub fn lineq_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("LINEQ_BIN") {
            return PathBuf::from(bin);
        }
        let exe = std::env::current_exe().expect("the test binary's path");
        let profile_dir = exe
            .parent()
            .and_then(|deps| deps.parent())
            .expect("the test binary lives in target/<profile>/deps");
        let bin = profile_dir.join(format!("lineq{}", std::env::consts::EXE_SUFFIX));
        assert!(
            bin.exists(),
            "{} is missing: run the tests through cargo (which builds it) or set LINEQ_BIN",
            bin.display()
        );
        bin
    })
}

/// Runs `lineq ARGS` against `url` to completion.
pub fn lineq(url: &str, args: &[&str]) -> Output {
    Command::new(lineq_bin())
        .args(args)
        .env("DATABASE_URL", url)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run lineq")
}

/// Runs `lineq ARGS` against `url` to completion, after `configure` (environment, ...).
pub fn lineq_with(url: &str, args: &[&str], configure: impl FnOnce(&mut Command)) -> Output {
    let mut cmd = Command::new(lineq_bin());
    cmd.args(args)
        .env("DATABASE_URL", url)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    configure(&mut cmd);
    cmd.output().expect("run lineq")
}

/// A running `lineq` process, killed if still running when dropped.
pub struct Proc {
    /// The process.
    pub child: Child,
    /// The file its stdout and stderr go to.
    pub log: PathBuf,
    /// The name it was started under (in logs and panics).
    pub name: String,
}

impl Proc {
    /// Starts `lineq ARGS` against `url`, logging to a file.
    pub fn start(url: &str, name: &str, args: &[&str]) -> Self {
        Self::start_with(url, name, args, |_| {})
    }

    /// Like [`Proc::start`], after `configure` (environment, ...).
    pub fn start_with(
        url: &str,
        name: &str,
        args: &[&str],
        configure: impl FnOnce(&mut Command),
    ) -> Self {
        let dir = std::env::temp_dir().join("lineq-test-logs");
        let _ = std::fs::create_dir_all(&dir);
        let log = dir.join(format!("{name}-{}.log", Uuid::now_v7().simple()));
        let file = std::fs::File::create(&log).expect("log file");
        let err = file.try_clone().expect("log file");
        let mut cmd = Command::new(lineq_bin());
        cmd.args(args)
            .env("DATABASE_URL", url)
            .env("RUST_LOG", "info,sqlx=warn")
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err);
        configure(&mut cmd);
        let child = cmd.spawn().expect("spawn lineq");
        Self {
            child,
            log,
            name: name.to_string(),
        }
    }

    /// Sends SIGTERM and waits for the exit status (at most `within`).
    pub fn terminate(&mut self, within: Duration) -> ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        self.wait(within)
    }

    /// Sends SIGKILL.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for exit, at most `within`; panics with the log when it does not exit.
    pub fn wait(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "{} did not exit within {within:?}; log:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// True while running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The process's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log path.
    pub fn log_path(&self) -> &Path {
        &self.log
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// stdout of a finished command, as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// stderr of a finished command, as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
