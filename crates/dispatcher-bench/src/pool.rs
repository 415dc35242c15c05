//! The worker-pool benchmark behind `dispatcher bench pool`: no-op job throughput with one job per
//! `submit` call, submit latency, and resident memory under sustained 10× overload.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use dispatcher_pool::{BuildError, Pool};
use hdrhistogram::Histogram;
use serde::Serialize;

/// Every this many submits, one is timed for the latency histogram.
const LATENCY_SAMPLE_EVERY: u64 = 1024;
/// Work done by each job of the overload phase, so that the pool's drain rate is known.
const OVERLOAD_JOB_WORK: Duration = Duration::from_micros(10);
/// How long the overload phase first saturates the pool to measure its drain rate.
const MAX_CALIBRATION: Duration = Duration::from_secs(1);
/// RSS samples before this much of the overload window (or 5 s, whichever is less) are warm-up.
const WARMUP_FRACTION: f64 = 0.1;
const MAX_WARMUP_SECS: f64 = 5.0;
/// Deadline for draining the pool at the end of each phase.
const DRAIN_DEADLINE: Duration = Duration::from_secs(30);

/// What to run.
#[derive(Debug, Clone)]
pub struct PoolBenchOptions {
    /// Worker threads of the pool.
    pub workers: usize,
    /// Queue capacity of the pool.
    pub queue_capacity: usize,
    /// Threads calling `submit`.
    pub producers: usize,
    /// Length of the throughput phase, seconds.
    pub throughput_secs: f64,
    /// Length of the overload (memory) phase, seconds.
    pub overload_secs: f64,
    /// Offered load in the overload phase, as a multiple of the pool's measured drain rate.
    pub overload_factor: f64,
    /// RSS sampling interval in the overload phase, milliseconds.
    pub sample_interval_ms: u64,
}

fn available_cores() -> usize {
    thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
}

impl PoolBenchOptions {
    /// A run of a few seconds, for CI: it checks that the benchmark works, not the numbers.
    pub fn smoke() -> Self {
        Self {
            workers: available_cores().min(2),
            queue_capacity: 1024,
            producers: 2,
            throughput_secs: 1.0,
            overload_secs: 2.0,
            overload_factor: 10.0,
            sample_interval_ms: 50,
        }
    }

    fn validate(&self) -> Result<(), PoolBenchError> {
        let bad = |what: &str| Err(PoolBenchError::InvalidOptions(what.to_owned()));
        if self.workers == 0 || self.queue_capacity == 0 || self.producers == 0 {
            return bad("workers, queue_capacity and producers must each be at least 1");
        }
        if !(self.throughput_secs.is_finite() && self.throughput_secs > 0.0) {
            return bad("throughput_secs must be a positive number of seconds");
        }
        if !(self.overload_secs.is_finite() && self.overload_secs > 0.0) {
            return bad("overload_secs must be a positive number of seconds");
        }
        if !(self.overload_factor.is_finite() && self.overload_factor >= 1.0) {
            return bad("overload_factor must be at least 1");
        }
        if self.sample_interval_ms == 0 {
            return bad("sample_interval_ms must be at least 1");
        }
        Ok(())
    }
}

impl Default for PoolBenchOptions {
    /// The full run: 5 s of throughput, 60 s of 10× overload, one worker per core.
    fn default() -> Self {
        let cores = available_cores();
        Self {
            workers: cores,
            queue_capacity: 1024,
            producers: cores,
            throughput_secs: 5.0,
            overload_secs: 60.0,
            overload_factor: 10.0,
            sample_interval_ms: 250,
        }
    }
}

