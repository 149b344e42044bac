//! `bench rpc` on the lean engine ([`crate::bench::lean`]): the callers and the providers are
//! sessions of one thread. A provider answers each CALL as it reads it; a caller makes its
//! next call as it reads a reply (or, with `--rate`, when the schedule says), so that the
//! frames of one turn leave together.

use std::sync::Arc;
use std::time::{Duration, Instant};

use meshgate_protocol::wire::{Call, CallIdRef, Message, Outcome, Raw, Register, Reply};

use super::super::cpu;
use super::super::lean::{Engine, Out};
use super::super::report::{round, Progress, Summary};
use super::super::{msgpack_bin, run_tag};
use super::{announce, summary, RpcArgs, Tally};

/// How long sessions may take to be admitted, and registrations to be in effect.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the closing sessions may take to say goodbye.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// One caller's calls in flight: a slot per call, its index the call's id.
struct Caller {
    session: usize,
    /// When each slot's call went out (as timed), `None` when the slot is free.
    sent: Vec<Option<Instant>>,
    free: Vec<u32>,
    /// Calls made so far (the schedule's position, with --rate).
    issued: u64,
    /// With --rate: calls were held back by the in-flight limit and are not yet caught up.
    held: bool,
}

/// The run's fixed parts.
struct Plan {
    procedure: Vec<u8>,
    args: Vec<u8>,
    timeout_ms: u64,
    measure_from: Instant,
    end: Instant,
    progress: Arc<Progress>,
}

pub fn run(a: &RpcArgs, progress: Arc<Progress>) -> Result<Summary, String> {
    let c = &a.common.connection;
    let target = |server| a.datagrams.target(c, server);
    let to_callers = target(c.server);
    let to_providers = target(a.provider_server.unwrap_or(c.server));
    let mut engine = Engine::new(c.server, &a.spin)?;
    let procedure = format!("bench.{}.echo", run_tag()).into_bytes();

    let providers = engine
        .connect(&to_providers, a.providers, SETUP_TIMEOUT)
        .map_err(|e| format!("provider: {e}"))?;
    for p in providers.clone() {
        engine.session(p).send(&Message::Register(Register {
            procedure: &procedure,
            ttl_s: None,
        }));
    }
    engine
        .barrier(
            providers.clone(),
            a.provider_server.is_some(),
            SETUP_TIMEOUT,
        )
        .map_err(|e| format!("provider: {e}"))?;
    let sessions = engine
        .connect(&to_callers, a.callers, SETUP_TIMEOUT)
        .map_err(|e| format!("caller: {e}"))?;
    let slots = if a.rate.is_some() {
        a.max_in_flight
    } else {
        a.in_flight
    };
    let mut callers: Vec<Caller> = sessions
        .map(|session| Caller {
            session,
            sent: vec![None; slots],
            free: (0..slots as u32).rev().collect(),
            issued: 0,
            held: false,
        })
        .collect();
    announce(a);

    let start = Instant::now();
    let measure_from = start + a.common.warmup;
    let plan = Plan {
        procedure,
        args: msgpack_bin(a.payload),
        timeout_ms: u64::try_from(a.call_timeout.as_millis()).unwrap_or(u64::MAX),
        measure_from,
        end: measure_from + a.common.duration,
        progress,
    };
    let per_caller = a.rate.map(|r| r / a.callers as f64);
    let first_caller = callers[0].session;
    let mut tally = Tally::default();
    let mut window: Option<(cpu::Window, Duration)> = None;
    let mut spent = None;
    if per_caller.is_none() {
        for caller in &mut callers {
            let mut out = engine.session(caller.session).out();
            while caller.call(&plan, Instant::now(), &mut out) {}
        }
    }
    let mut lost = None;
    let mut next_due = plan.end;
    loop {
        let now = Instant::now();
        if window.is_none() && now >= plan.measure_from {
            window = Some((
                cpu::Window::start(a.gateway_pid, &a.common.metrics),
                engine.spun(),
            ));
        }
        if now >= plan.end {
            if spent.is_none() {
                spent = window.map(|(w, spun)| {
                    (
                        w.spent(a.gateway_pid, &a.common.metrics),
                        engine.spun().saturating_sub(spun),
                    )
                });
            }
            let waiting = callers.iter().any(|c| c.free.len() < c.sent.len());
            if !waiting || now >= plan.end + a.call_timeout + Duration::from_secs(1) {
                break;
            }
        } else if let Some(rate) = per_caller {
            next_due = plan.end;
            for caller in &mut callers {
                let mut out = engine.session(caller.session).out();
                next_due = next_due.min(caller.pace(&plan, start, rate, now, &mut out));
            }
        }
        if let Some(why) = engine.sessions().iter().find_map(|s| s.ended()) {
            lost = Some(why.to_owned());
            break;
        }
        // With a schedule, wake when the next call is due.
        let until = if now < plan.end {
            next_due
        } else {
            plan.end + a.call_timeout
        };
        let closed_loop = per_caller.is_none() && now < plan.end;
        // The clock is read once per turn, at its first reply: the replies of one turn came
        // in the same reads, and the calls they free go out together at its end.
        let mut replied_at = None;
        engine.turn(Some(until), |i, msg, out| {
            match msg {
                Message::Call(call) => {
                    // A provider: the echo.
                    out.send(&Message::Reply(Reply {
                        call_id: call.call_id,
                        outcome: Outcome::Result(call.args),
                    }));
                }
                Message::Reply(reply) if i >= first_caller => {
                    let at = *replied_at.get_or_insert_with(Instant::now);
                    let caller = &mut callers[i - first_caller];
                    caller.on_reply(&plan, &reply, at, &mut tally);
                    if closed_loop {
                        caller.call(&plan, at, out);
                    }
                }
                Message::Error(e) => {
                    plan.progress.error();
                    *tally
                        .errors
                        .entry(String::from_utf8_lossy(e.code).into_owned())
                        .or_default() += 1;
                }
                _ => {}
            }
        });
    }
    if let Some(why) = &lost {
        *tally.errors.entry(format!("closed_{why}")).or_default() += 1;
    }
    engine.close(CLOSE_TIMEOUT);

    let ((load_cpu, gateway_cpu), spun) = spent.unwrap_or(((Duration::ZERO, None), Duration::ZERO));
    let window = a.common.duration.as_secs_f64();
    let per_call = |d: Duration| round(d.as_secs_f64() * 1e6 / tally.ok.max(1) as f64, 3);
    let mut s = summary(a, &tally);
    s.set(
        "largest_datagram_received",
        engine.largest_datagram_received(),
    );
    let load_work = s.set_load_cpu(load_cpu, spun, window);
    s.set("load_cpu_per_call_us", per_call(load_work));
    if let Some(g) = gateway_cpu {
        let work = s.set_gateway_cpu(g, window);
        s.set("gateway_cpu_per_call_us", per_call(work));
    }
    if let Some(why) = lost {
        return Err(format!("a session ended during the run: {why}"));
    }
    Ok(s)
}

