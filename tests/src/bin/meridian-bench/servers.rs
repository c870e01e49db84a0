//! Starting, probing and stopping the servers under test: a single-member etcd and a single-node
//! Meridian, each a real process on loopback with its data dir in a fresh temporary directory.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use meridian_proto::v1::registry_client::RegistryClient;
use meridian_proto::v1::{CreateNamespaceRequest, CreateServiceRequest};
use tokio::time::sleep;
use tonic::Code;
use tonic::transport::Endpoint;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::etcdserverpb::PutRequest;
use crate::etcdserverpb::kv_client::KvClient;

/// How long a server may take from spawn to answering writes.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Units of `utime`/`stime` in `/proc/PID/stat`: Linux's `USER_HZ`, 100 on every architecture
/// this builds for.
const CLOCK_TICKS_PER_SEC: u64 = 100;

/// The namespace and service that every Meridian registration goes to.
pub(crate) const BENCH_NAMESPACE: &str = "bench.local";
pub(crate) const BENCH_SERVICE: &str = "svc.bench.local";

/// A running server process. Dropping it kills and reaps the process (also on error or panic),
/// then removes its data dir.
pub(crate) struct ServerGuard {
    name: &'static str,
    child: Child,
    /// The gRPC address clients dial, e.g. `http://127.0.0.1:40123`.
    pub(crate) url: String,
    /// The command line, as run (for the report).
    pub(crate) command: String,
    log: PathBuf,
    /// What was run, so that [`ServerGuard::restart`] can run it again.
    program: PathBuf,
    args: Vec<String>,
    pin: bool,
    // Declared last: removed after the process is gone.
    dir: tempfile::TempDir,
}

impl ServerGuard {
    /// Spawns `program args...` (under `taskset -c 0` when `pin`), logging to `dir/server.log`.
    pub(crate) fn spawn(
        name: &'static str,
        program: &Path,
        args: Vec<String>,
        pin: bool,
        url: String,
        dir: tempfile::TempDir,
    ) -> Result<Self> {
        let log = dir.path().join("server.log");
        let child = Self::start(name, program, &args, pin, &log)?;
        let command = format!(
            "{}{} {}",
            if pin { "taskset -c 0 " } else { "" },
            program.display(),
            args.join(" ")
        );
        Ok(Self {
            name,
            child,
            url,
            command,
            log,
            program: program.to_owned(),
            args,
            pin,
            dir,
        })
    }

