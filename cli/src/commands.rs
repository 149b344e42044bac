//! Client commands for people at a terminal: `meshgate-cli pub`, `sub`, `call`, `serve-echo`.
//!
//! Each command is one session of the client library on a Tokio current-thread runtime.
//! Results go to stdout; every failure is
//! returned as one line for `main` to print. `pub` and `call` do not reconnect: a lost
//! connection fails them. `sub` and `serve-echo` reconnect, saying so on stderr, and run
//! until SIGINT or SIGTERM, on which they leave the gateway with DISCONNECT and exit 0.

mod value;

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use meshgate_client::{
    CallError, Client, ClientConfig, ClientError, ConnectionState, ProcedureError, Reason,
};
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::args::{parse_duration, Connection};

/// Flags every client command takes.
#[derive(Args, Debug, Clone)]
pub struct ConnectArgs {
    #[command(flatten)]
    pub connection: Connection,
    /// How long to wait for the gateway to answer when connecting.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
}

/// The client commands.
#[derive(Subcommand, Debug, Clone)]
pub enum ClientCommand {
    /// Publishes one message.
    Pub(PubArgs),
    /// Prints the messages published on matching topics as they come.
    Sub(SubArgs),
    /// Calls a procedure: JSON arguments in, JSON result out.
    Call(CallArgs),
    /// Provides a procedure that answers with its arguments.
    ServeEcho(ServeEchoArgs),
}

#[derive(Args, Debug, Clone)]
pub struct PubArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// The topic to publish to, such as `sensor.temp.room1`.
    pub topic: String,
    /// The message; its UTF-8 bytes are sent.
    pub payload: String,
}

#[derive(Args, Debug, Clone)]
pub struct SubArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Topic patterns: `*` matches one segment, `**` any number.
    #[arg(required = true)]
    pub patterns: Vec<String>,
}

#[derive(Args, Debug, Clone)]
pub struct CallArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// The procedure to call, such as `demo.echo`.
    pub procedure: String,
    /// Arguments as JSON.
    #[arg(default_value = "null")]
    pub args: String,
    /// How long to wait for the reply.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
}

#[derive(Args, Debug, Clone)]
pub struct ServeEchoArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// The procedure to provide.
    pub procedure: String,
    /// Print one line per call served: the procedure and its arguments as JSON.
    #[arg(long, short)]
    pub verbose: bool,
}

/// Runs a client command; the error is one line for the terminal.
pub fn run(command: ClientCommand) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the client runtime: {e}"))?;
    runtime.block_on(async move {
        match command {
            ClientCommand::Pub(args) => publish(args).await,
            ClientCommand::Sub(args) => subscribe(args).await,
            ClientCommand::Call(args) => call(args).await,
            ClientCommand::ServeEcho(args) => serve_echo(args).await,
        }
    })
}

/// `pub`: publishes, then waits for the gateway's answer to a PING, so the message has been
/// routed (and a refused topic reported) before the command exits.
async fn publish(args: PubArgs) -> Result<(), String> {
    let client = connect(&args.connect, false).await?;
    let mut errors = client.errors();
    client
        .publish(&args.topic, args.payload.as_bytes())
        .await
        .map_err(|e| format!("publish failed: {e}"))?;
    client
        .flush()
        .await
        .map_err(|e| format!("publish failed: {e}"))?;
    // The gateway answers frames in order: an ERROR for the PUBLISH came before the PONG.
    let refused = futures_lite::future::poll_once(errors.next())
        .await
        .flatten();
    let _ = client.close().await;
    match refused {
        Some(e) => Err(format!(
            "the gateway refused the message: {}: {}",
            e.code, e.message
        )),
        None => Ok(()),
    }
}

/// `sub`: prints `[topic] payload` for each message until stopped.
async fn subscribe(args: SubArgs) -> Result<(), String> {
    let mut stop = StopSignals::install()?;
    let client = tokio::select! {
        client = connect(&args.connect, true) => client?,
        () = stop.recv() => return Ok(()),
    };
    let mut subscription = client
        .subscribe(args.patterns.iter().cloned())
        .await
        .map_err(|e| format!("subscribe failed: {e}"))?;
    notice(&format!(
        "subscribed to {}; Ctrl-C to stop",
        args.patterns.join(" ")
    ));
    let mut state = client.watch_state();
    let mut out = std::io::stdout();
    let outcome = loop {
        tokio::select! {
            delivery = subscription.next() => match delivery {
                Some(d) => {
                    let line = format!("[{}] {}", d.topic, value::payload_line(&d.payload));
                    if let Err(e) = writeln!(out, "{line}") {
                        break stdout_failure(e);
                    }
                }
                None => return Err(session_end(&client.state())),
            },
            changed = state.changed() => {
                if changed.is_err() {
                    return Err(session_end(&client.state()));
                }
                // The end of the session is reported once the deliveries before it are out.
                let now = state.borrow_and_update().clone();
                report_reconnection(&now);
            }
            () = stop.recv() => break Ok(()),
        }
    };
    drop(subscription);
    let _ = client.close().await;
    outcome
}

/// `call`: JSON arguments in, the result as JSON on stdout.
async fn call(args: CallArgs) -> Result<(), String> {
    let packed = value::json_to_msgpack(&args.args).map_err(|e| format!("ARGS are {e}"))?;
    let client = connect(&args.connect, false).await?;
    let reply = client
        .call_with_timeout(&args.procedure, &packed, args.timeout)
        .await;
    let _ = client.close().await;
    let result = reply.map_err(|e| call_failure(e, args.timeout))?;
    let json = value::msgpack_to_json(&result).map_err(|e| format!("the result is {e}"))?;
    match writeln!(std::io::stdout(), "{json}") {
        Ok(()) => Ok(()),
        Err(e) => stdout_failure(e),
    }
}

