//! Child processes of a test binary that report `@@ ` lines to their parent.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Stdio};
use std::sync::mpsc::Receiver;
use std::time::Duration;

/// Prints `@@ {line}` and flushes: a report the parent's [`Reporter`] reads.
pub fn report(line: impl std::fmt::Display) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "@@ {line}").expect("report to the parent");
    out.flush().expect("flush the report");
}

/// A child process running one `#[ignore]`d entry point of the calling test
/// binary ([`crate::child_test`]), whose `@@ ` lines are read on a thread.
/// Killed and reaped if the test fails while it runs.
pub struct Reporter {
    child: Child,
    lines: Receiver<String>,
    timeout: Duration,
}

impl Reporter {
    /// Starts entry point `test` with `var=value` in its environment; each
    /// report must arrive within `timeout`.
    pub fn spawn(test: &str, var: &str, value: &str, timeout: Duration) -> Reporter {
        let mut child = crate::child_test(test)
            .env(var, value)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start a child process");
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // libtest may print on the same line before the report.
                if let Some(at) = line.find("@@ ") {
                    if tx.send(line[at + 3..].to_string()).is_err() {
                        break;
                    }
                }
            }
        });
        Reporter {
            child,
            lines,
            timeout,
        }
    }

    /// The child's next report.
    pub fn next(&self) -> String {
        self.lines
            .recv_timeout(self.timeout)
            .expect("the child reported in time")
    }

    /// Waits for the child to succeed and returns the reports not yet read.
    pub fn finish(mut self) -> Vec<String> {
        let status = self.child.wait().expect("reap the child");
        assert!(status.success(), "the child failed: {status}");
        self.drain(self.timeout)
    }

    /// SIGKILLs the child (which must still be running) and returns the
    /// reports not yet read.
    pub fn kill(mut self) -> Vec<String> {
        self.child.kill().expect("the child is still running");
        let status = self.child.wait().expect("reap the child");
        assert_eq!(
            status.signal(),
            Some(9),
            "the child ended by itself: {status}"
        );
        self.drain(Duration::from_secs(10))
    }

    /// Everything left in the pipe: the reader thread may still be draining
    /// it after the child exited, so read to its end (the thread drops its
    /// sender at EOF), not only what has arrived so far.
    fn drain(&self, timeout: Duration) -> Vec<String> {
        let mut lines = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(timeout) {
            lines.push(line);
        }
        lines
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
