//! `meridian exec`: registration that follows a process's life, as ECS does for its tasks in
//! Cloud Map.
//!
//! ```text
//! meridian exec --service orders.cafe.local --id i-1 --port 8081 --attr version=v1 -- ./orders
//! ```
//!
//! 1. Checks that the service exists (and reads its TTL, if it has a TTL check), then starts
//!    the program with this process's stdin, stdout and stderr.
//! 2. Registers the instance once `ADDRESS:PORT` accepts a TCP connection, so discovery never
//!    hands out a program that cannot answer yet.
//! 3. While the program lives, heartbeats every third of the TTL (a TTL service), so two
//!    heartbeats may be lost before it expires; an instance deregistered behind its back
//!    (deregister-after, an operator) is registered again.
//! 4. When the program exits, deregisters it and exits with the program's code (128 + N if a
//!    signal N killed it). SIGTERM and SIGINT are forwarded to the program; exec then waits for
//!    it to exit and deregisters as in 4. If the registry refuses the registration for good
//!    (a bad id or attribute, a deleted service), exec stops the program (SIGTERM) and exits
//!    with 125.
//!
//! Any node will do as `--addr`: followers hand writes and heartbeats to the leader. Exec's own
//! failures exit with 125 before the program starts (as `docker run` does), 126 if the program
//! cannot be started and 127 if it is not found. Exec's messages go to stderr, so the
//! program's stdout stays its own.
#![allow(clippy::print_stderr)] // a CLI's messages are its interface

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt as _;
use std::process::{ExitCode, ExitStatus};
use std::time::Duration;

use super::client::Channel;
use meridian_proto::v1 as pb;
use meridian_proto::v1::registry_client::RegistryClient;
use rustix::process::{Pid, Signal, kill_process};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tonic::Code;

use super::ExecArgs;
use super::client::{Target, status};

/// Exit code when exec itself fails before the program starts.
const EXEC_FAILED: u8 = 125;
/// Exit code when the program cannot be started.
const CANNOT_START: u8 = 126;
/// Exit code when the program is not found.
const NOT_FOUND: u8 = 127;

/// How often the program's port is tried until it accepts a connection.
const READY_POLL: Duration = Duration::from_millis(50);
/// Bounds one connection attempt to the program's port.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Bounds every call to the registry, so a dead server never holds exec up for long.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed registration before trying again.
const RETRY: Duration = Duration::from_millis(500);
/// How long exec keeps trying to deregister after the program exited.
const DEREGISTER_PATIENCE: Duration = Duration::from_secs(15);
/// The shortest heartbeat period (TTLs are at least 1 s, so a third is at least 333 ms).
const MIN_BEAT: Duration = Duration::from_millis(100);

/// What exec registers: the request, and where the program's port is probed.
#[derive(Clone)]
struct Instance {
    request: pb::RegisterInstanceRequest,
    target: SocketAddr,
}

/// Runs `meridian exec` and returns the exit code to leave with.
pub(super) async fn run(target: &Target, args: ExecArgs) -> ExitCode {
    match prepare(target, &args).await.map_err(|e| target.explain(e)) {
        Ok((client, instance, beat)) => supervise(client, instance, beat, &args.command).await,
        Err(reason) => {
            eprintln!("error: {}", reason.replace('\n', " "));
            ExitCode::from(EXEC_FAILED)
        }
    }
}

/// Connects, checks the service and reads its TTL: everything that can fail before the program
/// starts. Returns the heartbeat period (`None` without a TTL check).
async fn prepare(
    target: &Target,
    args: &ExecArgs,
) -> Result<(RegistryClient<Channel>, Instance, Option<Duration>), String> {
    let mut client = RegistryClient::new(target.connect().await?);
    let service = client
        .get_service(pb::GetServiceRequest {
            name: args.service.clone(),
            ..Default::default()
        })
        .await
        .map_err(|s| format!("--service: {}", status(s)))?
        .into_inner()
        .service
        .unwrap_or_default();
    let beat = match service.health_check.and_then(|c| c.kind) {
        Some(pb::health_check::Kind::Ttl(t)) => {
            Some((Duration::from_millis(u64::from(t.ttl_ms)) / 3).max(MIN_BEAT))
        }
        _ => None,
    };
    let instance = Instance {
        request: pb::RegisterInstanceRequest {
            service: args.service.clone(),
            id: args.id.clone(),
            address: args.address.to_string(),
            port: u32::from(args.port),
            attributes: args.attributes.iter().cloned().collect::<HashMap<_, _>>(),
        },
        target: SocketAddr::new(args.address, args.port),
    };
    Ok((client, instance, beat))
}

