//! `elastic-lb stats [--admin ADDR] [--watch]`: fetch `GET /api/stats` from a running
//! daemon (through [`super::http`]) and print it as an aligned table.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::net::SocketAddr;
use std::time::Duration;

use super::http::{fetch_stats, FetchError};
use crate::admin::StatsBody;
use crate::core::MachineState;
use crate::telemetry::Snapshot;

/// Refresh period of `--watch`.
const WATCH_PERIOD: Duration = Duration::from_secs(1);

/// `elastic-lb stats`: prints a table of machines and totals from a running daemon; with
/// `watch`, refreshes it every second (clearing a terminal screen) until Ctrl-C.
///
/// # Errors
///
/// [`FetchError`] when the daemon cannot be reached or does not answer with stats; its
/// message is one line.
pub async fn run(admin: SocketAddr, watch: bool) -> Result<(), FetchError> {
    let terminal = std::io::stdout().is_terminal();
    let mut ticks = tokio::time::interval(WATCH_PERIOD);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stats = fetch_stats(admin).await?;
        let mut text = String::new();
        if watch && terminal {
            // Cursor home + clear screen, then redraw.
            text.push_str("\x1b[H\x1b[2J");
        }
        text.push_str(&render_table(admin, &stats));
        let mut stdout = std::io::stdout().lock();
        // A closed stdout (e.g. `| head`) ends the command quietly.
        if stdout
            .write_all(text.as_bytes())
            .and_then(|()| stdout.flush())
            .is_err()
        {
            return Ok(());
        }
        drop(stdout);
        if !watch {
            return Ok(());
        }
        if !terminal {
            println!();
        }
        // The first tick fires at once; skip it so the next draw is a period away.
        ticks.reset();
        tokio::select! {
            _ = ticks.tick() => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

/// The table `elastic-lb stats` prints.
pub fn render_table(addr: SocketAddr, stats: &StatsBody) -> String {
    let s: &Snapshot = &stats.snapshot;
    let t = &s.totals;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "elastic-lb at {addr}   strategy {}   average load {:.2} % (scale up above {:.0} %)",
        s.strategy, s.avg_load, stats.autoscaler.scale_up_threshold
    );
    out.push('\n');

    let header = [
        "MACHINE", "SIZE", "STATE", "CAPACITY", "USED", "LOAD %", "CONNS", "QUEUED",
    ];
    // Text columns are left-aligned, numbers right-aligned.
    let numeric = [false, false, false, true, true, true, true, true];
    let mut rows: Vec<[String; 8]> = s
        .machines
        .iter()
        .map(|m| {
            [
                m.name.clone(),
                m.size.to_string(),
                m.state.to_string(),
                format!("{:.2}", m.capacity),
                format!("{:.2}", m.used),
                format!("{:.2}", m.load),
                m.connections.to_string(),
                m.queued.to_string(),
            ]
        })
        .collect();
    let active: Vec<_> = s
        .machines
        .iter()
        .filter(|m| m.state == MachineState::Active)
        .collect();
    rows.push([
        "average".to_string(),
        format!("{} active", active.len()),
        String::new(),
        format!("{:.2}", active.iter().map(|m| m.capacity).sum::<f64>()),
        format!("{:.2}", active.iter().map(|m| m.used).sum::<f64>()),
        format!("{:.2}", s.avg_load),
        active
            .iter()
            .map(|m| m.connections)
            .sum::<u64>()
            .to_string(),
        active.iter().map(|m| m.queued).sum::<u64>().to_string(),
    ]);
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[&str]| {
        let mut l = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i > 0 {
                l.push_str("  ");
            }
            let w = widths[i];
            if numeric[i] {
                let _ = write!(l, "{cell:>w$}");
            } else {
                let _ = write!(l, "{cell:<w$}");
            }
        }
        l.trim_end().to_string()
    };
    let _ = writeln!(out, "{}", line(&header));
    let (machines, average) = rows.split_at(rows.len() - 1);
    for row in machines {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        let _ = writeln!(out, "{}", line(&cells));
    }
    let total_width: usize = widths.iter().sum::<usize>() + 2 * (widths.len() - 1);
    let _ = writeln!(out, "{}", "-".repeat(total_width));
    let cells: Vec<&str> = average[0].iter().map(String::as_str).collect();
    let _ = writeln!(out, "{}", line(&cells));
    out.push('\n');

    let p = &s.pool;
    let q = &stats.pool_size;
    let _ = writeln!(
        out,
        "pool free    small {}/{}  medium {}/{}  large {}/{}  xlarge {}/{}",
        p.small, q.small, p.medium, q.medium, p.large, q.large, p.xlarge, q.xlarge
    );
    // Proxy mode: connections waiting in the admission queue (`backend.queue_timeout`).
    let queued = match s.queued_connections {
        0 => String::new(),
        n => format!("  {n} queued"),
    };
    let _ = writeln!(
        out,
        "connections  {} open  {} admitted  {} rejected{queued}",
        t.connections_open, t.connections_admitted, t.connections_rejected
    );
    let _ = writeln!(
        out,
        "requests     {} ok  {} failed  (weighted {:.2} ok, {:.2} failed)",
        t.requests_ok, t.requests_failed, t.weighted_ok, t.weighted_failed
    );
    let _ = writeln!(
        out,
        "scaling      {} up  {} down  ({} to {} machines)",
        t.scale_ups, t.scale_downs, stats.autoscaler.min_machines, stats.autoscaler.max_machines
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::AutoscalerLimits;
    use crate::core::Size;
    use crate::telemetry::{MachineSnapshot, PoolSnapshot, TotalsSnapshot};

    fn machine(
        name: &str,
        size: Size,
        cap: f64,
        used: f64,
        state: MachineState,
    ) -> MachineSnapshot {
        MachineSnapshot {
            name: name.to_string(),
            size,
            capacity: cap,
            used,
            load: 100.0 * used / cap,
            connections: 12,
            queued: 3,
            state,
        }
    }

    #[test]
    fn table_is_aligned_and_complete() {
        let stats = StatsBody {
            snapshot: Snapshot {
                strategy: "round-robin".to_string(),
                avg_load: 37.5,
                machines: vec![
                    machine("m1", Size::Medium, 100.0, 45.2, MachineState::Active),
                    machine("m12", Size::Xlarge, 400.0, 104.8, MachineState::Active),
                    machine("m3", Size::Small, 50.0, 4.0, MachineState::Draining),
                ],
                pool: PoolSnapshot {
                    small: 7,
                    medium: 7,
                    large: 4,
                    xlarge: 1,
                },
                totals: TotalsSnapshot {
                    connections_admitted: 40,
                    connections_rejected: 1,
                    connections_open: 36,
                    requests_ok: 1000,
                    requests_failed: 2,
                    weighted_ok: 1500.0,
                    weighted_failed: 7.5,
                    scale_ups: 3,
                    scale_downs: 1,
                },
                queued_connections: 0,
                events: Vec::new(),
            },
            autoscaler: AutoscalerLimits {
                scale_up_threshold: 50.0,
                scale_down_threshold: 20.0,
                min_machines: 1,
                max_machines: 16,
            },
            pool_size: PoolSnapshot {
                small: 8,
                medium: 8,
                large: 4,
                xlarge: 2,
            },
            load_model: None,
            reserved: None,
        };
        let addr: SocketAddr = "127.0.0.1:7071".parse().unwrap();
        let table = render_table(addr, &stats);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].contains("strategy round-robin"), "{table}");
        assert!(lines[0].contains("average load 37.50 %"), "{table}");
        let header = lines[2];
        assert!(header.starts_with("MACHINE  SIZE"), "{table}");
        // Numbers are right-aligned: every row ends its LOAD % column where the header does.
        let load_end = header.find("LOAD %").unwrap() + "LOAD %".len();
        for row in &lines[3..6] {
            let bytes = row.as_bytes();
            assert!(bytes[load_end - 1].is_ascii_digit(), "{table}");
            assert_eq!(bytes[load_end], b' ', "{table}");
        }
        assert!(lines[3].starts_with("m1 "), "{table}");
        assert!(lines[4].contains("104.80"), "{table}");
        assert!(lines[5].contains("draining"), "{table}");
        assert!(lines[7].starts_with("average"), "{table}");
        assert!(lines[7].contains("2 active"), "{table}");
        assert!(table.contains("pool free    small 7/8"), "{table}");
        assert!(table.contains("1000 ok  2 failed"), "{table}");
        let widths: Vec<usize> = lines[2..6].iter().map(|l| l.len()).collect();
        assert!(widths.iter().all(|&w| w == widths[0]), "{table}");
        assert!(
            table.contains("36 open  40 admitted  1 rejected\n"),
            "{table}"
        );
        // Connections waiting for a machine (proxy mode) are shown when there are any.
        let mut waiting = stats;
        waiting.snapshot.queued_connections = 5;
        let table = render_table(addr, &waiting);
        assert!(table.contains("1 rejected  5 queued\n"), "{table}");
    }
}