/// The benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum PoolBenchError {
    /// The options make no sense.
    #[error("invalid pool benchmark options: {0}")]
    InvalidOptions(String),
    /// The pool could not be built.
    #[error("could not build the worker pool: {0}")]
    Build(#[from] BuildError),
    /// A producer thread could not be started.
    #[error("could not start a producer thread: {0}")]
    Spawn(#[source] std::io::Error),
    /// The pool refused a job mid-run (it is only shut down at the end of a phase).
    #[error("the pool refused a job while the benchmark was running")]
    Refused,
    /// Resident memory could not be read from `/proc/self/status`.
    #[error("could not read resident memory from /proc/self/status: {0}")]
    Rss(#[source] std::io::Error),
}

/// What the benchmark measured; serialises to the JSON object `--json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct PoolBenchReport {
    // ---- throughput phase ----
    /// No-op jobs completed per second (completed, not merely submitted), one job per `submit`.
    pub jobs_per_sec: f64,
    /// Jobs completed in the throughput phase.
    pub jobs_total: u64,
    /// Measured length of the throughput phase, seconds.
    pub throughput_secs: f64,
    /// Latency of one `submit` call (building the job included), sampled every 1024th call, ns.
    pub submit_p50_ns: u64,
    pub submit_p99_ns: u64,
    pub submit_max_ns: u64,
    /// Submit calls timed for the latency figures.
    pub submit_samples: u64,
    /// Bytes the throughput job captures, and whether the pool had to put it on the heap.
    pub job_capture_bytes: usize,
    pub job_heap_allocated: bool,

    // ---- overload phase ----
    /// Highest RSS sampled during the overload phase, bytes.
    pub peak_rss_bytes: u64,
    /// RSS when the overload phase started and ended, bytes.
    pub start_rss_bytes: u64,
    pub end_rss_bytes: u64,
    /// Least-squares slope of RSS over time after the warm-up, bytes per second.
    pub rss_slope_bytes_per_sec: f64,
    /// RSS samples taken (and those used for the slope, after the warm-up).
    pub rss_samples: usize,
    pub rss_slope_samples: usize,
    /// Warm-up excluded from the slope, seconds.
    pub rss_warmup_secs: f64,
    /// Work per overload job (a measured busy-wait), microseconds.
    pub overload_job_micros: f64,
    /// Jobs per second the saturated pool drains, measured before the overload window.
    pub overload_drain_per_sec: f64,
    /// Upper bound of the drain rate: `min(workers, cores)` / job duration.
    pub overload_drain_bound_per_sec: f64,
    /// Rate the producers were scheduled to submit at: `overload_factor` × the larger of the
    /// measured drain rate and its upper bound.
    pub overload_offered_per_sec: f64,
    /// Rate at which submits were actually accepted (backpressure holds producers back).
    pub overload_achieved_per_sec: f64,
    /// Rate at which overload jobs completed.
    pub overload_completed_per_sec: f64,
    /// Submit calls behind schedule at the end of the overload window.
    pub overload_behind_schedule: u64,
    /// Longest single `submit` call in the overload window (time blocked by backpressure), ns.
    pub overload_submit_max_ns: u64,
    /// Measured length of the overload window, seconds.
    pub overload_secs: f64,
    pub overload_factor: f64,

    // ---- configuration ----
    pub queue_capacity: usize,
    pub workers: usize,
    pub producers: usize,
    pub sample_interval_ms: u64,
    pub cores: usize,
}

impl fmt::Display for PoolBenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        writeln!(
            f,
            "worker pool: {} workers, queue capacity {}, {} producer threads, {} cores",
            self.workers, self.queue_capacity, self.producers, self.cores
        )?;
        writeln!(
            f,
            "throughput: {:.0} no-op jobs/s completed ({} jobs in {:.2} s, one job per submit call, each a closure capturing {} bytes, {})",
            self.jobs_per_sec,
            self.jobs_total,
            self.throughput_secs,
            self.job_capture_bytes,
            if self.job_heap_allocated {
                "heap-allocated"
            } else {
                "stored inline in its queue slot"
            }
        )?;
        writeln!(
            f,
            "submit latency: p50 {} ns, p99 {} ns, max {} ns ({} sampled calls, 1 in {})",
            self.submit_p50_ns,
            self.submit_p99_ns,
            self.submit_max_ns,
            self.submit_samples,
            LATENCY_SAMPLE_EVERY
        )?;
        writeln!(
            f,
            "overload: {:.1} s at {:.0}x, jobs of {:.1} us; drain {:.0}/s (bound {:.0}/s), offered {:.0}/s, achieved {:.0}/s, completed {:.0}/s, {} submits behind schedule, longest submit {:.1} ms",
            self.overload_secs,
            self.overload_factor,
            self.overload_job_micros,
            self.overload_drain_per_sec,
            self.overload_drain_bound_per_sec,
            self.overload_offered_per_sec,
            self.overload_achieved_per_sec,
            self.overload_completed_per_sec,
            self.overload_behind_schedule,
            self.overload_submit_max_ns as f64 / 1e6
        )?;
        write!(
            f,
            "memory: RSS start {:.1} MiB, end {:.1} MiB, peak {:.1} MiB, slope {:.0} B/s over {} samples every {} ms (after {:.1} s warm-up)",
            mib(self.start_rss_bytes),
            mib(self.end_rss_bytes),
            mib(self.peak_rss_bytes),
            self.rss_slope_bytes_per_sec,
            self.rss_slope_samples,
            self.sample_interval_ms,
            self.rss_warmup_secs
        )
    }
}

