//! The `meridian` binary as a user runs it: real processes, real signals, the CLI tour of
//! the README, `kill -9` and a restart on the same data dir.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

#[path = "process/telemetry.rs"]
mod telemetry;

const BIN: &str = env!("CARGO_BIN_EXE_meridian");

/// A `meridian server` process, killed (and reaped) when dropped, also on panic.
struct Server {
    child: Child,
    url: String,
}

// === impl Server ===

impl Server {
    fn start(data_dir: &Path) -> Self {
        Self::start_with(data_dir, |_| {})
    }

    /// [`Server::start`] with more flags or variables set by `extra`.
    fn start_with(data_dir: &Path, extra: impl FnOnce(&mut Command)) -> Self {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let mut command = Command::new(BIN);
        command
            .args(["server", "--id", "1", "--data-dir"])
            .arg(data_dir)
            .args(["--listen", &listen, "--peers", &format!("1={listen}")])
            .args(["--dns-listen", &format!("127.0.0.1:{}", free_port())])
            .args(["--admin-listen", &format!("127.0.0.1:{}", free_port())])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        extra(&mut command);
        let child = command.spawn().expect("spawn meridian server");
        let server = Self {
            child,
            url: format!("http://{listen}"),
        };
        wait_for(
            "the server to elect itself",
            Duration::from_secs(20),
            || {
                let out = server.cli(&["cluster", "status", "--json"]);
                out.status.success() && json(&out)["leader_id"] == 1
            },
        );
        server
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("MERIDIAN_ADDR", &self.url)
            .output()
            .expect("run meridian")
    }

    /// Runs a client command that must succeed; returns its stdout.
    #[track_caller]
    fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "meridian {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    }