impl Caller {
    /// Makes a call in a free slot, timed from `sent`; false when every slot is taken.
    fn call(&mut self, plan: &Plan, sent: Instant, out: &mut Out<'_>) -> bool {
        let Some(slot) = self.free.pop() else {
            return false;
        };
        self.sent[slot as usize] = Some(sent);
        self.issued += 1;
        out.send(&Message::Call(Call {
            procedure: &plan.procedure,
            args: Raw(&plan.args),
            call_id: Some(CallIdRef::Uint(u64::from(slot))),
            timeout_ms: Some(plan.timeout_ms),
        }));
        true
    }

    /// Makes the calls the schedule of `rate` calls per second has due by `now`, as slots
    /// allow; returns when the next one is due. A call goes out when the engine wakes for it
    /// and is timed from then, unless it was held back by the in-flight limit: then it is
    /// timed from when it was due, so that a gateway that falls behind shows in the latency
    /// instead of quietly lowering the rate.
    fn pace(
        &mut self,
        plan: &Plan,
        start: Instant,
        rate: f64,
        now: Instant,
        out: &mut Out<'_>,
    ) -> Instant {
        let due_at = |n: u64| start + Duration::from_secs_f64(n as f64 / rate);
        while due_at(self.issued) <= now {
            let sent = if self.held { due_at(self.issued) } else { now };
            if !self.call(plan, sent, out) {
                // Every slot is taken: the next reply frees one.
                self.held = true;
                return plan.end;
            }
        }
        self.held = false;
        due_at(self.issued)
    }

    /// Frees the reply's slot and counts its outcome, if its call went out in the window;
    /// the reply came `at`.
    fn on_reply(&mut self, plan: &Plan, reply: &Reply<'_>, at: Instant, tally: &mut Tally) {
        let Some(CallIdRef::Uint(slot)) = reply.call_id else {
            return;
        };
        let Some(sent) = self.sent.get_mut(slot as usize).and_then(Option::take) else {
            return;
        };
        self.free.push(slot as u32);
        let measured = sent >= plan.measure_from;
        let kind = match reply.outcome {
            Outcome::Result(Raw(r)) if r == plan.args.as_slice() => {
                plan.progress.add(0, 1);
                if measured {
                    tally.ok += 1;
                    tally.latency.record(at.saturating_duration_since(sent));
                }
                return;
            }
            Outcome::Result(_) => "wrong_result".to_owned(),
            Outcome::Error { code, .. } => String::from_utf8_lossy(code).into_owned(),
        };
        plan.progress.error();
        if measured {
            *tally.errors.entry(kind).or_default() += 1;
        }
    }
}