/// Runs both phases. `progress`, if given, gets its length set to the total seconds and is advanced
/// as the run goes.
pub fn run(
    opts: &PoolBenchOptions,
    progress: Option<&indicatif::ProgressBar>,
) -> Result<PoolBenchReport, PoolBenchError> {
    opts.validate()?;
    if let Some(pb) = progress {
        pb.set_length((opts.throughput_secs + opts.overload_secs).ceil() as u64);
        pb.set_position(0);
    }
    let throughput = throughput_phase(opts, progress)?;
    let overload = overload_phase(opts, progress)?;
    if let Some(pb) = progress {
        pb.set_message("done");
    }
    Ok(PoolBenchReport {
        jobs_per_sec: throughput.jobs_total as f64 / throughput.elapsed_secs,
        jobs_total: throughput.jobs_total,
        throughput_secs: throughput.elapsed_secs,
        submit_p50_ns: throughput.latency.value_at_quantile(0.50),
        submit_p99_ns: throughput.latency.value_at_quantile(0.99),
        submit_max_ns: throughput.latency.max(),
        submit_samples: throughput.latency.len(),
        job_capture_bytes: std::mem::size_of_val(&throughput_job(0)),
        job_heap_allocated: dispatcher_pool::Job::new(throughput_job(0)).is_heap(),
        peak_rss_bytes: overload.rss.iter().map(|s| s.1).max().unwrap_or(0),
        start_rss_bytes: overload.rss.first().map_or(0, |s| s.1),
        end_rss_bytes: overload.rss.last().map_or(0, |s| s.1),
        rss_slope_bytes_per_sec: overload.slope,
        rss_samples: overload.rss.len(),
        rss_slope_samples: overload.slope_samples,
        rss_warmup_secs: overload.warmup_secs,
        overload_job_micros: OVERLOAD_JOB_WORK.as_secs_f64() * 1e6,
        overload_drain_per_sec: overload.drain_per_sec,
        overload_drain_bound_per_sec: overload.drain_bound_per_sec,
        overload_offered_per_sec: overload.offered_per_sec,
        overload_achieved_per_sec: overload.accepted as f64 / overload.elapsed_secs,
        overload_completed_per_sec: overload.completed as f64 / overload.elapsed_secs,
        overload_behind_schedule: overload.behind,
        overload_submit_max_ns: overload.submit_max_ns,
        overload_secs: overload.elapsed_secs,
        overload_factor: opts.overload_factor,
        queue_capacity: opts.queue_capacity,
        workers: opts.workers,
        producers: opts.producers,
        sample_interval_ms: opts.sample_interval_ms,
        cores: available_cores(),
    })
}

fn build_pool(opts: &PoolBenchOptions, name: &str) -> Result<Pool, PoolBenchError> {
    Ok(Pool::builder()
        .workers(opts.workers)
        .queue_capacity(opts.queue_capacity)
        .thread_name(name)
        .build()?)
}