    /// Runs a client command that must fail; returns its one-line stderr.
    #[track_caller]
    fn fails(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(!out.status.success(), "meridian {args:?} should fail");
        let err = String::from_utf8(out.stderr).expect("utf-8");
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "one line expected: {err:?}"
        );
        err.trim_end().to_owned()
    }

    fn kill_9(mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reap");
    }

    /// SIGTERM, then the exit status (the process must exit on its own).
    fn terminate(mut self) -> std::process::ExitStatus {
        meridian_tests::send_signal(self.child.id(), "-TERM").expect("send SIGTERM");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "server ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    meridian_tests::free_loopback_addr().port()
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

fn wait_for(what: &str, patience: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + patience;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "gave up waiting for {what} after {patience:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ids(discovered: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(discovered).expect("json");
    let mut ids: Vec<String> = v["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .map(|i| i["id"].as_str().expect("id").to_owned())
        .collect();
    ids.sort();
    ids
}

/// The README's CLI tour runs exactly as written: every `$ meridian ...` line of its
/// console block, against a fresh server, prints what the README shows.
#[test]
fn readme_cli_tour_runs_as_written() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let tour = readme
        .split("```console\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("README has a ```console block");
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let addr = server.url.trim_start_matches("http://").to_owned();

    let mut steps: Vec<(String, String)> = Vec::new();
    for line in tour.lines() {
        match line.strip_prefix("$ meridian ") {
            Some(command) => steps.push((command.to_owned(), String::new())),
            None => {
                let (_, expected) = steps.last_mut().expect("output follows a command");
                expected.push_str(line);
                expected.push('\n');
            }
        }
    }
    assert!(steps.len() >= 8, "the tour lost its commands");
    for (command, expected) in steps {
        let args: Vec<&str> = command.split_whitespace().collect();
        let out = server.cli(&args);
        let printed = if out.status.success() {
            out.stdout
        } else {
            out.stderr
        };
        let printed = String::from_utf8(printed)
            .unwrap()
            .replace(&addr, "127.0.0.1:7400");
        // Column padding follows the real port's width; compare words, line by line.
        let words = |text: &str| -> Vec<String> {
            text.lines()
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                .collect()
        };
        assert_eq!(words(&printed), words(&expected), "meridian {command}");
    }
}

/// More of the CLI than the README shows.
#[test]
fn cli_commands_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());

    assert!(
        server
            .ok(&["namespace", "create", "cafe.local"])
            .starts_with("namespace cafe.local created (revision ")
    );
    server.ok(&["service", "create", "orders.cafe.local", "--dns-ttl", "5s"]);
    server.ok(&[
        "instance",
        "register",
        "orders.cafe.local",
        "i-1",
        "--address",
        "127.0.0.1",
        "--port",
        "8081",
        "--attr",
        "version=v1",
    ]);
    // --addr is global: accepted after the subcommand too.
    let out = server.cli(&[
        "instance",
        "register",
        "orders.cafe.local",
        "i-2",
        "--address",
        "127.0.0.1",
        "--port",
        "8082",
        "--attr",
        "version=v2",
        "--addr",
        &server.url,
    ]);
    assert!(out.status.success());

    let table = server.ok(&["discover", "orders.cafe.local"]);
    assert!(table.starts_with("ID"), "{table}");
    assert!(
        table.contains("i-1") && table.contains("127.0.0.1:8081") && table.contains("version=v1"),
        "{table}"
    );
    assert_eq!(
        ids(&server.ok(&["discover", "orders.cafe.local", "--json"])),
        ["i-1", "i-2"]
    );
    assert_eq!(
        ids(&server.ok(&[
            "discover",
            "orders.cafe.local",
            "--attr",
            "version=v2",
            "--json"
        ])),
        ["i-2"]
    );
    assert_eq!(
        ids(&server.ok(&[
            "discover",
            "orders.cafe.local",
            "--health",
            "all",
            "--max-results",
            "1",
            "--json"
        ]))
        .len(),
        1
    );

    server.ok(&[
        "instance",
        "set-health",
        "orders.cafe.local",
        "i-2",
        "unhealthy",
    ]);
    assert_eq!(
        ids(&server.ok(&["discover", "orders.cafe.local", "--json"])),
        ["i-1"]
    );
    assert_eq!(
        ids(&server.ok(&[
            "discover",
            "orders.cafe.local",
            "--health",
            "unhealthy",
            "--json"
        ])),
        ["i-2"]
    );
    assert_eq!(
        ids(&server.ok(&[
            "discover",
            "orders.cafe.local",
            "--attr",
            "version=v2",
            "--health",
            "healthy-or-else-all",
            "--json"
        ])),
        ["i-2"]
    );

    let status: Value = serde_json::from_str(&server.ok(&["cluster", "status", "--json"])).unwrap();
    assert_eq!(status["leader_id"], 1);
    assert_eq!(status["role"], "leader");
    assert!(
        server
            .ok(&["service", "list"])
            .contains("orders.cafe.local")
    );
    assert!(server.ok(&["namespace", "list"]).contains("cafe.local"));

    server.ok(&["instance", "deregister", "orders.cafe.local", "i-1"]);
    assert!(
        ids(&server.ok(&["discover", "orders.cafe.local", "--health", "all", "--json"])) == ["i-2"]
    );
}

#[test]
fn bad_input_exits_non_zero_with_one_line_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    server.ok(&["namespace", "create", "cafe.local"]);
    server.ok(&["service", "create", "orders.cafe.local"]);

    let err = server.fails(&[
        "instance",
        "register",
        "orders.cafe.local",
        "i-1",
        "--address",
        "127.0.0.1",
        "--port",
        "0",
    ]);
    assert_eq!(
        err,
        "error: invalid argument: port: 0 is not a port (1-65535)"
    );
    let err = server.fails(&["namespace", "create", "bad_name.local"]);
    assert_eq!(
        err,
        "error: invalid argument: name: label \"bad_name\" contains '_'; only a-z, 0-9 and '-' are allowed"
    );
    let err = server.fails(&["discover", "nope.cafe.local"]);
    assert_eq!(
        err,
        "error: not found: service \"nope.cafe.local\" not found"
    );
    let err = server.fails(&[
        "instance",
        "register",
        "orders.cafe.local",
        "i-1",
        "--address",
        "localhost",
        "--port",
        "80",
    ]);
    assert_eq!(
        err,
        "error: invalid argument: address: \"localhost\" is not an IPv4 or IPv6 address"
    );
    let err = server.fails(&["service", "create", "x.cafe.local", "--check", "icmp"]);
    assert!(err.starts_with("error: --check: \"icmp\" is not"), "{err}");

    // No server there: a one-line reason, not a stack trace.
    let out = Command::new(BIN)
        .args([
            "namespace",
            "list",
            "--addr",
            &format!("http://127.0.0.1:{}", free_port()),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.starts_with("error: cannot reach meridian at http://127.0.0.1:"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1);
}

/// `kill -9` loses nothing that was acknowledged: the same state and revision after restart.
#[test]
fn kill_9_and_restart_keep_state_and_revision() {
    let dir = tempfile::tempdir().unwrap();
    let data: PathBuf = dir.path().join("node-1");
    let server = Server::start(&data);
    server.ok(&["namespace", "create", "cafe.local"]);
    server.ok(&["service", "create", "orders.cafe.local"]);
    for i in 0..20 {
        let id = format!("i-{i}");
        let port = (8000 + i).to_string();
        server.ok(&[
            "instance",
            "register",
            "orders.cafe.local",
            &id,
            "--address",
            "10.0.0.1",
            "--port",
            &port,
            "--attr",
            "version=v1",
        ]);
    }
    server.ok(&["instance", "deregister", "orders.cafe.local", "i-7"]);
    let before = server.ok(&["instance", "list", "orders.cafe.local", "--json"]);
    let before_status: Value =
        serde_json::from_str(&server.ok(&["cluster", "status", "--json"])).unwrap();
    server.kill_9();

    let server = Server::start(&data);
    let after = server.ok(&["instance", "list", "orders.cafe.local", "--json"]);
    assert_eq!(after, before, "same instances, same revisions");
    let after_status: Value =
        serde_json::from_str(&server.ok(&["cluster", "status", "--json"])).unwrap();
    assert_eq!(after_status["revision"], before_status["revision"]);
    assert!(after_status["term"].as_u64() >= before_status["term"].as_u64());

    // And it keeps going from there.
    let next = server.ok(&[
        "instance",
        "register",
        "orders.cafe.local",
        "i-99",
        "--address",
        "10.0.0.2",
        "--port",
        "80",
        "--json",
    ]);
    let next: Value = serde_json::from_str(&next).unwrap();
    assert!(next["revision"].as_u64() > before_status["revision"].as_u64());
}

/// Log compaction and restart from a snapshot plus the log tail.
#[test]
fn restart_from_a_compacted_log() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let start = || {
        let child = Command::new(BIN)
            .args(["server", "--id", "1", "--data-dir"])
            .arg(dir.path())
            .args(["--listen", &listen, "--snapshot-every", "5"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let server = Server {
            child,
            url: format!("http://{listen}"),
        };
        wait_for("leader", Duration::from_secs(20), || {
            json(&server.cli(&["cluster", "status", "--json"]))["leader_id"] == 1
        });
        server
    };
    let server = start();
    server.ok(&["namespace", "create", "cafe.local"]);
    server.ok(&["service", "create", "orders.cafe.local"]);
    for i in 0..23 {
        server.ok(&[
            "instance",
            "register",
            "orders.cafe.local",
            &format!("i-{i}"),
            "--address",
            "10.0.0.1",
            "--port",
            "80",
        ]);
    }
    let status: Value = serde_json::from_str(&server.ok(&["cluster", "status", "--json"])).unwrap();
    // Compacted (more than once: the first snapshot comes at 5 entries, later ones once the
    // log since the last is as large as it), with a tail after the snapshot to replay too.
    let snapshot = status["snapshot_index"].as_u64().unwrap();
    assert!(snapshot >= 10, "{status}");
    assert!(
        snapshot < status["applied_index"].as_u64().unwrap(),
        "{status}"
    );
    // A node alone commits what it wrote: its log ends at its commit index.
    assert_eq!(status["last_index"], status["commit_index"], "{status}");
    let before = server.ok(&["instance", "list", "orders.cafe.local", "--json"]);
    server.kill_9();

    let server = start();
    assert_eq!(
        server.ok(&["instance", "list", "orders.cafe.local", "--json"]),
        before
    );
}

#[test]
fn sigterm_shuts_down_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    server.ok(&["namespace", "create", "cafe.local"]);
    let status = server.terminate();
    assert!(status.success(), "exit status {status:?}");
}

#[test]
fn dev_runs_a_node_in_a_temporary_dir_and_cleans_up() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let dns = format!("127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    let child = Command::new(BIN)
        .args(["dev", "--listen", &listen])
        .args(["--dns-listen", &dns])
        .args(["--admin-listen", &admin])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut server = Server {
        child,
        url: format!("http://{listen}"),
    };
    wait_for("dev node", Duration::from_secs(20), || {
        json(&server.cli(&["cluster", "status", "--json"]))["leader_id"] == 1
    });
    server.ok(&["namespace", "create", "cafe.local"]);

    let stdout = server.child.stdout.take().unwrap();
    let status = server.terminate();
    assert!(status.success());
    let mut banner = String::new();
    std::io::Read::read_to_string(&mut std::io::BufReader::new(stdout), &mut banner).unwrap();
    assert!(
        banner.starts_with(&format!(
            "Meridian dev node: gRPC http://{listen}, DNS {dns}, metrics http://{admin}/metrics (data in "
        )),
        "{banner}"
    );
    let data_dir = banner
        .split("(data in ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .unwrap();
    assert!(
        !Path::new(data_dir).exists(),
        "the temporary data dir {data_dir} should be gone"
    );
}

// --- meridian exec, meridian instance heartbeat, meridian watch --json ---

/// A process started in its own process group, killed with its whole group (so `meridian
/// exec`'s child program too) and reaped when dropped, also on panic.
struct Group {
    child: Child,
}

// === impl Group ===

impl Group {
    fn spawn(command: &mut Command) -> Self {
        use std::os::unix::process::CommandExt as _;
        let child = command.process_group(0).spawn().expect("spawn");
        Self { child }
    }

    fn signal(&self, signal: &str) {
        meridian_tests::send_signal(self.child.id(), signal).expect("send the signal");
    }

    /// Waits for the process to exit on its own.
    fn wait(&mut self, what: &str) -> std::process::ExitStatus {
        let mut status = None;
        wait_for(what, Duration::from_secs(30), || {
            status = self.child.try_wait().expect("try_wait");
            status.is_some()
        });
        status.expect("exited")
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.wait();
    }
}

/// The python3 the exec tests run as a real child program; they fail loudly without it.
fn python3() -> String {
    let out = Command::new("sh")
        .args(["-c", "command -v python3"])
        .output()
        .expect("run sh");
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        out.status.success() && !path.is_empty(),
        "python3 is required by the `meridian exec` tests (apt-get install python3)"
    );
    path
}

impl Server {
    /// `meridian exec ... -- program args`, in its own process group, output discarded.
    fn exec(&self, exec_args: &[&str], program: &[&str]) -> Group {
        Group::spawn(
            Command::new(BIN)
                .arg("exec")
                .args(exec_args)
                .arg("--")
                .args(program)
                .env("MERIDIAN_ADDR", &self.url)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
    }

    /// The instances of `service` (any health), as JSON objects.
    fn instances(&self, service: &str) -> Vec<Value> {
        let listed: Value =
            serde_json::from_str(&self.ok(&["instance", "list", service, "--json"]))
                .expect("instance list --json prints JSON");
        listed["instances"]
            .as_array()
            .expect("an instances array")
            .clone()
    }
}

/// A python program that says it started (file `started`), listens on `port` once the file
/// `listen` exists, and exits with code 3 once the file `exit` exists.
fn controlled_program(dir: &Path, port: u16) -> String {
    format!(
        r#"
import os, socket, sys, time
d = {dir:?}
def wait(name):
    while not os.path.exists(os.path.join(d, name)):
        time.sleep(0.01)
open(os.path.join(d, "started"), "w").close()
wait("listen")
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", {port}))
s.listen(16)
wait("exit")
sys.exit(3)
"#,
        dir = dir.display().to_string()
    )
}

/// `meridian exec` registers the program once its port answers, heartbeats it through TTLs,
/// deregisters it when it exits and exits with its code.
#[test]
fn exec_registers_while_the_program_lives_and_exits_with_its_code() {
    let python = python3();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    server.ok(&["namespace", "create", "cafe.local"]);
    server.ok(&[
        "service",
        "create",
        "orders.cafe.local",
        "--check",
        "ttl:1s",
    ]);
    let port = free_port();
    let script = controlled_program(dir.path(), port);
    let port_arg = port.to_string();
    let mut exec = server.exec(
        &[
            "--service",
            "orders.cafe.local",
            "--id",
            "i-1",
            "--port",
            &port_arg,
            "--attr",
            "version=v1",
        ],
        &[&python, "-c", &script],
    );

    wait_for("the program to start", Duration::from_secs(20), || {
        dir.path().join("started").exists()
    });
    // Its port does not answer yet: not registered.
    assert!(server.instances("orders.cafe.local").is_empty());
    std::fs::File::create(dir.path().join("listen")).unwrap();
    wait_for("the registration", Duration::from_secs(20), || {
        !server.instances("orders.cafe.local").is_empty()
    });
    let instance = &server.instances("orders.cafe.local")[0];
    assert_eq!(instance["id"], "i-1");
    assert_eq!(instance["port"], port);
    assert_eq!(instance["address"], "127.0.0.1");
    assert_eq!(instance["attributes"]["version"], "v1");

    // Heartbeats (every third of the 1 s TTL) keep it healthy through three TTLs.
    let until = Instant::now() + Duration::from_secs(3);
    wait_for("three TTLs to pass", Duration::from_secs(20), || {
        let health = server.instances("orders.cafe.local")[0]["health"].clone();
        assert_eq!(health, "healthy", "exec's heartbeats lapsed");
        Instant::now() >= until
    });

    std::fs::File::create(dir.path().join("exit")).unwrap();
    let status = exec.wait("exec to exit after its program");
    assert_eq!(status.code(), Some(3), "the program's exit code");
    // Deregistered before exec exited.
    assert!(server.instances("orders.cafe.local").is_empty());
}

/// SIGTERM to `meridian exec` is forwarded to the program; exec waits for it, deregisters,
/// and reports the signal as 128 + 15.
#[test]
fn exec_forwards_sigterm_then_deregisters() {
    let python = python3();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    server.ok(&["namespace", "create", "cafe.local"]);
    server.ok(&["service", "create", "web.cafe.local"]);
    let port = free_port().to_string();
    let mut exec = server.exec(
        &[
            "--service",
            "web.cafe.local",
            "--id",
            "w-1",
            "--port",
            &port,
        ],
        &[&python, "-m", "http.server", &port, "--bind", "127.0.0.1"],
    );
    wait_for("the registration", Duration::from_secs(20), || {
        !server.instances("web.cafe.local").is_empty()
    });
    exec.signal("-TERM");
    let status = exec.wait("exec to exit after SIGTERM");
    // http.server does not handle SIGTERM: it died of the forwarded signal.
    assert_eq!(status.code(), Some(128 + 15));
    assert!(server.instances("web.cafe.local").is_empty());
}

/// A program that exits before its port answers is never registered; exec's own failures
/// say why in one line and exit 125 (127 for a program that does not exist); a program whose
/// registration is refused for good is stopped.
#[test]
fn exec_exit_codes_without_a_registration() {
    let python = python3();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    server.ok(&["namespace", "create", "cafe.local"]);
    server.ok(&["service", "create", "orders.cafe.local"]);
    let port = free_port().to_string();
    let base = [
        "--service",
        "orders.cafe.local",
        "--id",
        "i-1",
        "--port",
        &port,
    ];

    let mut exec = server.exec(&base, &[&python, "-c", "import sys; sys.exit(7)"]);
    assert_eq!(exec.wait("exec").code(), Some(7));
    assert!(server.instances("orders.cafe.local").is_empty());

    let mut exec = server.exec(&base, &["/nonexistent/program"]);
    assert_eq!(exec.wait("exec").code(), Some(127));

    // A registration the registry refuses for good (an id that is not a DNS label): the
    // program is stopped and exec exits 125.
    let mut exec = server.exec(
        &[
            "--service",
            "orders.cafe.local",
            "--id",
            "bad_id",
            "--port",
            &port,
        ],
        &[&python, "-m", "http.server", &port, "--bind", "127.0.0.1"],
    );
    assert_eq!(exec.wait("exec to give up").code(), Some(125));
    assert!(server.instances("orders.cafe.local").is_empty());

    let out = server.cli(&[
        "exec",
        "--service",
        "nope.cafe.local",
        "--id",
        "i-1",
        "--port",
        "80",
        "--",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        err.trim_end(),
        "error: --service: not found: service \"nope.cafe.local\" not found"
    );
}

/// `meridian instance heartbeat`: accepted (table and JSON), revives an expired instance, and
/// says in one line why a heartbeat is refused.
#[test]
fn instance_heartbeat_keeps_ttl_instances_alive() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    server.ok(&["namespace", "create", "cafe.local"]);
    server.ok(&[
        "service",
        "create",
        "orders.cafe.local",
        "--check",
        "ttl:1s",
    ]);
    server.ok(&["service", "create", "web.cafe.local"]);
    for (service, id) in [("orders.cafe.local", "i-1"), ("web.cafe.local", "w-1")] {
        server.ok(&[
            "instance",
            "register",
            service,
            id,
            "--address",
            "127.0.0.1",
            "--port",
            "8081",
        ]);
    }

    let line = server.ok(&["instance", "heartbeat", "orders.cafe.local", "i-1"]);
    assert!(
        line.starts_with(
            "heartbeat of i-1.orders.cafe.local accepted: healthy (ttl 1000 ms, revision "
        ),
        "{line}"
    );
    let beat: Value = serde_json::from_str(&server.ok(&[
        "instance",
        "heartbeat",
        "orders.cafe.local",
        "i-1",
        "--json",
    ]))
    .unwrap();
    assert_eq!(beat["ttl_ms"], 1000);
    assert_eq!(beat["health"], "healthy");
    assert!(beat["revision"].as_u64().unwrap() > 0);

    // Silence: the TTL expires. One heartbeat revives it.
    wait_for("the TTL to expire", Duration::from_secs(20), || {
        server.instances("orders.cafe.local")[0]["health"] == "unhealthy"
    });
    server.ok(&["instance", "heartbeat", "orders.cafe.local", "i-1"]);
    wait_for(
        "the heartbeat to revive it",
        Duration::from_secs(20),
        || server.instances("orders.cafe.local")[0]["health"] == "healthy",
    );

    assert_eq!(
        server.fails(&["instance", "heartbeat", "orders.cafe.local", "i-9"]),
        "error: not found: instance \"i-9.orders.cafe.local\" not found"
    );
    let err = server.fails(&["instance", "heartbeat", "web.cafe.local", "w-1"]);
    assert!(
        err.starts_with("error: failed precondition: service web.cafe.local has no TTL check"),
        "{err}"
    );
}

/// `meridian watch --json`: one JSON object per line, a full state first, then each change;
/// `--from` resumes after a revision.
#[test]
fn watch_json_prints_one_object_per_line() {
    use std::io::BufRead as _;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    server.ok(&["namespace", "create", "cafe.local"]);
    server.ok(&["service", "create", "orders.cafe.local"]);
    let register = |id: &str| {
        let out = server.ok(&[
            "instance",
            "register",
            "orders.cafe.local",
            id,
            "--address",
            "127.0.0.1",
            "--port",
            "8081",
            "--attr",
            "version=v1",
            "--json",
        ]);
        serde_json::from_str::<Value>(&out).unwrap()["revision"]
            .as_u64()
            .unwrap()
    };
    let first = register("i-1");

    // Lines arrive on a thread; the test reads them with patience, never blocking forever.
    let lines = |from: u64| {
        let mut watcher = Group::spawn(
            Command::new(BIN)
                .args(["watch", "orders.cafe.local", "--json", "--from"])
                .arg(from.to_string())
                .env("MERIDIAN_ADDR", &server.url)
                .stdout(Stdio::piped())
                .stderr(Stdio::null()),
        );
        let stdout = watcher.child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        (watcher, rx)
    };
    let next = |rx: &std::sync::mpsc::Receiver<String>| -> Value {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("a line from meridian watch");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not one JSON object: {line:?}: {e}"))
    };

    let (_watcher, rx) = lines(0);
    let snapshot = next(&rx);
    assert_eq!(snapshot["type"], "snapshot");
    assert_eq!(snapshot["reason"], "initial");
    assert_eq!(snapshot["complete"], true);
    assert_eq!(
        snapshot["services"],
        serde_json::json!(["orders.cafe.local"])
    );
    assert_eq!(snapshot["instances"][0]["id"], "i-1");

    let second = register("i-2");
    let added = next(&rx);
    assert_eq!(added["type"], "instance_added");
    assert_eq!(added["revision"], second);
    assert_eq!(added["service"], "orders.cafe.local");
    assert_eq!(added["instance"]["id"], "i-2");
    assert_eq!(added["instance"]["attributes"]["version"], "v1");

    server.ok(&[
        "instance",
        "set-health",
        "orders.cafe.local",
        "i-2",
        "unhealthy",
    ]);
    let updated = next(&rx);
    assert_eq!(updated["type"], "instance_updated");
    assert_eq!(updated["instance"]["health"], "unhealthy");

    server.ok(&["instance", "deregister", "orders.cafe.local", "i-1"]);
    let removed = next(&rx);
    assert_eq!(removed["type"], "instance_removed");
    assert_eq!(removed["instance"]["id"], "i-1");

    // Resume after the first registration: the same three changes, and no full state.
    let (_resumed, rx) = lines(first);
    let kinds: Vec<String> = (0..3)
        .map(|_| next(&rx)["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        kinds,
        ["instance_added", "instance_updated", "instance_removed"]
    );
}

#[test]
fn route_set_wait_get_and_file_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    server.ok(&["namespace", "create", "cafe.local"]);
    server.ok(&["service", "create", "orders.cafe.local"]);

    // No proxy follows the service yet: the wait is over at once, 0 of 0.
    let out = server.ok(&[
        "route",
        "set",
        "orders.cafe.local",
        "--split",
        "v1=90,v2=10",
        "--wait",
    ]);
    assert!(
        out.starts_with("route of orders.cafe.local set (revision "),
        "{out}"
    );
    assert!(out.contains("applied by 0/0 proxies in "), "{out}");

    let table = server.ok(&["route", "get", "orders.cafe.local"]);
    assert!(table.contains("version=v1 90, version=v2 10"), "{table}");

    // `route get --json` prints the form `route set --file` reads.
    let got: Value =
        serde_json::from_str(&server.ok(&["route", "get", "orders.cafe.local", "--json"])).unwrap();
    let mut route = got["route"].clone();
    route["rules"][0]["targets"][1]["weight"] = Value::from(30);
    route["load_balancer"] = serde_json::json!({"policy": "ring-hash", "hash_header": "x-user"});
    let file = dir.path().join("route.json");
    std::fs::write(&file, route.to_string()).unwrap();
    server.ok(&[
        "route",
        "set",
        "orders.cafe.local",
        "--file",
        file.to_str().unwrap(),
    ]);
    let list = server.ok(&["route", "list", "cafe.local"]);
    assert!(list.contains("version=v1 90, version=v2 30"), "{list}");
    assert!(list.contains("ring-hash on x-user"), "{list}");

    // Mistakes: one line naming the field.
    std::fs::write(&file, r#"{"rules": [], "weights": 1}"#).unwrap();
    let err = server.fails(&[
        "route",
        "set",
        "orders.cafe.local",
        "--file",
        file.to_str().unwrap(),
    ]);
    assert!(err.contains("weights"), "{err}");
    let err = server.fails(&["route", "set", "orders.cafe.local", "--split", "v1=0"]);
    assert!(err.contains("route.rules[0].targets:"), "{err}");

    let proxies = server.ok(&["proxies"]);
    assert!(proxies.starts_with("PROXY"), "{proxies}");
    server.ok(&["route", "delete", "orders.cafe.local"]);
    let err = server.fails(&["route", "get", "orders.cafe.local"]);
    assert!(err.contains("not found"), "{err}");
}
