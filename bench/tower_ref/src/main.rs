//! bench/tower_ref: tower 0.4's figures for BENCH.md's layers table, so that
//! bench/layers can be compared with tower as ratios measured on the same
//! machine in the same run (scripts/bench-tower.sh runs both alternately).
//!
//! A trivial service that answers at once (`tower::service_fn` returning
//! `std::future::ready(Ok(req))`), called 1,000,000 times per pass:
//!   tower_call_bare      the service alone, one call at a time from one task
//!                        (`svc.ready().await; svc.call(req).await`)
//!   tower_call_stack     the same through tower's closest equivalent of
//!                        bulwark's stack (below), one call at a time
//!   tower_call_stack_64  the same stack, 64 calls in flight from one task:
//!                        a FuturesUnordered refilled as calls finish, each
//!                        call made after `svc.ready().await` on the one
//!                        service value, so the concurrency limit's permit and
//!                        the rate limit are taken per call as in real use
//!   tower_peak_rss       peak resident memory (getrusage), KiB
//!
//! The stack, from outside in (tower's layer order is constrained):
//!   map_result (fallback stand-in: any error becomes the value 0)
//!   rate limit (1e9 requests per second: never throttles)
//!   retry (a Policy allowing 3 attempts; never triggered, the service never
//!          fails; clone_request clones the u32 request on every call, as
//!          tower's Retry always does)
//!   concurrency limit (1024: the bulkhead)
//!   timeout (1 s)
//!   service_fn
//! bulwark's order is fallback, retry, breaker, rate limit, bulkhead, timeout.
//! Two differences, both forced by tower 0.4:
//!   - no circuit breaker: tower has none, so it is left out (bulwark's stack
//!     pays for a closed breaker that this one does not);
//!   - the rate limit sits outside retry instead of inside: tower's Retry
//!     needs a Clone inner service (it clones it into every response future)
//!     and RateLimit is not Clone; putting it below retry would need a Buffer
//!     (a channel and a worker task per call), which is not an honest
//!     equivalent. With no retries the two orders do the same work per call.
//!
//! Method, as bench/layers.c and BENCH.md: a fresh tokio multi-thread runtime
//! with 2 worker threads per workload (`enable_time`: the timeout and the rate
//! limit need the timer); the calls run in one task spawned on it; wall time
//! from the spawn to the task's end, per call; one untimed warm-up pass at
//! 1/10 of the count, then 5 timed passes; the median is printed as
//! `NAME VALUE UNIT` and min/max on a `#` line. tower_call_bare and
//! tower_call_stack alternate their passes, each on its own runtime, and the
//! median of the per-pair differences is printed on a `#` line (this VM's
//! speed drifts).
//!
//! Built `cargo build --release`: cargo's default release profile
//! (opt-level 3, no LTO). Optional argument: one workload name.

use std::convert::Infallible;
use std::fmt::Debug;
use std::future::{ready, Ready};
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::runtime::{Builder, Runtime};
use tower::retry::Policy;
use tower::{service_fn, BoxError, Service, ServiceBuilder, ServiceExt};

const PASSES: usize = 5;
const CALLS: u64 = 1_000_000;

/// Retry up to 3 attempts in all on an error; never used here since the
/// service never fails, but its cost per call (clone_request, a clone of the
/// inner service into the response future, the check on the result) is paid.
#[derive(Clone)]
struct Attempts(u32);

impl<E> Policy<u32, u32, E> for Attempts {
    type Future = Ready<Self>;
    fn retry(&self, _req: &u32, result: Result<&u32, &E>) -> Option<Self::Future> {
        match result {
            Ok(_) => None,
            Err(_) if self.0 > 1 => Some(ready(Attempts(self.0 - 1))),
            Err(_) => None,
        }
    }
    fn clone_request(&self, req: &u32) -> Option<u32> {
        Some(*req)
    }
}

fn runtime() -> Runtime {
    Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .expect("tokio runtime")
}

/// The trivial service: answers at once with its request.
fn leaf() -> impl Service<u32, Response = u32, Error = Infallible, Future = Ready<Result<u32, Infallible>>>
       + Clone
       + Send
       + 'static {
    service_fn(|req: u32| ready(Ok::<u32, Infallible>(req)))
}