fn latency_histogram() -> Histogram<u64> {
    // 1 ns .. 1 h at 3 significant digits; the bounds are constants, so this cannot fail.
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3)
        .expect("constant histogram bounds are valid")
}

fn elapsed_whole_secs(started: Instant) -> u64 {
    started.elapsed().as_secs()
}

// ---- phase 1: throughput ----------------------------------------------------------------------

struct Throughput {
    jobs_total: u64,
    elapsed_secs: f64,
    latency: Histogram<u64>,
}

fn throughput_phase(
    opts: &PoolBenchOptions,
    progress: Option<&indicatif::ProgressBar>,
) -> Result<Throughput, PoolBenchError> {
    if let Some(pb) = progress {
        pb.set_message("throughput: no-op jobs");
    }
    let pool = build_pool(opts, "bench-pool")?;
    let stop = AtomicBool::new(false);
    let refused = AtomicBool::new(false);
    let window = Duration::from_secs_f64(opts.throughput_secs);

    let (jobs_total, elapsed, histograms) = thread::scope(|s| {
        let mut producers = Vec::with_capacity(opts.producers);
        for index in 0..opts.producers {
            let (pool, stop, refused) = (&pool, &stop, &refused);
            let spawned = thread::Builder::new()
                .name(format!("bench-producer-{index}"))
                .spawn_scoped(s, move || throughput_producer(pool, stop, refused));
            match spawned {
                Ok(handle) => producers.push(handle),
                Err(e) => {
                    stop.store(true, Ordering::Relaxed);
                    return Err(PoolBenchError::Spawn(e));
                }
            }
        }
        let started = Instant::now();
        let completed_before = pool.completed();
        while started.elapsed() < window && !refused.load(Ordering::Relaxed) {
            thread::sleep(Duration::from_millis(50).min(window.saturating_sub(started.elapsed())));
            if let Some(pb) = progress {
                pb.set_position(elapsed_whole_secs(started));
            }
        }
        // Completed jobs inside the window; jobs still queued at its end do not count.
        let jobs_total = pool.completed() - completed_before;
        let elapsed = started.elapsed();
        stop.store(true, Ordering::Relaxed);
        let histograms: Vec<Histogram<u64>> = producers
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| latency_histogram()))
            .collect();
        Ok((jobs_total, elapsed, histograms))
    })?;
    pool.shutdown(DRAIN_DEADLINE);
    if refused.load(Ordering::Relaxed) {
        return Err(PoolBenchError::Refused);
    }
    let mut latency = latency_histogram();
    for h in &histograms {
        // Same bounds everywhere, so adding cannot fail; a failure would only lose samples.
        let _ = latency.add(h);
    }
    Ok(Throughput {
        jobs_total,
        elapsed_secs: elapsed.as_secs_f64(),
        latency,
    })
}

/// The throughput phase's no-op job. It captures state (8 bytes) like a real job would, so it is
/// not a zero-sized closure that costs nothing to store; `black_box` keeps it from being elided.
fn throughput_job(seq: u64) -> impl FnOnce() + Send + 'static {
    move || {
        std::hint::black_box(seq);
    }
}

fn throughput_producer(pool: &Pool, stop: &AtomicBool, refused: &AtomicBool) -> Histogram<u64> {
    let mut latency = latency_histogram();
    let mut seq: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        // Check the stop flag once per batch; every call still submits exactly one job.
        for _ in 0..LATENCY_SAMPLE_EVERY {
            seq = seq.wrapping_add(1);
            let job = throughput_job(seq);
            let result = if seq.is_multiple_of(LATENCY_SAMPLE_EVERY) {
                let t = Instant::now();
                let r = pool.submit(job);
                latency.saturating_record(t.elapsed().as_nanos() as u64);
                r
            } else {
                pool.submit(job)
            };
            if result.is_err() {
                refused.store(true, Ordering::Relaxed);
                return latency;
            }
        }
    }
    latency
}

// ---- phase 2: overload and memory ---------------------------------------------------------------

