//! The system under test as real processes of this same binary — `seckill serve
//! --no-rival-workers` and `seckill consume --rival-workers` — so a fault can SIGKILL one and
//! start it again. Each cell of the matrix gets its own pair, on queue and Redis prefixes of
//! its own and a PostgreSQL `application_name` of its own (what `pg-kill-connections` aims
//! at). Their logs go to files in `--out`, one per process and start.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

/// How long a started API may take to answer `/healthz`.
const READY_WAIT: Duration = Duration::from_secs(60);

/// Which of the two processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `seckill serve`: the API, and the synchronous paths' deciders.
    Serve,
    /// `seckill consume`: the queue path's decider, the stream writer and the redis-mq
    /// consumers.
    Consume,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Serve => "serve",
            Role::Consume => "consume",
        }
    }
}

/// What both processes are started with.
#[derive(Debug, Clone)]
pub struct Launch {
    pub exe: PathBuf,
    /// The environment both get (on top of this process's own).
    pub env: Vec<(String, String)>,
    pub bind: std::net::SocketAddr,
    pub logs: PathBuf,
    /// Names the log files.
    pub tag: String,
}

/// The two running processes.
pub struct Children {
    launch: Launch,
    serve: Child,
    consume: Child,
    starts: usize,
}

impl Children {
    /// Starts both and waits until the API answers `/healthz`.
    pub async fn start(launch: Launch, http: &reqwest::Client) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&launch.logs)?;
        let consume = spawn(&launch, Role::Consume, 0)?;
        let serve = spawn(&launch, Role::Serve, 0)?;
        let mut children = Self {
            launch,
            serve,
            consume,
            starts: 1,
        };
        children.wait_ready(http).await?;
        Ok(children)
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.launch.bind)
    }

    /// SIGKILLs one of them (no chance to finish anything) and waits for it to be gone.
    pub async fn kill(&mut self, role: Role) -> anyhow::Result<()> {
        let child = self.child(role);
        child.start_kill()?;
        child.wait().await?;
        Ok(())
    }

    /// Starts one of them again (after [`kill`](Self::kill)); the API is waited for.
    pub async fn restart(&mut self, role: Role, http: &reqwest::Client) -> anyhow::Result<()> {
        let fresh = spawn(&self.launch, role, self.starts)?;
        self.starts += 1;
        *self.child(role) = fresh;
        if role == Role::Serve {
            self.wait_ready(http).await?;
        }
        Ok(())
    }

    /// An error if either died on its own (a crash the fault did not ask for).
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for role in [Role::Serve, Role::Consume] {
            if let Some(status) = self.child(role).try_wait()? {
                anyhow::bail!(
                    "seckill {} exited on its own ({status}); see its log in {}",
                    role.as_str(),
                    self.launch.logs.display()
                );
            }
        }
        Ok(())
    }

    /// Stops both with SIGTERM (a graceful stop), SIGKILL past 10 s.
    pub async fn stop(mut self) {
        for role in [Role::Serve, Role::Consume] {
            let child = self.child(role);
            if let Some(pid) = child.id() {
                // SIGTERM through kill(1): tokio's Child only sends SIGKILL.
                let _ = std::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status();
            }
            if tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .is_err()
            {
                let _ = child.start_kill();
                let _ = child.wait().await;
            }
        }
    }

    fn child(&mut self, role: Role) -> &mut Child {
        match role {
            Role::Serve => &mut self.serve,
            Role::Consume => &mut self.consume,
        }
    }

    async fn wait_ready(&mut self, http: &reqwest::Client) -> anyhow::Result<()> {
        let url = format!("{}/healthz", self.base_url());
        let deadline = Instant::now() + READY_WAIT;
        loop {
            self.check_alive()?;
            let answer = http.get(&url).timeout(Duration::from_secs(2)).send().await;
            if answer.is_ok_and(|r| r.status().is_success()) {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "seckill serve did not answer {url} within {READY_WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn spawn(launch: &Launch, role: Role, start: usize) -> anyhow::Result<Child> {
    let log = log_file(&launch.logs, &launch.tag, role, start);
    let out = std::fs::File::create(&log)?;
    let mut command = Command::new(&launch.exe);
    match role {
        Role::Serve => command.args(["serve", "--no-rival-workers"]),
        Role::Consume => command.args(["consume", "--rival-workers"]),
    };
    command
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .env("SECKILL_BIND", launch.bind.to_string())
        .env(
            "RUST_LOG",
            std::env::var("SECKILL_FAULTS_CHILD_LOG").unwrap_or_else(|_| "seckill=info".into()),
        )
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .kill_on_drop(true);
    command.spawn().map_err(|e| {
        anyhow::anyhow!(
            "cannot start {} {}: {e}",
            launch.exe.display(),
            role.as_str()
        )
    })
}

fn log_file(dir: &Path, tag: &str, role: Role, start: usize) -> PathBuf {
    dir.join(format!("{tag}-{}-{start}.log", role.as_str()))
}

/// A free port on loopback for the next API.
pub fn free_bind() -> anyhow::Result<std::net::SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}