/// Runs `n` calls through `svc` with `in_flight` calls at a time, from one
/// task spawned on `rt`; returns the service and ns per call.
fn run_calls<S>(rt: &Runtime, svc: S, n: u64, in_flight: usize) -> (S, f64)
where
    S: Service<u32, Response = u32> + Send + 'static,
    S::Future: Send,
    S::Error: Debug + Send,
{
    let t0 = Instant::now();
    let handle = rt.spawn(async move {
        let mut svc = svc;
        let mut errors = 0u64;
        if in_flight <= 1 {
            for i in 0..n {
                let r = match svc.ready().await {
                    Ok(s) => s.call(i as u32).await,
                    Err(e) => Err(e),
                };
                if r.is_err() {
                    errors += 1;
                }
            }
        } else {
            let mut pending = FuturesUnordered::new();
            let mut started = 0u64;
            let mut done = 0u64;
            while done < n {
                while started < n && pending.len() < in_flight {
                    match svc.ready().await {
                        Ok(s) => pending.push(s.call(started as u32)),
                        Err(_) => {
                            errors += 1;
                            done += 1;
                        }
                    }
                    started += 1;
                }
                match pending.next().await {
                    Some(r) => {
                        if r.is_err() {
                            errors += 1;
                        }
                        done += 1;
                    }
                    None => {}
                }
            }
        }
        (svc, errors)
    });
    let (svc, errors) = rt.block_on(handle).expect("bench task");
    let ns = t0.elapsed().as_nanos() as f64 / n as f64;
    if errors != 0 {
        eprintln!("{} calls failed", errors);
        std::process::exit(1);
    }
    (svc, ns)
}

/// The stack: built inside the runtime (RateLimit arms a tokio Sleep).
fn stack(
    rt: &Runtime,
) -> impl Service<u32, Response = u32, Error = BoxError, Future = impl Send> + Send + 'static {
    let _guard = rt.enter();
    ServiceBuilder::new()
        .map_result(|r: Result<u32, BoxError>| r.or_else(|_| Ok::<u32, BoxError>(0)))
        .rate_limit(1_000_000_000, Duration::from_secs(1))
        .retry(Attempts(3))
        .concurrency_limit(1024)
        .timeout(Duration::from_secs(1))
        .service(leaf())
}

/// One workload: its own runtime, its service, and its timed passes.
struct Workload<S> {
    name: &'static str,
    in_flight: usize,
    rt: Runtime,
    svc: Option<S>,
    v: Vec<f64>,
}

impl<S> Workload<S>
where
    S: Service<u32, Response = u32> + Send + 'static,
    S::Future: Send,
    S::Error: Debug + Send,
{
    fn new(name: &'static str, in_flight: usize, rt: Runtime, svc: S) -> Self {
        let mut w = Workload { name, in_flight, rt, svc: Some(svc), v: Vec::new() };
        w.run(CALLS / 10); // warm-up, untimed
        w.v.clear();
        w
    }
    fn run(&mut self, n: u64) {
        let svc = self.svc.take().expect("service");
        let (svc, ns) = run_calls(&self.rt, svc, n, self.in_flight);
        self.svc = Some(svc);
        self.v.push(ns);
    }
    fn pass(&mut self) -> f64 {
        self.run(CALLS);
        self.v[self.v.len() - 1]
    }
    /// Prints the median (min/max on a # line) and frees the workload.
    fn report(self) -> f64 {
        let mut v = self.v.clone();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "# {}: {} calls, {} in flight, min {:.1} max {:.1} ns/call",
            self.name,
            CALLS,
            self.in_flight,
            v[0],
            v[v.len() - 1]
        );
        println!("{} {:.1} ns/call", self.name, v[v.len() / 2]);
        let Workload { rt, svc, .. } = self;
        drop(svc);
        rt.shutdown_timeout(Duration::from_secs(1));
        v[v.len() / 2]
    }
}

fn wanted(only: &Option<String>, names: &[&str]) -> bool {
    match only {
        None => true,
        Some(o) => names.iter().any(|n| n == o),
    }
}

fn main() {
    let only = std::env::args().nth(1);

    if wanted(&only, &["tower_call_bare", "tower_call_stack"]) {
        let rt_bare = runtime();
        let rt_stack = runtime();
        let stack_svc = stack(&rt_stack);
        let mut bare = Workload::new("tower_call_bare", 1, rt_bare, leaf());
        let mut stk = Workload::new("tower_call_stack", 1, rt_stack, stack_svc);
        let mut over = Vec::new();
        for _ in 0..PASSES {
            let b = bare.pass();
            let s = stk.pass();
            over.push(s - b);
        }
        bare.report();
        stk.report();
        over.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "# tower_call_stack - tower_call_bare: median of the per-pair differences {:.1} ns (min {:.1} max {:.1})",
            over[PASSES / 2],
            over[0],
            over[PASSES - 1]
        );
    }

    if wanted(&only, &["tower_call_stack_64"]) {
        let rt = runtime();
        let svc = stack(&rt);
        let mut w = Workload::new("tower_call_stack_64", 64, rt, svc);
        for _ in 0..PASSES {
            w.pass();
        }
        w.report();
    }

    // ru_maxrss is in KiB on Linux.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe {
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
    }
    println!("tower_peak_rss {} KiB", ru.ru_maxrss);
}
