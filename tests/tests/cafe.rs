//! The café demo end to end: `examples/cafe/run --quick` as a user runs it — a 3-node control
//! plane, orders v1 ×2 and v2 ×1 under `meridian exec`, reports behind a real
//! `meridian-proxy`, and a rollout from v1 to v2 in four steps — checked for what it prints
//! (the observed split at each step against the route's weights) and for what it leaves
//! behind (no process). With an in-process OTLP collector as `OTEL_EXPORTER_OTLP_ENDPOINT`,
//! one trace must run customer → reports → proxy → orders.
//!
//! The script runs the workspace's debug binaries (paths passed in `MERIDIAN_BIN` and the
//! like, so it does not build them itself): those `cargo test --workspace` built, or, when
//! they are missing or older than their sources, built by the test first (see [`binaries`]).

#![allow(clippy::print_stderr)] // the build and run times: measured, not asserted
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use meridian_tests::otlp::{Collector, ReceivedSpan, attribute, hex};
use meridian_tests::send_signal;

/// The script's whole run: a cluster, six services, four steps. About 5 s on an idle machine.
const SCRIPT_PATIENCE: Duration = Duration::from_secs(180);

/// The demo runs its own cluster: two at once would only slow each other down.
static ONE_DEMO_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What one run printed and started.
struct Run {
    output: String,
    pids: Vec<(u32, String)>,
}

/// One step as printed: the route's weights and the lookups each version answered.
#[derive(Debug)]
struct Step {
    configured: (f64, f64),
    v1: u64,
    v2: u64,
    lookups: u64,
    failed: u64,
}

/// Stops the script (SIGTERM: its trap stops what it started) if a test panics mid-run.
struct ScriptGuard {
    child: Child,
    pid_file: PathBuf,
}

// === impl ScriptGuard ===

impl Drop for ScriptGuard {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        // Errors ignored: a guard in a drop, and the process may be gone already.
        let _ = send_signal(self.child.id(), "-TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        // Whatever is still there: the script, and anything it started.
        let _ = self.child.kill();
        let _ = self.child.wait();
        for (pid, _) in read_pids(&self.pid_file) {
            if alive(pid) {
                let _ = send_signal(pid, "-KILL");
            }
        }
    }
}

/// Whether `pid` is a running process (a zombie has finished).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn read_pids(path: &Path) -> Vec<(u32, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let (pid, name) = line.split_once(' ')?;
            Some((pid.parse().ok()?, name.to_owned()))
        })
        .collect()
}

/// The demo's binaries, as `cargo build` makes them.
const BINARIES: [&str; 5] = [
    "meridian",
    "meridian-proxy",
    "cafe-orders",
    "cafe-reports",
    "cafe-customer",
];

/// The directory of the workspace's debug (or release) binaries, up to date.
///
/// `cargo test --workspace` builds them all (their packages have integration tests), with the
/// features the tests build everything with. A narrower `cargo test` may leave them missing or
/// older than their sources (per their `.d` dep-info files): then they are built here, once.
fn binaries() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().expect("the test binary's path");
        // target/<profile>/deps/cafe-<hash>
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("the test binary lives in target/<profile>/deps")
            .to_owned();
        if BINARIES.iter().all(|bin| up_to_date(&dir.join(bin))) {
            return dir;
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let mut build = Command::new(cargo);
        build.current_dir(workspace_root()).args([
            "build",
            "-p",
            "meridian-control-plane",
            "-p",
            "meridian-proxy",
            "-p",
            "meridian-cafe",
            "--bins",
            "--locked",
            "--quiet",
        ]);
        if dir.file_name().is_some_and(|name| name == "release") {
            build.arg("--release");
        }
        let started = Instant::now();
        let output = build.output().expect("run cargo build");
        eprintln!(
            "built the demo's binaries (missing or stale) in {:.1?}",
            started.elapsed()
        );
        assert!(
            output.status.success(),
            "cargo build of the demo's binaries failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        dir
    })
}

/// Whether `bin` exists and is newer than every source file its dep-info (`bin.d`) lists.
fn up_to_date(bin: &Path) -> bool {
    let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let Some(built) = modified(bin) else {
        return false;
    };
    let Ok(dep_info) = std::fs::read_to_string(bin.with_extension("d")) else {
        return false;
    };
    // `target: dep dep ...`, spaces in paths escaped as `\ `.
    let Some((_, deps)) = dep_info.split_once(": ") else {
        return false;
    };
    let deps = deps.replace("\\ ", "\u{0}");
    deps.split_whitespace()
        .map(|dep| PathBuf::from(dep.replace('\u{0}', " ")))
        .all(|dep| modified(&dep).is_some_and(|source| source <= built))
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_owned()
}

