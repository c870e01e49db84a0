//! Printing: aligned tables for people, JSON for scripts, one line on stderr for errors.
#![allow(clippy::print_stdout, clippy::print_stderr)] // a CLI's output is its interface

use std::process::ExitCode;

/// Prints `rows` under `header`, columns padded to their widest cell.
pub(super) fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out(padded.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

pub(super) fn json(value: &serde_json::Value) {
    out(&value.to_string());
}

pub(super) fn line(text: &str) {
    out(text);
}

/// Prints `error: REASON` on one line and returns the failure exit code.
pub(super) fn fail(reason: &str) -> ExitCode {
    let one_line = reason.replace('\n', " ");
    eprintln!("error: {one_line}");
    ExitCode::FAILURE
}

/// Writes one line to stdout. A reader that went away (`meridian watch ... | head -1`) ends the
/// command quietly with status 141, as SIGPIPE ends other Unix tools, instead of a panic.
fn out(text: &str) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = writeln!(stdout, "{text}")
        && e.kind() == std::io::ErrorKind::BrokenPipe
    {
        std::process::exit(141);
    }
}