    /// Spawns the process, appending its output to `log`.
    fn start(
        name: &'static str,
        program: &Path,
        args: &[String],
        pin: bool,
        log: &Path,
    ) -> Result<Child> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let err = out.try_clone()?;
        let mut cmd = if pin {
            // taskset execs the server, so the child's pid is the server's own.
            let mut c = Command::new("taskset");
            c.arg("-c").arg("0").arg(program);
            c
        } else {
            Command::new(program)
        };
        // A bench server exports no telemetry, whatever the environment says.
        cmd.args(args)
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        cmd.spawn()
            .with_context(|| format!("starting {name}: {}", program.display()))
    }

    /// Kills the process with SIGKILL and reaps it; its data dir stays (for [`Self::restart`]).
    pub(crate) fn kill(&mut self) -> Result<()> {
        if self.child.try_wait()?.is_none() {
            self.child
                .kill()
                .with_context(|| format!("killing {}", self.name))?;
        }
        self.child.wait()?;
        Ok(())
    }

    /// SIGTERM: asks the process to stop gracefully, and returns at once (the process is
    /// reaped on drop).
    pub(crate) fn terminate(&mut self) -> Result<()> {
        meridian_tests::send_signal(self.child.id(), "-TERM")
            .with_context(|| format!("sending SIGTERM to {}", self.name))
    }

    /// Kills the process if it still runs, then starts the same command again on the same
    /// data dir (its output appended to the same log).
    pub(crate) fn restart(&mut self) -> Result<()> {
        self.kill()?;
        self.child = Self::start(self.name, &self.program, &self.args, self.pin, &self.log)?;
        Ok(())
    }

    /// The temporary directory holding the server's data dir and its log.
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What the report calls it (`etcd`, `meridian`, `haproxy`, …).
    pub(crate) fn name(&self) -> &'static str {
        self.name
    }

    /// Resident memory now, in bytes (`VmRSS` of `/proc/PID/status`).
    pub(crate) fn rss(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .with_context(|| format!("reading {}'s /proc status", self.name))?;
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .context("no VmRSS line")?
            .parse()?;
        Ok(kib * 1024)
    }

    /// CPU time the process has used so far, user + system, over all its threads
    /// (`utime` + `stime` of `/proc/PID/stat`, in clock ticks of 10 ms: read it around runs
    /// of seconds, not single requests).
    pub(crate) fn cpu_time(&self) -> Result<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .with_context(|| format!("reading {}'s /proc stat", self.name))?;
        // The command name (field 2) may hold spaces: count fields after its closing ')'.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .context("no ')' in /proc stat")?
            .1
            .split_whitespace()
            .collect();
        let ticks =
            |i: usize| -> Result<u64> { Ok(fields.get(i).context("short /proc stat")?.parse()?) };
        // utime and stime are fields 14 and 15, i.e. 11 and 12 after the state (field 3).
        let total = ticks(11)? + ticks(12)?;
        Ok(Duration::from_millis(total * 1000 / CLOCK_TICKS_PER_SEC))
    }

    /// Fails if the process has exited, quoting the end of its log.
    pub(crate) fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited early ({status}); last log lines:\n{}",
                self.name,
                self.log_tail(20)
            );
        }
        Ok(())
    }

    /// The last `n` lines of the server's log.
    pub(crate) fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The server's process id (taskset execs the server, so it is the server's own).
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A lazily connecting channel to the server (connects on first use).
    pub(crate) fn endpoint(&self) -> Result<Endpoint> {
        Ok(Endpoint::from_shared(self.url.clone())?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .tcp_nodelay(true))
    }

    /// Retries `probe` until it succeeds, the process dies, or READY_TIMEOUT passes.
    pub(crate) async fn wait_ready<F, Fut>(&mut self, mut probe: F) -> Result<()>
    where
        F: FnMut(Endpoint) -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        let start = Instant::now();
        loop {
            self.check_alive()?;
            let err = match probe(self.endpoint()?).await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if start.elapsed() > READY_TIMEOUT {
                bail!(
                    "{} not ready after {READY_TIMEOUT:?}: {err:#}; last log lines:\n{}",
                    self.name,
                    self.log_tail(20)
                );
            }
            sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for ServerGuard {
    fn drop(&mut self) {
        // Errors here mean the process is already gone: nothing left to do.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port that was free a moment ago on 127.0.0.1 (bound to port 0, read, released).
pub(crate) fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// A fresh temporary directory under `root`, so both systems' data dirs sit on the same disk.
pub(crate) fn data_dir(root: &Path, prefix: &str) -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(root)
        .with_context(|| format!("creating a temporary directory in {}", root.display()))
}

/// Starts a single-member etcd (fsync on: etcd's default) and waits until it accepts a put.
pub(crate) async fn start_etcd(bin: &Path, data_root: &Path, pin: bool) -> Result<ServerGuard> {
    let dir = data_dir(data_root, "bench-etcd-")?;
    let client = format!("http://127.0.0.1:{}", free_port()?);
    let peer = format!("http://127.0.0.1:{}", free_port()?);
    let args = vec![
        "--name".to_owned(),
        "default".to_owned(),
        "--data-dir".to_owned(),
        dir.path().join("data").display().to_string(),
        "--listen-client-urls".to_owned(),
        client.clone(),
        "--advertise-client-urls".to_owned(),
        client.clone(),
        "--listen-peer-urls".to_owned(),
        peer.clone(),
        "--initial-advertise-peer-urls".to_owned(),
        peer.clone(),
        "--initial-cluster".to_owned(),
        format!("default={peer}"),
    ];
    let mut server = ServerGuard::spawn("etcd", bin, args, pin, client, dir)?;
    wait_etcd_ready(&mut server).await?;
    Ok(server)
}

/// Waits until an etcd member accepts a put (it has joined its cluster and has a leader).
pub(crate) async fn wait_etcd_ready(server: &mut ServerGuard) -> Result<()> {
    server
        .wait_ready(|endpoint| async move {
            let mut kv = KvClient::new(endpoint.connect().await?);
            kv.put(PutRequest {
                key: b"/bench-ready".to_vec(),
                value: b"1".to_vec(),
                ..Default::default()
            })
            .await?;
            Ok(())
        })
        .await
}

/// Starts a single-node Meridian, waits until it serves and has a leader, then creates the
/// namespace and service that the benchmark registers into.
pub(crate) async fn start_meridian(bin: &Path, data_root: &Path, pin: bool) -> Result<ServerGuard> {
    let dir = data_dir(data_root, "bench-meridian-")?;
    let listen = format!("127.0.0.1:{}", free_port()?);
    let args = vec![
        "server".to_owned(),
        "--id".to_owned(),
        "1".to_owned(),
        "--data-dir".to_owned(),
        dir.path().join("data").display().to_string(),
        "--listen".to_owned(),
        listen.clone(),
        "--dns-listen".to_owned(),
        format!("127.0.0.1:{}", free_port()?),
        "--admin-listen".to_owned(),
        format!("127.0.0.1:{}", free_port()?),
        "--peers".to_owned(),
        format!("1={listen}"),
    ];
    let url = format!("http://{listen}");
    let mut server = ServerGuard::spawn("meridian", bin, args, pin, url, dir)?;
    // First the standard gRPC health service, then a write: the first write also proves that
    // the node has elected itself leader.
    server
        .wait_ready(|endpoint| async move {
            let channel = endpoint.connect().await?;
            let status = HealthClient::new(channel.clone())
                .check(HealthCheckRequest::default())
                .await?
                .into_inner()
                .status;
            if status != ServingStatus::Serving as i32 {
                bail!("health status {status}");
            }
            let created = RegistryClient::new(channel)
                .create_namespace(CreateNamespaceRequest {
                    name: BENCH_NAMESPACE.to_owned(),
                    ..Default::default()
                })
                .await;
            match created {
                Ok(_) => Ok(()),
                Err(s) if s.code() == Code::AlreadyExists => Ok(()),
                Err(s) => Err(s.into()),
            }
        })
        .await?;
    let mut registry = RegistryClient::new(server.endpoint()?.connect().await?);
    registry
        .create_service(CreateServiceRequest {
            name: BENCH_SERVICE.to_owned(),
            ..Default::default()
        })
        .await
        .context("creating the benchmark service")?;
    Ok(server)
}

/// First line of `program --version`, or a note saying why there is none.
pub(crate) fn version(program: &Path) -> String {
    match Command::new(program).arg("--version").output() {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .replace(" Version:", ""), // etcd says "etcd Version: 3.4.23"
        Ok(out) => format!("unknown (`--version` exited with {})", out.status),
        Err(e) => format!("unknown ({e})"),
    }
}