/// Runs `examples/cafe/run --quick` to its end with `env` added; panics if it does not end.
fn run_demo(env: &[(&str, String)]) -> Run {
    let bin = binaries();
    let state = tempfile::tempdir().expect("tempdir");
    let pid_file = state.path().join("pids");
    let mut command = Command::new("bash");
    command
        .arg(workspace_root().join("examples/cafe/run"))
        .arg("--quick")
        .env("MERIDIAN_BIN", bin.join("meridian"))
        .env("MERIDIAN_PROXY_BIN", bin.join("meridian-proxy"))
        .env("CAFE_ORDERS_BIN", bin.join("cafe-orders"))
        .env("CAFE_REPORTS_BIN", bin.join("cafe-reports"))
        .env("CAFE_CUSTOMER_BIN", bin.join("cafe-customer"))
        .env("CAFE_PID_FILE", &pid_file)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_SERVICE_NAME")
        .env_remove("MERIDIAN_ADDR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    let mut guard = ScriptGuard {
        child: command.spawn().expect("start examples/cafe/run"),
        pid_file,
    };
    let stdout = drain(guard.child.stdout.take());
    let stderr = drain(guard.child.stderr.take());
    let started = Instant::now();
    let deadline = started + SCRIPT_PATIENCE;
    let status = loop {
        if let Some(status) = guard.child.try_wait().expect("wait for the script") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "examples/cafe/run did not finish within {SCRIPT_PATIENCE:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = format!(
        "{}\n--- stderr\n{}",
        stdout.join().expect("stdout reader"),
        stderr.join().expect("stderr reader")
    );
    assert!(
        status.success(),
        "examples/cafe/run failed ({status}):\n{output}"
    );
    eprintln!("examples/cafe/run --quick took {:.1?}", started.elapsed());
    Run {
        pids: read_pids(&guard.pid_file),
        output,
    }
}

fn drain(pipe: Option<impl std::io::Read + Send + 'static>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_string(&mut text);
        }
        text
    })
}

// === impl Run ===

impl Run {
    /// The steps printed: each `configured` line with the `observed` line after it.
    fn steps(&self) -> Vec<Step> {
        let mut steps = Vec::new();
        let mut configured = None;
        for line in self.output.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.first() {
                Some(&"configured") => {
                    configured = Some((percent(&words, "v1"), percent(&words, "v2")));
                }
                Some(&"observed") => {
                    let configured = configured.take().expect("observed after configured");
                    let count_after = |word: &str| -> u64 {
                        let at = words.iter().position(|w| *w == word).expect(word);
                        words[at - 1].parse().expect("a count")
                    };
                    steps.push(Step {
                        configured,
                        v1: count(&words, "v1"),
                        v2: count(&words, "v2"),
                        lookups: count_after("order"),
                        failed: count_after("failed"),
                    });
                }
                _ => {}
            }
        }
        steps
    }

    /// The trace ids the customer printed (`trace <id>`).
    fn trace_ids(&self) -> Vec<String> {
        self.output
            .lines()
            .filter_map(|line| line.strip_prefix("trace "))
            .map(|id| id.trim().to_owned())
            .collect()
    }

    /// Asserts that every process the script started is gone.
    fn assert_nothing_left(&self) {
        let names: Vec<&str> = self.pids.iter().map(|(_, n)| n.as_str()).collect();
        for expected in [
            "meridian-1",
            "meridian-2",
            "meridian-3",
            "orders-v1-a",
            "cafe-orders-v1-a",
            "orders-v2-a",
            "cafe-orders-v2-a",
            "reports-proxy",
            "reports",
            "cafe-reports",
        ] {
            assert!(
                names.contains(&expected),
                "{expected} not in the pid file: {names:?}"
            );
        }
        let left: Vec<&(u32, String)> = self.pids.iter().filter(|(pid, _)| alive(*pid)).collect();
        assert!(
            left.is_empty(),
            "still running after the script ended: {left:?}"
        );
    }
}

/// `v1 90.0%` → 90.0.
fn percent(words: &[&str], version: &str) -> f64 {
    let at = words.iter().position(|w| *w == version).expect(version);
    words[at + 1]
        .trim_end_matches('%')
        .parse()
        .expect("a percentage")
}

/// `v1 90.0% (108)` → 108.
fn count(words: &[&str], version: &str) -> u64 {
    let at = words.iter().position(|w| *w == version).expect(version);
    words[at + 2]
        .trim_matches(|c| c == '(' || c == ')')
        .parse()
        .expect("a count")
}

