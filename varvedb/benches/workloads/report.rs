//! Collects measurements and renders the table of `docs/performance.md`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

#[derive(Default)]
pub struct Report {
    /// (workload, contender) -> events/s of each sample.
    rates: BTreeMap<(&'static str, &'static str), Vec<f64>>,
    latency: BTreeMap<(&'static str, &'static str), (Duration, Duration)>,
    allocs: BTreeMap<(&'static str, &'static str), f64>,
    disk: BTreeMap<&'static str, f64>,
    rss: BTreeMap<&'static str, u64>,
    /// W7: stream length -> (baseline name, baseline fold, replay, snapshot load).
    aggregates: BTreeMap<u64, (&'static str, Duration, Duration, Duration)>,
    /// (W2c workload, contender) -> appends per durable commit.
    per_commit: BTreeMap<(&'static str, &'static str), f64>,
    /// The disk's physical sync rate (write + fdatasync per second).
    fsync: Option<f64>,
    /// W2x: commands the fifth thread executed, and for how long it ran.
    commands: (u64, Duration),
    /// W2x: the commits each sample's writers saw, by variant.
    commits: BTreeMap<&'static str, Vec<f64>>,
}

const WORKLOADS: [(&str, &str); 9] = [
    ("W1", "batch append (durable, 1,000 per txn)"),
    ("W2", "single append (durable, 1 thread)"),
    ("W2c", "single append (durable, 4 threads)"),
    ("W3", "random point read (validated)"),
    ("W4", "scan one stream id"),
    ("W4s", "W4 snapshot loop (`for` over a borrowed snapshot)"),
    ("W5", "scan the global log"),
    ("W5s", "W5 snapshot loop (`for` over a borrowed snapshot)"),
    ("W6", "fold every stream (1,000 aggregates)"),
];

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn human(rate: f64) -> String {
    if rate >= 1e6 {
        format!("{:.2} M/s", rate / 1e6)
    } else if rate >= 1e3 {
        format!("{:.1} k/s", rate / 1e3)
    } else {
        format!("{rate:.0} /s")
    }
}

fn micros(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

/// Anonymous resident memory of this process, in KiB (Linux; 0 elsewhere).
pub fn rss_anon_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("RssAnon:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

impl Report {
    pub fn sample(&mut self, w: &'static str, c: &'static str, events: u64, took: Duration) {
        self.rates
            .entry((w, c))
            .or_default()
            .push(events as f64 / took.as_secs_f64());
    }

    pub fn latency(&mut self, w: &'static str, c: &'static str, p50: Duration, p99: Duration) {
        self.latency.insert((w, c), (p50, p99));
    }

    pub fn allocs(&mut self, w: &'static str, c: &'static str, per_event: f64) {
        self.allocs.insert((w, c), per_event);
    }

    pub fn disk(&mut self, c: &'static str, bytes_per_event: f64) {
        self.disk.insert(c, bytes_per_event);
    }

    pub fn aggregate_load(
        &mut self,
        len: u64,
        base: &'static str,
        baseline: Duration,
        replay: Duration,
        snap: Duration,
    ) {
        self.aggregates.insert(len, (base, baseline, replay, snap));
    }

    pub fn commands(&mut self, n: u64, took: Duration) {
        self.commands.0 += n;
        self.commands.1 += took;
    }

    pub fn commits(&mut self, w: &'static str, n: u64) {
        self.commits.entry(w).or_default().push(n as f64);
    }

    pub fn rss(&mut self, c: &'static str, kib: u64) {
        self.rss.insert(c, kib);
    }

    pub fn appends_per_commit(&mut self, w: &'static str, c: &'static str, per_commit: f64) {
        self.per_commit.insert((w, c), per_commit);
    }

    pub fn fsync_rate(&mut self, rate: f64) {
        self.fsync = Some(rate);
    }

    /// The writer-scaling table: W2 and the W2c family, `ours` against
    /// `sqlite` (and `base`), with our appends per commit and the disk's
    /// physical sync rate.
    pub fn render_writers(
        &self,
        ours: &'static str,
        sqlite: &'static str,
        base: &'static str,
        w2c: &[(&'static str, u64)],
    ) -> String {
        let mut out = String::new();
        let rate = |w, c| self.rates.get(&(w, c)).map(|v| median(v));
        let shown = |r: Option<f64>| r.map_or("–".to_string(), human);
        let _ = writeln!(
            out,
            "| durable single appends, writers | {ours} | appends per commit | {sqlite} | {ours} / {sqlite} | {base} |"
        );
        let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|");
        let rows = std::iter::once(("W2", 1)).chain(w2c.iter().copied());
        let mut any = false;
        for (w, writers) in rows {
            let (a, q, b) = (rate(w, ours), rate(w, sqlite), rate(w, base));
            if a.is_none() && q.is_none() {
                continue;
            }
            any = true;
            let per_commit = match (w, self.per_commit.get(&(w, ours))) {
                ("W2", _) => "1".to_string(),
                (_, Some(x)) => format!("{x:.2}"),
                (_, None) => "–".to_string(),
            };
            let ratio = match (a, q) {
                (Some(a), Some(q)) => format!("**{:.2}×**", a / q),
                _ => "–".to_string(),
            };
            let _ = writeln!(
                out,
                "| {writers} ({w}) | {} | {per_commit} | {} | {ratio} | {} |",
                shown(a),
                shown(q),
                shown(b)
            );
        }
        if let Some(fsync) = self.fsync {
            let _ = writeln!(out);
            let _ = writeln!(
                out,
                "Physical sync rate of the temp dir's disk (8-byte write + `fdatasync`, one thread): {} ({:.0} µs per sync).",
                human(fsync),
                1e6 / fsync
            );
        }
        if any {
            out
        } else {
            String::new()
        }
    }

    /// The markdown table: medians, ratio to the baseline, latencies, allocations.
    pub fn render(&self, ours: &'static str, base: &'static str, scale: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "| workload | {ours} | {base} | ratio | {ours} p50 / p99 | {base} p50 / p99 | allocs/event ({ours} / {base}) |");
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|");
        for (w, what) in WORKLOADS {
            let a = self.rates.get(&(w, ours)).map(|v| median(v));
            let b = self.rates.get(&(w, base)).map(|v| median(v));
            let (Some(a), Some(b)) = (a, b) else { continue };
            let lat = |c| {
                self.latency
                    .get(&(w, c))
                    .map_or("".to_string(), |(p50, p99)| {
                        format!("{} / {}", micros(*p50), micros(*p99))
                    })
            };
            let al = |c| {
                self.allocs
                    .get(&(w, c))
                    .map_or("–".to_string(), |x| format!("{x:.3}"))
            };
            let _ = writeln!(
                out,
                "| {w} {what} | {} | {} | **{:.2}×** | {} | {} | {} / {} |",
                human(a),
                human(b),
                a / b,
                lat(ours),
                lat(base),
                al(ours),
                al(base)
            );
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "| {ours} scan | fold | snapshot `for` loop | fold / loop |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|");
        for (fold, looped, what) in [("W4", "W4s", "stream (W4)"), ("W5", "W5s", "global (W5)")] {
            let rate = |w| self.rates.get(&(w, ours)).map(|v| median(v));
            if let (Some(f), Some(l)) = (rate(fold), rate(looped)) {
                let _ = writeln!(
                    out,
                    "| {what} | {} | {} | **{:.2}×** |",
                    human(f),
                    human(l),
                    f / l
                );
            }
        }
        let _ = writeln!(out);
        let d = |c| self.disk.get(c).copied().unwrap_or(0.0);
        let r = |c| self.rss.get(c).copied().unwrap_or(0);
        let _ = writeln!(out, "| measure | {ours} | {base} |");
        let _ = writeln!(out, "|---|---:|---:|");
        let _ = writeln!(
            out,
            "| disk bytes per event after W1 | {:.1} | {:.1} |",
            d(ours),
            d(base)
        );
        let _ = writeln!(
            out,
            "| anonymous RSS growth during a full scan | {} KiB | {} KiB |",
            r(ours),
            r(base)
        );
        let _ = writeln!(out);
        if !self.aggregates.is_empty() {
            let _ = writeln!(out, "| W7 load one aggregate | {base} fold | {ours} replay | {ours} from a snapshot (every 1,000) |");
            let _ = writeln!(out, "|---|---:|---:|---:|");
            for (len, (_, baseline, replay, snap)) in &self.aggregates {
                let _ = writeln!(
                    out,
                    "| {len} events | {} | {} | {} |",
                    micros(*baseline),
                    micros(*replay),
                    micros(*snap)
                );
            }
            let _ = writeln!(out);
        }
        let rate = |w| self.rates.get(&(w, ours)).map(|v| median(v));
        if let (Some(alone), Some(with)) = (rate("W2x0"), rate("W2x")) {
            let (n, took) = self.commands;
            let _ = writeln!(
                out,
                "| W2x ({ours}): 4 writers' single durable appends | median | vs alone | samples (min – max) | commits per sample (median) |"
            );
            let _ = writeln!(out, "|---|---:|---:|---:|---:|");
            let spread = |w| {
                let v = self.rates.get(&(w, ours)).cloned().unwrap_or_default();
                let min = v.iter().copied().fold(f64::INFINITY, f64::min);
                let max = v.iter().copied().fold(0.0, f64::max);
                format!("{} ({} – {})", v.len(), human(min), human(max))
            };
            let row = |out: &mut String, w: &'static str, what: &str, r: f64| {
                let commits = self.commits.get(w).map_or(0.0, |v| median(v));
                let _ = writeln!(
                    out,
                    "| {what} | {} | **{:.2}×** | {} | {commits:.0} |",
                    human(r),
                    r / alone,
                    spread(w)
                );
            };
            row(&mut out, "W2x0", "alone (W2x0)", alone);
            row(
                &mut out,
                "W2x",
                &format!(
                    "a fifth thread executing commands on a 100,000-event aggregate, no snapshot (W2x; {} commands, {:.2} ms each)",
                    human(n as f64 / took.as_secs_f64()),
                    took.as_secs_f64() * 1e3 / n.max(1) as f64
                ),
                with,
            );
            for (w, what) in [
                (
                    "W2xp",
                    "a fifth thread loading that aggregate, then appending to it by hand (W2xp)",
                ),
                ("W2xl", "a fifth thread only loading that aggregate (W2xl)"),
                ("W2xs", "a fifth thread only spinning on the CPU (W2xs)"),
            ] {
                if let Some(r) = rate(w) {
                    row(&mut out, w, what, r);
                }
            }
            let _ = writeln!(out);
        }
        let _ = writeln!(out, "Sizes: `{scale}`.");
        out
    }
}
