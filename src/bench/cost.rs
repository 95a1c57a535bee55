//! What a row cost the machine, per unit of work (a raw message, an execution): the WAL the
//! server wrote and the CPU the machine spent. A rate moves with everything else a shared
//! machine is doing; these hardly do, so they say in every run how many raw messages' worth of
//! work one execution with its lineage is.

use serde::Serialize;
use sqlx::PgPool;

/// The WAL position and the busy CPU time of the machine and of this process at one moment.
#[derive(Debug, Clone, Copy)]
pub struct Mark {
    wal: i64,
    cpu: Option<f64>,
    own_cpu: Option<f64>,
}

/// A row's cost per unit (a raw message, an execution).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PerUnit {
    /// WAL bytes the server wrote.
    pub wal_bytes: f64,
    /// CPU time every core of this machine spent outside idle, in microseconds: the server's
    /// and lineq's together when the database runs here, as it does in the bench by default.
    /// `None` where `/proc/stat` cannot be read.
    pub cpu_us: Option<f64>,
    /// The part of `cpu_us` spent by this process (lineq's orchestrators, workers and
    /// submitter, or the clients of the raw and floor rows); the rest is the server's.
    pub process_cpu_us: Option<f64>,
}

impl PerUnit {
    /// The mean over several runs, each weighted by its units; a CPU figure only if every run
    /// has it.
    pub fn mean(runs: impl IntoIterator<Item = (PerUnit, usize)> + Clone) -> PerUnit {
        let units: usize = runs.clone().into_iter().map(|(_, n)| n).sum();
        let of = |f: fn(&PerUnit) -> Option<f64>| {
            let total = runs
                .clone()
                .into_iter()
                .map(|(c, n)| f(&c).map(|v| v * n as f64))
                .sum::<Option<f64>>()?;
            Some(total / units.max(1) as f64)
        };
        PerUnit {
            wal_bytes: of(|c| Some(c.wal_bytes)).unwrap_or_default(),
            cpu_us: of(|c| c.cpu_us),
            process_cpu_us: of(|c| c.process_cpu_us),
        }
    }
}

/// One run of a row: its rate and what each unit cost.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    /// Units (messages, executions) per second.
    pub per_second: f64,
    /// What each unit cost.
    pub cost: PerUnit,
}

impl Mark {
    /// Marks now.
    pub async fn now(pool: &PgPool) -> anyhow::Result<Self> {
        // The insert position, not the flushed one: a row's last commit may still be on its
        // way to the disk when the row ends, and it is the row's work all the same.
        let wal: i64 =
            sqlx::query_scalar("SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint")
                .fetch_one(pool)
                .await?;
        Ok(Self {
            wal,
            cpu: busy_cpu_seconds(),
            own_cpu: own_cpu_seconds(),
        })
    }

    /// The cost since this mark, per unit of `units`.
    pub async fn per_unit_since(self, pool: &PgPool, units: usize) -> anyhow::Result<PerUnit> {
        let end = Self::now(pool).await?;
        let units = units.max(1) as f64;
        let per_unit =
            |b: Option<f64>, a: Option<f64>| b.zip(a).map(|(b, a)| (b - a) * 1e6 / units);
        Ok(PerUnit {
            wal_bytes: (end.wal - self.wal) as f64 / units,
            cpu_us: per_unit(end.cpu, self.cpu),
            process_cpu_us: per_unit(end.own_cpu, self.own_cpu),
        })
    }
}

/// True when the server is on this machine: connected through a Unix socket (no server
/// address) or a loopback address.
pub async fn database_on_this_machine(pool: &PgPool) -> anyhow::Result<bool> {
    let addr: Option<String> = sqlx::query_scalar("SELECT host(inet_server_addr())")
        .fetch_one(pool)
        .await?;
    Ok(addr.is_none_or(|a| {
        a.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
    }))
}

/// Seconds every core of this machine has spent busy since boot (Linux), from the first line
/// of `/proc/stat`: user, nice, system, irq and softirq time. Idle, I/O wait and time stolen by
/// the hypervisor are not this machine's work; guest time is already counted in user.
fn busy_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    busy_from_stat(&stat)
}

fn busy_from_stat(stat: &str) -> Option<f64> {
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .strip_prefix("cpu ")?
        .split_whitespace()
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let [user, nice, system, _idle, _iowait, irq, softirq, ..] = fields[..] else {
        return None;
    };
    Some((user + nice + system + irq + softirq) as f64 / USER_HZ)
}

/// /proc counts CPU time in USER_HZ, which Linux fixes at 100 in every architecture's ABI.
const USER_HZ: f64 = 100.0;

/// Seconds this process has spent on a CPU (Linux): user and system time of all its threads,
/// from `/proc/self/stat`.
fn own_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    own_from_stat(&stat)
}

fn own_from_stat(stat: &str) -> Option<f64> {
    // The command name is in parentheses and may hold spaces; utime and stime are the 12th
    // and 13th fields after it.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_time_leaves_out_idle_iowait_and_steal() {
        let stat = "cpu  100 20 30 5000 40 1 2 700 0 0\ncpu0 50 10 15 2500 20 1 1 350 0 0\n";
        // user 100 + nice 20 + system 30 + irq 1 + softirq 2 = 153 ticks.
        assert_eq!(busy_from_stat(stat), Some(1.53));
    }

    #[test]
    fn the_mean_weighs_each_run_by_its_units() {
        let a = PerUnit {
            wal_bytes: 100.0,
            cpu_us: Some(10.0),
            process_cpu_us: Some(1.0),
        };
        let b = PerUnit {
            wal_bytes: 400.0,
            cpu_us: Some(40.0),
            process_cpu_us: None,
        };
        let m = PerUnit::mean([(a, 2), (b, 1)]);
        assert_eq!(m.wal_bytes, 200.0);
        assert_eq!(m.cpu_us, Some(20.0));
        // One run could not read its own CPU: no figure rather than a wrong one.
        assert_eq!(m.process_cpu_us, None);
    }

    #[test]
    fn own_time_is_user_plus_system_after_the_name() {
        let stat = "4242 (lineq (bench) x) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 50 0 0 20 0 9";
        assert_eq!(own_from_stat(stat), Some(3.0));
        assert_eq!(own_from_stat("4242 (lineq) S 1 2"), None);
    }

    #[test]
    fn an_unreadable_stat_gives_nothing() {
        assert_eq!(busy_from_stat(""), None);
        assert_eq!(busy_from_stat("intr 1 2 3\n"), None);
        assert_eq!(busy_from_stat("cpu  1 2 x 4 5 6 7\n"), None);
        assert_eq!(busy_from_stat("cpu  1 2 3\n"), None);
    }
}
