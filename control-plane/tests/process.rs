//! The `meridian` binary as a user runs it: real processes, real signals, the CLI tour of
//! the README, `kill -9` and a restart on the same data dir.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_meridian");

/// A `meridian server` process, killed (and reaped) when dropped, also on panic.
struct Server {
    child: Child,
    url: String,
}

// === impl Server ===

impl Server {
    fn start(data_dir: &Path) -> Self {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let child = Command::new(BIN)
            .args(["server", "--id", "1", "--data-dir"])
            .arg(data_dir)
            .args(["--listen", &listen, "--peers", &format!("1={listen}")])
            .args(["--dns-listen", &format!("127.0.0.1:{}", free_port())])
            .args(["--admin-listen", &format!("127.0.0.1:{}", free_port())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn meridian server");
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
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(sent.success());
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
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
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
    assert!(status["snapshot_index"].as_u64().unwrap() >= 20, "{status}");
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
    let child = Command::new(BIN)
        .args(["dev", "--listen", &listen])
        .args(["--dns-listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--admin-listen", &format!("127.0.0.1:{}", free_port())])
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
            "Meridian dev node: gRPC http://{listen} (data in "
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