struct Overload {
    rss: Vec<(f64, u64)>,
    slope: f64,
    slope_samples: usize,
    warmup_secs: f64,
    drain_per_sec: f64,
    drain_bound_per_sec: f64,
    offered_per_sec: f64,
    accepted: u64,
    completed: u64,
    behind: u64,
    submit_max_ns: u64,
    elapsed_secs: f64,
}

/// Busy-waits for `d`, measured on the monotonic clock.
fn spin_for(d: Duration) {
    let started = Instant::now();
    while started.elapsed() < d {
        std::hint::spin_loop();
    }
}

fn overload_job() {
    spin_for(OVERLOAD_JOB_WORK);
}

/// Shared by the overload producers.
struct OverloadControl {
    stop: AtomicBool,
    refused: AtomicBool,
    accepted: AtomicU64,
    behind: AtomicU64,
    submit_max_ns: AtomicU64,
}

fn overload_phase(
    opts: &PoolBenchOptions,
    progress: Option<&indicatif::ProgressBar>,
) -> Result<Overload, PoolBenchError> {
    let phase_started = Instant::now();
    let pool = build_pool(opts, "bench-pool-overload")?;

    // Drain rate: saturate the pool for a moment and count completions.
    if let Some(pb) = progress {
        pb.set_message("overload: measuring drain rate");
    }
    let calibration = MAX_CALIBRATION.min(Duration::from_secs_f64(opts.overload_secs / 10.0));
    let drain_per_sec = measure_drain_rate(&pool, opts.producers, calibration)?;
    // Offer `factor` times the most the pool could possibly drain (every worker on its own core
    // doing nothing but jobs), so that the overload factor holds even if the measurement above
    // was disturbed by other load on the machine.
    let drain_bound_per_sec =
        opts.workers.min(available_cores()) as f64 / OVERLOAD_JOB_WORK.as_secs_f64();
    let offered_per_sec = drain_per_sec.max(drain_bound_per_sec) * opts.overload_factor;

    if let Some(pb) = progress {
        pb.set_message(format!(
            "overload: {:.0}x, sampling RSS",
            opts.overload_factor
        ));
    }
    let control = OverloadControl {
        stop: AtomicBool::new(false),
        refused: AtomicBool::new(false),
        accepted: AtomicU64::new(0),
        behind: AtomicU64::new(0),
        submit_max_ns: AtomicU64::new(0),
    };
    let window = Duration::from_secs_f64(opts.overload_secs);
    let interval = Duration::from_millis(opts.sample_interval_ms);
    let per_producer_period = Duration::from_secs_f64(opts.producers as f64 / offered_per_sec);

    let (rss, completed, elapsed) = thread::scope(|s| {
        let started = Instant::now();
        for index in 0..opts.producers {
            let (pool, control) = (&pool, &control);
            let spawned = thread::Builder::new()
                .name(format!("bench-overload-{index}"))
                .spawn_scoped(s, move || {
                    open_loop_producer(pool, control, started, per_producer_period)
                });
            if let Err(e) = spawned {
                control.stop.store(true, Ordering::Relaxed);
                return Err(PoolBenchError::Spawn(e));
            }
        }
        let completed_before = pool.completed();
        let mut rss =
            Vec::with_capacity((window.as_millis() / interval.as_millis().max(1)) as usize + 2);
        let mut next = started;
        let result = loop {
            let now = Instant::now();
            let t = now.duration_since(started);
            match read_rss_bytes() {
                Ok(bytes) => rss.push((t.as_secs_f64(), bytes)),
                Err(e) => break Err(e),
            }
            if t >= window || control.refused.load(Ordering::Relaxed) {
                break Ok(());
            }
            if let Some(pb) = progress {
                pb.set_position(
                    elapsed_whole_secs(phase_started) + opts.throughput_secs.ceil() as u64,
                );
            }
            next += interval;
            let until = next.min(started + window);
            thread::sleep(until.saturating_duration_since(Instant::now()));
        };
        let completed = pool.completed() - completed_before;
        let elapsed = started.elapsed();
        control.stop.store(true, Ordering::Relaxed);
        result.map(|()| (rss, completed, elapsed))
    })?;
    pool.shutdown(DRAIN_DEADLINE);
    if control.refused.load(Ordering::Relaxed) {
        return Err(PoolBenchError::Refused);
    }

    let warmup_secs = (opts.overload_secs * WARMUP_FRACTION).min(MAX_WARMUP_SECS);
    let steady: Vec<(f64, f64)> = rss
        .iter()
        .filter(|(t, _)| *t >= warmup_secs)
        .map(|&(t, b)| (t, b as f64))
        .collect();
    Ok(Overload {
        slope: least_squares_slope(&steady),
        slope_samples: steady.len(),
        rss,
        warmup_secs,
        drain_per_sec,
        drain_bound_per_sec,
        offered_per_sec,
        accepted: control.accepted.load(Ordering::Relaxed),
        completed,
        behind: control.behind.load(Ordering::Relaxed),
        submit_max_ns: control.submit_max_ns.load(Ordering::Relaxed),
        elapsed_secs: elapsed.as_secs_f64(),
    })
}