/// Starts the program, keeps it registered while it lives, deregisters it when it ends.
async fn supervise(
    client: RegistryClient<Channel>,
    instance: Instance,
    beat: Option<Duration>,
    command: &[String],
) -> ExitCode {
    let (Ok(mut terms), Ok(mut ints)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        eprintln!("error: cannot install the SIGTERM/SIGINT handlers");
        return ExitCode::from(EXEC_FAILED);
    };
    let Some((program, args)) = command.split_first() else {
        eprintln!("error: no program to run (give it after --)");
        return ExitCode::from(EXEC_FAILED);
    };
    let mut child = match tokio::process::Command::new(program).args(args).spawn() {
        Ok(child) => child,
        Err(e) => {
            eprintln!("error: cannot start {program:?}: {e}");
            return ExitCode::from(if e.kind() == std::io::ErrorKind::NotFound {
                NOT_FOUND
            } else {
                CANNOT_START
            });
        }
    };
    let pid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .and_then(Pid::from_raw);

    let stop = CancellationToken::new();
    let mut keeper = tokio::spawn(keep_registered(
        client.clone(),
        instance.clone(),
        beat,
        stop.clone(),
    ));
    // Set if the keeper ended by itself: the registry refused the instance for good.
    let mut kept = None;
    let exited = loop {
        let forward = tokio::select! {
            exited = child.wait() => break exited,
            _ = terms.recv() => Signal::TERM,
            _ = ints.recv() => Signal::INT,
            done = &mut keeper, if kept.is_none() => {
                let done = done.unwrap_or(Kept { attempted: true, refused: None });
                if let Some(reason) = &done.refused {
                    eprintln!("error: the registry refused the instance: {reason}; stopping the program");
                }
                kept = Some(done);
                Signal::TERM
            }
        };
        // The program decides how to stop; exec waits for it, then deregisters.
        if let Some(pid) = pid
            && let Err(e) = kill_process(pid, forward)
        {
            eprintln!("meridian exec: cannot forward {forward:?} to the program: {e}");
        }
    };
    stop.cancel();
    // The keeper never abandons a registration in flight (see `keep_registered`), so once it
    // has ended, no registration can land after the deregistration below.
    let kept = match kept {
        Some(kept) => kept,
        None => keeper.await.unwrap_or(Kept {
            attempted: true,
            refused: None,
        }),
    };
    if kept.attempted {
        deregister(client, &instance.request).await;
    }
    match exited {
        Ok(_) if kept.refused.is_some() => ExitCode::from(EXEC_FAILED),
        Ok(status) => exit_code(status),
        Err(e) => {
            eprintln!("error: lost track of the program: {e}");
            ExitCode::from(EXEC_FAILED)
        }
    }
}

/// How the keeper ended.
struct Kept {
    /// A registration was attempted, so it may need undoing.
    attempted: bool,
    /// The registry refused the instance for a reason retrying cannot cure.
    refused: Option<String>,
}

/// Waits for the program's port, registers, then heartbeats (TTL services) until `stop`, or
/// until the registry refuses the registration for good.
async fn keep_registered(
    client: RegistryClient<Channel>,
    instance: Instance,
    beat: Option<Duration>,
    stop: CancellationToken,
) -> Kept {
    let mut attempted = false;
    let refused = keep(client, &instance, beat, &stop, &mut attempted).await;
    Kept { attempted, refused }
}