/// Asserts the observed steps are the rollout's four, each within 4 σ of its weights
/// (σ = √(n·p·(1−p)); exact at 0 % and 100 %), with no failed lookup.
fn assert_rollout(run: &Run) {
    let steps = run.steps();
    let configured: Vec<(f64, f64)> = steps.iter().map(|s| s.configured).collect();
    assert_eq!(
        configured,
        [(100.0, 0.0), (90.0, 10.0), (50.0, 50.0), (0.0, 100.0)],
        "the four steps of the rollout:\n{}",
        run.output
    );
    for step in &steps {
        assert_eq!(step.failed, 0, "{step:?}");
        assert!(step.lookups >= 100, "{step:?}");
        assert_eq!(step.v1 + step.v2, step.lookups, "{step:?}");
        let n = step.lookups as f64;
        let p = step.configured.1 / 100.0;
        let expected = n * p;
        let tolerance = 4.0 * (n * p * (1.0 - p)).sqrt();
        assert!(
            (step.v2 as f64 - expected).abs() <= tolerance,
            "v2 answered {} of {n} lookups; {expected} ± {tolerance} expected: {step:?}",
            step.v2
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_shifts_orders_from_v1_to_v2_and_cleans_up() {
    let _one = ONE_DEMO_AT_A_TIME.lock().await;
    let run = tokio::task::spawn_blocking(|| run_demo(&[]))
        .await
        .expect("the demo");
    assert_rollout(&run);
    run.assert_nothing_left();
    assert!(run.trace_ids().is_empty(), "no tracing without an endpoint");
}

fn service(span: &ReceivedSpan) -> &str {
    attribute(&span.resource, "service.name").unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_runs_from_the_customer_through_the_proxy_to_orders() {
    let _one = ONE_DEMO_AT_A_TIME.lock().await;
    let collector = Collector::start().await;
    let endpoint = collector.endpoint();
    let run =
        tokio::task::spawn_blocking(move || run_demo(&[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)]))
            .await
            .expect("the demo");
    assert_rollout(&run);
    run.assert_nothing_left();

    // The last report of the last step: its trace id is printed, and every process flushed
    // its spans when the script stopped it.
    let trace_id = run
        .trace_ids()
        .pop()
        .expect("the customer prints a trace id");
    let spans = meridian_tests::wait_for(
        "the last report's spans from customer, reports, proxy and orders",
        Duration::from_secs(20),
        || {
            let spans: Vec<ReceivedSpan> = collector
                .spans()
                .into_iter()
                .filter(|s| hex(&s.span.trace_id) == trace_id)
                .collect();
            let services: Vec<&str> = spans.iter().map(service).collect();
            let complete = [
                "cafe-customer",
                "cafe-reports",
                "meridian-proxy",
                "cafe-orders",
            ]
            .iter()
            .all(|name| services.contains(name));
            async move { complete.then_some(spans) }
        },
    )
    .await;
    let by_id: BTreeMap<Vec<u8>, &ReceivedSpan> =
        spans.iter().map(|s| (s.span.span_id.clone(), s)).collect();
    let parent_of = |span: &ReceivedSpan| -> &ReceivedSpan {
        by_id.get(&span.span.parent_span_id).unwrap_or_else(|| {
            panic!(
                "the parent of {} span {:?} is not in the trace",
                service(span),
                span.span.name
            )
        })
    };

    // customer → reports: one SERVER span under the customer's CLIENT span.
    let customer = spans
        .iter()
        .find(|s| service(s) == "cafe-customer")
        .unwrap();
    assert!(
        customer.span.parent_span_id.is_empty(),
        "the customer starts the trace"
    );
    let reports = spans
        .iter()
        .find(|s| service(s) == "cafe-reports" && s.span.name == "GET /reports/daily")
        .unwrap();
    assert_eq!(parent_of(reports).span.span_id, customer.span.span_id);

    // reports → proxy → orders, for every one of the twelve lookups.
    let orders: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| service(s) == "cafe-orders")
        .collect();
    assert_eq!(orders.len(), 12, "one orders span per opening hour");
    for span in orders {
        assert_eq!(span.span.name, "GET /orders");
        let mut call = parent_of(span);
        assert_eq!(
            service(call),
            "meridian-proxy",
            "orders is called by the proxy"
        );
        while service(call) == "meridian-proxy" {
            call = parent_of(call);
        }
        assert_eq!(
            service(call),
            "cafe-reports",
            "the proxy is called by reports"
        );
        assert_eq!(call.span.name, "GET /orders");
        assert_eq!(parent_of(call).span.span_id, reports.span.span_id);
        assert_eq!(
            attribute(&span.span.attributes, "cafe.version"),
            Some("v2"),
            "the last step sends everything to v2"
        );
    }
}
