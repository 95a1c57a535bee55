//! The processes of a chaos run: start, SIGKILL, replace, stop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::ChaosConfig;

struct Member {
    child: Child,
    role: &'static str,
    log: PathBuf,
    started: Instant,
}

/// Orchestrators and workers running as child processes of this one.
pub struct Fleet {
    exe: PathBuf,
    url: String,
    worker_args: Vec<String>,
    worker_prefix: String,
    log_dir: PathBuf,
    members: Vec<Member>,
    spawned: usize,
    worker_kills: usize,
    orchestrator_kills: usize,
}

impl Fleet {
    /// Starts the configured number of orchestrators and workers.
    /// Workers serve `namespace` only.
    pub fn start(cfg: &ChaosConfig, namespace: &str) -> anyhow::Result<Self> {
        let log_dir = std::env::temp_dir().join(format!("lineq-chaos-{}", std::process::id()));
        std::fs::create_dir_all(&log_dir).context("creating the log directory")?;
        let mut fleet = Self {
            exe: std::env::current_exe().context("finding the lineq binary")?,
            url: cfg.database_url.clone(),
            worker_args: vec![
                "--namespace".into(),
                namespace.to_string(),
                "--visibility-timeout-secs".into(),
                cfg.visibility_timeout_secs.to_string(),
                "--poll-interval-ms".into(),
                "250".into(),
                "--concurrency".into(),
                "16".into(),
                "--shutdown-grace-secs".into(),
                "10".into(),
            ],
            // Unique to the run: two runs on one database must not share worker ids.
            worker_prefix: format!("{namespace}-worker"),
            log_dir,
            members: Vec::new(),
            spawned: 0,
            worker_kills: 0,
            orchestrator_kills: 0,
        };
        for _ in 0..cfg.orchestrators.max(1) {
            fleet.spawn("orchestrator")?;
        }
        for _ in 0..cfg.workers.max(1) {
            fleet.spawn("worker")?;
        }
        eprintln!("chaos: process logs in {}", fleet.log_dir.display());
        Ok(fleet)
    }

    fn spawn(&mut self, role: &'static str) -> anyhow::Result<()> {
        self.spawned += 1;
        let log = self.log_dir.join(format!("{role}-{}.log", self.spawned));
        let out = std::fs::File::create(&log).context("creating a process log")?;
        let err = out.try_clone().context("creating a process log")?;
        let mut cmd = Command::new(&self.exe);
        cmd.arg(role)
            .env("DATABASE_URL", &self.url)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        if role == "worker" {
            cmd.args(&self.worker_args).args([
                "--worker-id",
                &format!("{}-{}", self.worker_prefix, self.spawned),
            ]);
        } else {
            cmd.args(["--poll-interval-ms", "250"]);
        }
        let child = cmd.spawn().with_context(|| format!("starting a {role}"))?;
        self.members.push(Member {
            child,
            role,
            log,
            started: Instant::now(),
        });
        Ok(())
    }

    /// SIGKILLs a random live worker.
    pub fn kill_random_worker(&mut self) -> anyhow::Result<()> {
        let live: Vec<usize> = (0..self.members.len())
            .filter(|i| self.members[*i].role == "worker")
            .collect();
        if live.is_empty() {
            return Ok(());
        }
        // Random enough: the random bits of a fresh UUIDv7.
        let pick = live[(uuid::Uuid::now_v7().as_u128() as usize) % live.len()];
        let mut m = self.members.remove(pick);
        let _ = m.child.kill();
        let _ = m.child.wait();
        self.worker_kills += 1;
        self.spawn("worker")
    }

    /// SIGKILLs one orchestrator and starts a replacement.
    pub fn kill_one_orchestrator(&mut self) -> anyhow::Result<()> {
        if let Some(i) = self.members.iter().position(|m| m.role == "orchestrator") {
            let mut m = self.members.remove(i);
            let _ = m.child.kill();
            let _ = m.child.wait();
            self.orchestrator_kills += 1;
            eprintln!("chaos: SIGKILLed an orchestrator");
            self.spawn("orchestrator")?;
        }
        Ok(())
    }

    /// True once an orchestrator has been killed.
    pub fn orchestrator_killed(&self) -> bool {
        self.orchestrator_kills > 0
    }

    /// Replaces processes that died by themselves (they should not).
    pub fn replace_dead(&mut self) -> anyhow::Result<()> {
        let mut dead = Vec::new();
        for (i, m) in self.members.iter_mut().enumerate() {
            if let Ok(Some(status)) = m.child.try_wait() {
                eprintln!(
                    "chaos: a {} exited by itself ({status}); replacing it",
                    m.role
                );
                dead.push(i);
            }
        }
        for i in dead.into_iter().rev() {
            let m = self.members.remove(i);
            self.spawn(m.role)?;
        }
        Ok(())
    }

    /// Workers killed so far.
    pub fn worker_kills(&self) -> usize {
        self.worker_kills
    }

    /// Orchestrators killed so far.
    pub fn orchestrator_kills(&self) -> usize {
        self.orchestrator_kills
    }

    /// SIGTERMs everyone and waits; returns how many did not exit 0.
    pub fn stop(&mut self, within: Duration) -> anyhow::Result<usize> {
        // Graceful shutdown is about running processes: give a replacement started a moment ago
        // time to start before asking it to stop.
        if let Some(youngest) = self.members.iter().map(|m| m.started).max() {
            let settle = Duration::from_secs(1).saturating_sub(youngest.elapsed());
            std::thread::sleep(settle);
        }
        for m in &self.members {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(m.child.id().to_string())
                .status();
        }
        let deadline = Instant::now() + within;
        let mut clean = 0;
        for m in &mut self.members {
            loop {
                match m.child.try_wait()? {
                    Some(s) => {
                        if s.success() {
                            clean += 1;
                        } else {
                            eprintln!(
                                "chaos: a {} exited {s} on SIGTERM; see {}",
                                m.role,
                                m.log.display()
                            );
                        }
                        break;
                    }
                    None if Instant::now() > deadline => {
                        let _ = m.child.kill();
                        let _ = m.child.wait();
                        break;
                    }
                    None => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
        let n = self.members.len();
        self.members.clear();
        if clean < n {
            eprintln!(
                "chaos: {} of {n} processes did not exit cleanly on SIGTERM",
                n - clean
            );
        }
        Ok(n - clean)
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for m in &mut self.members {
            let _ = m.child.kill();
            let _ = m.child.wait();
        }
    }
}