/// Completions per second while `producers` threads keep the pool saturated for `window`.
fn measure_drain_rate(
    pool: &Pool,
    producers: usize,
    window: Duration,
) -> Result<f64, PoolBenchError> {
    let stop = AtomicBool::new(false);
    let refused = AtomicBool::new(false);
    thread::scope(|s| {
        for index in 0..producers {
            let (stop, refused) = (&stop, &refused);
            let spawned = thread::Builder::new()
                .name(format!("bench-calibrate-{index}"))
                .spawn_scoped(s, move || {
                    while !stop.load(Ordering::Relaxed) {
                        if pool.submit(overload_job).is_err() {
                            refused.store(true, Ordering::Relaxed);
                            return;
                        }
                    }
                });
            if let Err(e) = spawned {
                stop.store(true, Ordering::Relaxed);
                return Err(PoolBenchError::Spawn(e));
            }
        }
        // Let the queue fill before counting (bounded, in case the workers keep up after all).
        let filling = Instant::now();
        while pool.queued() < pool.capacity() / 2
            && !refused.load(Ordering::Relaxed)
            && filling.elapsed() < window
        {
            thread::sleep(Duration::from_millis(1));
        }
        let started = Instant::now();
        let before = pool.completed();
        thread::sleep(window);
        let done = pool.completed() - before;
        let elapsed = started.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        if refused.load(Ordering::Relaxed) {
            return Err(PoolBenchError::Refused);
        }
        Ok((done as f64 / elapsed).max(1.0))
    })
}

/// Submits one job per `period` on a fixed schedule from `started`; when `submit` blocks it falls
/// behind and catches up as fast as the pool lets it (open loop: the schedule does not wait).
fn open_loop_producer(pool: &Pool, control: &OverloadControl, started: Instant, period: Duration) {
    let mut sent: u64 = 0;
    let mut longest = 0u64;
    while !control.stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let due = (now.duration_since(started).as_secs_f64() / period.as_secs_f64()) as u64 + 1;
        if sent >= due {
            // Ahead of schedule (only when the pool keeps up): wait for the next due time.
            spin_or_sleep_until(started + period.mul_f64(sent as f64));
            continue;
        }
        // Submit everything due now, one job per call.
        while sent < due && !control.stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            if pool.submit(overload_job).is_err() {
                control.refused.store(true, Ordering::Relaxed);
                return;
            }
            longest = longest.max(t.elapsed().as_nanos() as u64);
            sent += 1;
            control.accepted.fetch_add(1, Ordering::Relaxed);
        }
    }
    let due = (started.elapsed().as_secs_f64() / period.as_secs_f64()) as u64;
    control
        .behind
        .fetch_add(due.saturating_sub(sent), Ordering::Relaxed);
    control.submit_max_ns.fetch_max(longest, Ordering::Relaxed);
}