/// The keeper's loop; returns the reason of a final refusal, or `None` once stopped.
async fn keep(
    mut client: RegistryClient<Channel>,
    instance: &Instance,
    beat: Option<Duration>,
    stop: &CancellationToken,
    attempted: &mut bool,
) -> Option<String> {
    let name = format!("{}.{}", instance.request.id, instance.request.service);
    loop {
        // Wait for the port (cancellable at every step: nothing is in flight).
        loop {
            let probe = tokio::time::timeout(
                PROBE_TIMEOUT,
                tokio::net::TcpStream::connect(instance.target),
            );
            tokio::select! {
                () = stop.cancelled() => return None,
                probed = probe => if matches!(probed, Ok(Ok(_))) { break; },
            }
            tokio::select! {
                () = stop.cancelled() => return None,
                () = tokio::time::sleep(READY_POLL) => {}
            }
        }
        // Register. The call is not abandoned when the program exits: a registration dropped
        // in flight could commit after the deregistration that follows the exit.
        *attempted = true;
        let registered = tokio::time::timeout(
            CALL_TIMEOUT,
            client.register_instance(instance.request.clone()),
        )
        .await;
        match registered {
            Ok(Ok(r)) => eprintln!(
                "meridian exec: {name} registered at {} (revision {})",
                instance.target,
                r.into_inner().revision
            ),
            Ok(Err(s)) if is_final(s.code()) => return Some(status(s)),
            Ok(Err(s)) => {
                eprintln!("meridian exec: registering {name} failed: {}", status(s));
                if pause(stop, RETRY).await {
                    return None;
                }
                continue;
            }
            Err(_) => {
                eprintln!("meridian exec: registering {name}: no answer within {CALL_TIMEOUT:?}");
                continue;
            }
        }
        let Some(period) = beat else {
            stop.cancelled().await;
            return None;
        };
        // Heartbeat until stopped, or until the registry no longer knows the instance.
        loop {
            if pause(stop, period).await {
                return None;
            }
            let request = pb::HeartbeatRequest {
                service: instance.request.service.clone(),
                id: instance.request.id.clone(),
            };
            // A heartbeat is not a write: dropping one in flight is harmless.
            let answer = tokio::select! {
                () = stop.cancelled() => return None,
                answer = tokio::time::timeout(CALL_TIMEOUT, client.heartbeat(request)) => answer,
            };
            match answer {
                Ok(Ok(_)) => {}
                Ok(Err(s)) if s.code() == Code::NotFound => {
                    eprintln!("meridian exec: {name} was deregistered; registering it again");
                    break;
                }
                Ok(Err(s)) => eprintln!("meridian exec: heartbeat of {name}: {}", status(s)),
                Err(_) => eprintln!("meridian exec: heartbeat of {name}: no answer"),
            }
        }
    }
}

/// Refusals that retrying cannot cure (a bad id or attribute, a deleted service).
fn is_final(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument
            | Code::NotFound
            | Code::FailedPrecondition
            | Code::PermissionDenied
            | Code::Unauthenticated
    )
}

/// Sleeps for `period`; `true` if `stop` fired first.
async fn pause(stop: &CancellationToken, period: Duration) -> bool {
    tokio::select! {
        () = stop.cancelled() => true,
        () = tokio::time::sleep(period) => false,
    }
}

/// Deregisters, retrying while the cluster is unavailable (an election), for a bounded time.
async fn deregister(mut client: RegistryClient<Channel>, request: &pb::RegisterInstanceRequest) {
    let name = format!("{}.{}", request.id, request.service);
    let deadline = tokio::time::Instant::now() + DEREGISTER_PATIENCE;
    loop {
        let call = client.deregister_instance(pb::DeregisterInstanceRequest {
            service: request.service.clone(),
            id: request.id.clone(),
        });
        let outcome = match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(Ok(r)) => {
                let revision = r.into_inner().revision;
                eprintln!("meridian exec: {name} deregistered (revision {revision})");
                return;
            }
            // Never registered, or already gone: nothing to undo.
            Ok(Err(s)) if s.code() == Code::NotFound => return,
            Ok(Err(s)) => status(s),
            Err(_) => format!("no answer within {CALL_TIMEOUT:?}"),
        };
        if tokio::time::Instant::now() + RETRY >= deadline {
            eprintln!("meridian exec: could not deregister {name}: {outcome}");
            return;
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// The program's exit code, or 128 + N if signal N killed it (as shells report it).
fn exit_code(status: ExitStatus) -> ExitCode {
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitCode::from(u8::try_from(code & 0xff).unwrap_or(u8::MAX)),
        (None, Some(signal)) => ExitCode::from(u8::try_from(128 + signal).unwrap_or(u8::MAX)),
        (None, None) => ExitCode::from(EXEC_FAILED),
    }
}
