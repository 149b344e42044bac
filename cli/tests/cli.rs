//! The client commands as a person runs them: `meshgate-cli pub`, `sub`, `call` and
//! `serve-echo` as processes against a real `meshgate serve`, checking what they print and how
//! they exit.

use std::io::{BufRead, BufReader, Read};
use std::net::UdpSocket;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::{wait_for_exit, Gateway};

#[path = "../../tests/support/mod.rs"]
mod support;

/// How long a test waits for something that should happen promptly.
const PATIENCE: Duration = Duration::from_secs(5);

/// Client commands aimed at a test gateway.
trait Commands {
    /// A client command against this gateway: `args` then the connection flags.
    fn command(&self, args: &[&str]) -> Command;
}

impl Commands for Gateway {
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_meshgate-cli"));
        command
            .args(args)
            .args(["--server", &self.addr.to_string(), "--insecure"])
            // The default log level, whatever the environment of the test run asks for.
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        command
    }
}

/// How a command that ran to its end ended.
#[derive(Debug)]
struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    took: Duration,
}

/// Runs a command to its end; fails the test if it is still running after 10 s.
fn finish(command: &mut Command) -> Finished {
    let start = Instant::now();
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("meshgate-cli starts");
    let status = wait_for_exit(&mut child, Duration::from_secs(10)).unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{command:?} was still running after 10 s");
    });
    let took = start.elapsed();
    let mut stdout = String::new();
    let mut stderr = String::new();
    child
        .stdout
        .take()
        .expect("piped")
        .read_to_string(&mut stdout)
        .expect("stdout is UTF-8");
    child
        .stderr
        .take()
        .expect("piped")
        .read_to_string(&mut stderr)
        .expect("stderr is UTF-8");
    Finished {
        status,
        stdout,
        stderr,
        took,
    }
}

/// A command left running, its stdout read line by line. Killed when dropped.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Running {
    fn start(command: &mut Command) -> Running {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("meshgate-cli starts");
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running { child, lines }
    }

    /// Sends SIGINT and returns the exit status, within `PATIENCE`.
    fn interrupt(mut self) -> ExitStatus {
        let pid = libc::pid_t::try_from(self.child.id()).expect("a pid fits pid_t");
        // SAFETY: kill has no memory preconditions; the pid is our own child's, not yet reaped.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
        wait_for_exit(&mut self.child, PATIENCE).expect("the command exits on SIGINT")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Asserts that a command failed with exactly one line on stderr, and returns that line.
fn one_line_failure(run: &Finished) -> &str {
    assert!(!run.status.success(), "{run:?}");
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stderr expected: {run:?}");
    assert!(run.stdout.is_empty(), "nothing on stdout expected: {run:?}");
    lines[0]
}

#[test]
fn serve_echo_answers_a_call_with_its_json_arguments() {
    let gateway = Gateway::start(&[]);
    let echo = Running::start(&mut gateway.command(&["serve-echo", "demo.echo", "--verbose"]));
    let args = r#"{"a":[1,2,"x"]}"#;
    // The procedure is there once serve-echo has registered it.
    let deadline = Instant::now() + PATIENCE;
    let answered = loop {
        let run = finish(&mut gateway.command(&["call", "demo.echo", args]));
        if run.status.success() || !run.stderr.contains("procedure_not_found") {
            break run;
        }
        assert!(Instant::now() < deadline, "demo.echo never served: {run:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(answered.status.success(), "{answered:?}");
    let sent: serde_json::Value = serde_json::from_str(args).unwrap();
    let got: serde_json::Value = serde_json::from_str(answered.stdout.trim()).unwrap();
    assert_eq!(got, sent);
    assert_eq!(answered.stdout.lines().count(), 1, "{answered:?}");
    let served = echo.lines.recv_timeout(PATIENCE).expect("a line per call");
    assert_eq!(served, format!("[demo.echo] {args}"));
    assert!(echo.interrupt().success());
}

#[test]
fn a_call_to_a_missing_procedure_fails_in_one_line() {
    let gateway = Gateway::start(&[]);
    let run = finish(&mut gateway.command(&["call", "no.such.procedure", "[1]"]));
    let line = one_line_failure(&run);
    assert!(
        line.starts_with("meshgate-cli: call failed: procedure_not_found"),
        "{line}"
    );
}

#[test]
fn sub_prints_a_message_published_with_pub() {
    let gateway = Gateway::start(&[]);
    let sub = Running::start(&mut gateway.command(&["sub", "sensor.*.room1"]));
    // A message published before sub has subscribed reaches nobody: publish until one lands.
    let deadline = Instant::now() + PATIENCE;
    let line = loop {
        let run = finish(&mut gateway.command(&["pub", "sensor.temp.room1", "21.5"]));
        assert!(run.status.success() && run.stderr.is_empty(), "{run:?}");
        if let Ok(line) = sub.lines.recv_timeout(Duration::from_millis(200)) {
            break line;
        }
        assert!(Instant::now() < deadline, "sub printed nothing");
    };
    assert_eq!(line, "[sensor.temp.room1] 21.5");
    assert!(sub.interrupt().success());
}

#[test]
fn refusals_by_the_gateway_are_one_line_each() {
    let tokens = std::env::temp_dir().join(format!("meshgate-cli-tokens-{}", std::process::id()));
    std::fs::write(&tokens, "s3cret\n").unwrap();
    let secure = format!("secure:{}", tokens.display());
    let gateway = Gateway::start(&["--realm", "macula.default", "--realm", &secure]);

    let run = finish(&mut gateway.command(&["pub", "--realm", "elsewhere", "a.b", "x"]));
    let line = one_line_failure(&run);
    assert!(
        line.starts_with("meshgate-cli: refused by the gateway: realm_mismatch"),
        "{line}"
    );

    let run = finish(&mut gateway.command(&["call", "--realm", "secure", "a.b"]));
    let line = one_line_failure(&run);
    assert!(
        line.starts_with("meshgate-cli: refused by the gateway: unauthorized"),
        "{line}"
    );
    let run = finish(
        &mut gateway.command(&["pub", "--realm", "secure", "--token", "s3cret", "a.b", "x"]),
    );
    assert!(run.status.success(), "{run:?}");

    let run = finish(&mut gateway.command(&["pub", "a..b", "x"]));
    let line = one_line_failure(&run);
    assert!(
        line.starts_with("meshgate-cli: the gateway refused the message: invalid_topic"),
        "{line}"
    );
    let _ = std::fs::remove_file(tokens);
}

#[test]
fn no_gateway_listening_fails_in_one_line_within_seconds() {
    // A UDP port held by a socket that never answers: nothing there speaks QUIC.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let run = finish(
        Command::new(env!("CARGO_BIN_EXE_meshgate-cli"))
            .args(["pub", "--server", &addr, "--insecure"])
            .args(["--connect-timeout", "1s", "a.b", "x"])
            .env_remove("RUST_LOG")
            .stdin(Stdio::null()),
    );
    let line = one_line_failure(&run);
    assert!(
        line.starts_with("meshgate-cli: no answer from a gateway"),
        "{line}"
    );
    assert!(run.took < Duration::from_secs(5), "{run:?}");
}