fn spin_or_sleep_until(deadline: Instant) {
    let left = deadline.saturating_duration_since(Instant::now());
    if left > Duration::from_micros(200) {
        thread::sleep(left - Duration::from_micros(100));
    }
    while Instant::now() < deadline {
        std::hint::spin_loop();
    }
}

/// Resident set size of this process (`VmRSS` in `/proc/self/status`), bytes.
fn read_rss_bytes() -> Result<u64, PoolBenchError> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(PoolBenchError::Rss)?;
    parse_vm_rss(&status).ok_or_else(|| {
        PoolBenchError::Rss(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "no VmRSS line",
        ))
    })
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Slope of the least-squares line through `(t, y)` points; 0 with fewer than two distinct `t`.
fn least_squares_slope(points: &[(f64, f64)]) -> f64 {
    if points.len() < 2 {
        return 0.0;
    }
    let n = points.len() as f64;
    let mean_t = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let (mut cov, mut var) = (0.0, 0.0);
    for &(t, y) in points {
        cov += (t - mean_t) * (y - mean_y);
        var += (t - mean_t) * (t - mean_t);
    }
    if var == 0.0 { 0.0 } else { cov / var }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_of_a_line_is_its_gradient_and_of_a_flat_series_zero() {
        let line: Vec<(f64, f64)> = (0..10)
            .map(|i| (f64::from(i), 3.0 * f64::from(i) + 7.0))
            .collect();
        assert!((least_squares_slope(&line) - 3.0).abs() < 1e-9);
        let flat: Vec<(f64, f64)> = (0..10).map(|i| (f64::from(i), 5.0)).collect();
        assert_eq!(least_squares_slope(&flat), 0.0);
        assert_eq!(least_squares_slope(&[(1.0, 2.0)]), 0.0);
        assert_eq!(least_squares_slope(&[(1.0, 2.0), (1.0, 4.0)]), 0.0);
    }

    #[test]
    fn vm_rss_is_parsed_from_proc_status() {
        let status = "Name:\tx\nVmPeak:\t  9000 kB\nVmRSS:\t    1234 kB\nThreads:\t1\n";
        assert_eq!(parse_vm_rss(status), Some(1234 * 1024));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
        assert!(read_rss_bytes().expect("Linux /proc") > 0);
    }

    #[test]
    fn options_are_validated() {
        assert!(PoolBenchOptions::smoke().validate().is_ok());
        assert!(PoolBenchOptions::default().validate().is_ok());
        let bad = PoolBenchOptions {
            workers: 0,
            ..PoolBenchOptions::smoke()
        };
        assert!(matches!(
            run(&bad, None),
            Err(PoolBenchError::InvalidOptions(_))
        ));
        let bad = PoolBenchOptions {
            overload_factor: 0.5,
            ..PoolBenchOptions::smoke()
        };
        assert!(bad.validate().is_err());
        let bad = PoolBenchOptions {
            throughput_secs: f64::NAN,
            ..PoolBenchOptions::smoke()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn a_tiny_run_reports_every_json_key() {
        let opts = PoolBenchOptions {
            throughput_secs: 0.2,
            overload_secs: 0.5,
            sample_interval_ms: 20,
            ..PoolBenchOptions::smoke()
        };
        let report = run(&opts, None).expect("benchmark runs");
        assert!(report.jobs_total > 0 && report.jobs_per_sec > 0.0);
        assert!(report.peak_rss_bytes >= report.start_rss_bytes.min(report.end_rss_bytes));
        assert!(report.overload_achieved_per_sec <= report.overload_offered_per_sec * 1.5);
        let json = serde_json::to_value(&report).expect("serialisable");
        for key in [
            "jobs_per_sec",
            "peak_rss_bytes",
            "rss_slope_bytes_per_sec",
            "queue_capacity",
            "workers",
            "producers",
            "submit_p99_ns",
            "overload_offered_per_sec",
            "overload_achieved_per_sec",
        ] {
            assert!(json.get(key).is_some(), "missing {key}");
        }
        let text = report.to_string();
        assert!(
            text.contains("queue capacity 1024") && text.contains("no-op jobs/s"),
            "{text}"
        );
    }
}