/// `serve-echo`: answers every call of the procedure with its arguments until stopped.
async fn serve_echo(args: ServeEchoArgs) -> Result<(), String> {
    let mut stop = StopSignals::install()?;
    let client = tokio::select! {
        client = connect(&args.connect, true) => client?,
        () = stop.recv() => return Ok(()),
    };
    let procedure: Arc<str> = Arc::from(args.procedure.as_str());
    let verbose = args.verbose;
    client
        .register(&args.procedure, move |packed| {
            if verbose {
                let shown = value::msgpack_to_json(&packed)
                    .unwrap_or_else(|_| value::payload_line(&packed));
                // A closed stdout does not stop the service.
                let _ = writeln!(std::io::stdout(), "[{procedure}] {shown}");
            }
            std::future::ready(Ok::<_, ProcedureError>(packed))
        })
        .await
        .map_err(|e| format!("register failed: {e}"))?;
    notice(&format!("serving {}; Ctrl-C to stop", args.procedure));
    let mut state = client.watch_state();
    loop {
        tokio::select! {
            changed = state.changed() => {
                let now = state.borrow_and_update().clone();
                if changed.is_err() || matches!(now, ConnectionState::Closed { .. }) {
                    return Err(session_end(&now));
                }
                report_reconnection(&now);
            }
            () = stop.recv() => break,
        }
    }
    let _ = client.close().await;
    Ok(())
}

/// Connects to the gateway named by `args`; the error is one line that says why not.
async fn connect(args: &ConnectArgs, reconnect: bool) -> Result<Client, String> {
    let config = ClientConfig {
        connect_timeout: args.connect_timeout,
        reconnect,
        ..args.connection.client_config()?
    };
    // The client bounds the handshake and CONNECT by `connect_timeout`.
    Client::connect(config)
        .await
        .map_err(|e| connect_failure(e, args))
}

fn connect_failure(e: ClientError, args: &ConnectArgs) -> String {
    match e {
        ClientError::Refused { reason, message } => {
            let mut line = format!("refused by the gateway: {}", explain(reason, &message));
            if reason == Reason::RealmMismatch {
                line.push_str(&format!(" (realm {})", args.connection.realm));
            }
            line
        }
        ClientError::Timeout => format!(
            "no answer from a gateway at {} within {} (is it running?)",
            args.connection.server,
            humantime::format_duration(args.connect_timeout)
        ),
        e => format!(
            "cannot connect to the gateway at {}: {e}",
            args.connection.server
        ),
    }
}

fn call_failure(e: CallError, timeout: Duration) -> String {
    match e {
        CallError::Remote { code, message } if message.is_empty() => {
            format!("call failed: {code}")
        }
        CallError::Remote { code, message } => format!("call failed: {code}: {message}"),
        CallError::Timeout => format!(
            "call failed: no reply within {}",
            humantime::format_duration(timeout)
        ),
        e => format!("call failed: {e}"),
    }
}

/// Why a session that was to run until stopped is over.
fn session_end(state: &ConnectionState) -> String {
    match state {
        ConnectionState::Closed {
            reason: Some(reason),
        } => format!("the gateway ended the session: {}", explain(*reason, "")),
        _ => "the connection to the gateway was lost".to_owned(),
    }
}

/// A reason with the gateway's message, or with what it means when there is none.
fn explain(reason: Reason, message: &str) -> String {
    let meaning = match reason {
        _ if !message.is_empty() => message,
        Reason::Normal => "the session was closed",
        Reason::ProtocolError => "the gateway saw a frame that breaks the protocol",
        Reason::FrameTooLarge => "a frame was larger than the gateway accepts",
        Reason::RealmMismatch => "this realm is not served here",
        Reason::Unauthorized => "missing or wrong token",
        Reason::MaxClientsReached => "the gateway's client table is full",
        Reason::Replaced => "another client connected with the same node id",
        Reason::SlowConsumer => "this client read too slowly",
        Reason::ConnectTimeout => "CONNECT came too late",
        Reason::ShuttingDown => "the gateway is stopping",
    };
    format!("{}: {meaning}", reason.as_str())
}

/// Tells on stderr that the connection was lost and is back.
fn report_reconnection(state: &ConnectionState) {
    match state {
        ConnectionState::Reconnecting { attempt: 0 } => {
            eprintln!("meshgate-cli: lost the connection to the gateway; reconnecting")
        }
        ConnectionState::Connected { .. } => eprintln!("meshgate-cli: reconnected"),
        _ => {}
    }
}

/// A status line for a person watching: on stderr, and only when it is a terminal, so that
/// scripts see nothing there but errors.
fn notice(line: &str) {
    if std::io::stderr().is_terminal() {
        eprintln!("meshgate-cli: {line}");
    }
}

/// A reader that went away (`| head`) ends the command quietly; any other write error is one.
fn stdout_failure(e: std::io::Error) -> Result<(), String> {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        Ok(())
    } else {
        Err(format!("cannot write to stdout: {e}"))
    }
}

/// SIGINT and SIGTERM, caught so that a command can leave the gateway cleanly.
struct StopSignals {
    interrupt: Signal,
    terminate: Signal,
}

impl StopSignals {
    fn install() -> Result<StopSignals, String> {
        let catch = |kind| signal(kind).map_err(|e| format!("cannot catch signals: {e}"));
        Ok(StopSignals {
            interrupt: catch(SignalKind::interrupt())?,
            terminate: catch(SignalKind::terminate())?,
        })
    }

    /// Waits for either signal.
    async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}
