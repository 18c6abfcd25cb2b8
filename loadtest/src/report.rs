//! What a person sees: a progress bar (or a line every 5 s) while the swarm
//! runs, a table at the end, and with `--report DIR` the JSON report, SVG
//! plots and an `index.html` that shows them.

use crate::stats::{Metric, Percentiles, Report, Sample, Stats};
use crate::{SwarmConfig, SwarmError};
use plotters::prelude::*;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Closes a second of the time series every second and shows it, until
/// `deadline`.
pub(crate) async fn live(config: Arc<SwarmConfig>, stats: Arc<Stats>, deadline: Instant) {
    let secs = config.duration.as_secs().max(1);
    let bar = if config.progress {
        let bar = indicatif::ProgressBar::new(secs);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30}] {pos}/{len}s {msg}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        Some(bar)
    } else {
        None
    };
    let mut last = stats.quic_totals();
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.tick().await;
    let mut n = 0u64;
    while Instant::now() < deadline {
        every.tick().await;
        n += 1;
        let now = stats.quic_totals();
        let sample = stats.close_second((now.0 - last.0, now.1 - last.1, now.2 - last.2));
        last = now;
        let line = live_line(&config, &stats, &sample);
        match &bar {
            Some(b) => {
                b.set_position(n.min(secs));
                b.set_message(line);
            }
            None if n.is_multiple_of(5) => eprintln!("[{n:>4} s] {line}"),
            None => {}
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
}

fn live_line(config: &SwarmConfig, stats: &Stats, s: &Sample) -> String {
    let p99 = |k: &str| {
        s.p99_ms
            .get(k)
            .map(|v| format!("{v:.0}"))
            .unwrap_or_else(|| "-".into())
    };
    format!(
        "bots {}/{}  ack p99 {} ms  say p99 {} ms  login p99 {} ms  {:.1} KB/s per QUIC bot  errors {}",
        s.connected,
        config.quic_bots + config.telnet_bots,
        p99("input_ack"),
        p99("say_heard"),
        p99("login"),
        s.quic_bytes_in_per_bot / 1000.0,
        stats.error_total()
    )
}

/// The final table, as printed on stdout.
pub fn table(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Swarm: {} QUIC + {} telnet bots, scenario {}, seed {}, {:.0} s; peak {} logged in",
        r.quic_bots, r.telnet_bots, r.scenario, r.seed, r.duration_s, r.peak_connected
    );
    let _ = writeln!(
        out,
        "\n{:<22} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "latency (ms)", "count", "p50", "p90", "p99", "p99.9", "max"
    );
    latency_rows(&mut out, &r.latency);
    if let Some(a) = &r.after_ramp {
        let _ = writeln!(
            out,
            "\nafter the ramp (from {:.0} s): {} errors and disconnects",
            a.from_s, a.errors
        );
        latency_rows(&mut out, &a.latency);
    }
    let _ = writeln!(
        out,
        "\nper QUIC bot: {:.1} KB/s in, {:.2} KB/s out",
        r.quic_bytes_in_per_bot / 1000.0,
        r.quic_bytes_out_per_bot / 1000.0
    );
    if !r.counts.is_empty() {
        let counts: Vec<String> = r.counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(out, "counts: {}", counts.join(", "));
    }
    if r.errors.is_empty() {
        let _ = writeln!(out, "errors and disconnects: none");
    } else {
        let _ = writeln!(out, "errors and disconnects: {}", r.total_errors());
        for (cause, n) in &r.errors {
            let _ = writeln!(out, "  {n:>6}  {cause}");
        }
    }
    let migrations = r.cluster.iter().filter(|e| e.kind == "migration").count();
    if !r.cluster.is_empty() {
        let _ = writeln!(out, "cluster: {migrations} cell migrations during the run");
    }
    for v in &r.violations {
        let _ = writeln!(out, "LIMIT BROKEN: {v}");
    }
    out
}

/// One row per latency measured, in [`Metric::ALL`] order.
fn latency_rows(out: &mut String, latency: &BTreeMap<String, Percentiles>) {
    for m in Metric::ALL {
        let Some(p) = latency.get(m.key()) else {
            continue;
        };
        let _ = writeln!(
            out,
            "{:<22} {:>9} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
            m.label(),
            p.count,
            p.p50_ms,
            p.p90_ms,
            p.p99_ms,
            p.p999_ms,
            p.max_ms
        );
    }
}

/// Draws one plot of a report into an SVG file.
type Plot = fn(&Path, &Report) -> Result<(), String>;

/// Writes `report.json`, the plots and `index.html` into `dir`.
pub fn write_dir(dir: &Path, r: &Report) -> Result<(), SwarmError> {
    let err = |reason: String| SwarmError::Report {
        path: dir.to_path_buf(),
        reason,
    };
    std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    let json = serde_json::to_vec_pretty(r).map_err(|e| err(e.to_string()))?;
    std::fs::write(dir.join("report.json"), json).map_err(|e| err(e.to_string()))?;
    let plots: [(&str, &str, Plot); 4] = [
        (
            "latency.svg",
            "Latency over time (p99 per second)",
            plot_latency,
        ),
        (
            "percentiles.svg",
            "Latency percentiles over the run",
            plot_percentiles,
        ),
        (
            "connections.svg",
            "Bots logged in, errors per second",
            plot_connections,
        ),
        ("bytes.svg", "Bytes per second per QUIC bot", plot_bytes),
    ];
    let mut html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Tessera swarm report</title>\
         <style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}\
         pre{{background:#f4f4f4;padding:1em;overflow:auto}}img{{max-width:100%}}</style></head><body>\
         <h1>Tessera swarm report</h1><p><code>{}</code></p><pre>{}</pre>",
        escape(&r.command),
        escape(&table(r))
    );
    for (file, title, plot) in plots {
        plot(&dir.join(file), r).map_err(|e| err(format!("{file}: {e}")))?;
        let _ = write!(html, "<h2>{title}</h2><img src=\"{file}\" alt=\"{title}\">");
    }
    if !r.cluster.is_empty() {
        html.push_str("<h2>Cluster events</h2><pre>");
        for e in &r.cluster {
            let _ = writeln!(
                html,
                "{:>7.1} s  {} {} {} -> {} (epoch {})",
                e.t,
                e.kind,
                e.cell.as_deref().unwrap_or("-"),
                e.from.as_deref().unwrap_or("-"),
                e.to.as_deref().unwrap_or("-"),
                e.epoch.map(|x| x.to_string()).unwrap_or_default()
            );
        }
        html.push_str("</pre>");
    }
    html.push_str("<p>Raw data: <a href=\"report.json\">report.json</a></p></body></html>\n");
    std::fs::write(dir.join("index.html"), html).map_err(|e| err(e.to_string()))
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

const SIZE: (u32, u32) = (900, 420);
const COLOURS: [RGBColor; 7] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
];

fn e<E: std::fmt::Display>(x: E) -> String {
    x.to_string()
}

fn x_max(r: &Report) -> f64 {
    r.series
        .last()
        .map(|s| s.t)
        .unwrap_or(r.duration_s)
        .max(1.0)
}

/// Vertical lines where cells migrated.
fn draw_migrations<DB: DrawingBackend>(
    chart: &mut ChartContext<
        '_,
        DB,
        Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
    >,
    r: &Report,
    y_top: f64,
) -> Result<(), String> {
    let lines: Vec<f64> = r
        .cluster
        .iter()
        .filter(|c| c.kind == "migration")
        .map(|c| c.t)
        .collect();
    if lines.is_empty() {
        return Ok(());
    }
    chart
        .draw_series(lines.iter().map(|t| {
            PathElement::new(
                vec![(*t, 0.0), (*t, y_top)],
                RGBColor(120, 120, 120).stroke_width(1),
            )
        }))
        .map_err(e)?
        .label("cell migration")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], RGBColor(120, 120, 120)));
    Ok(())
}

/// One line of a chart: its label, colour and points.
type Line<'a> = (&'a str, RGBColor, Vec<(f64, f64)>);

/// Labelled lines over the run's seconds, on a scale from 0 to a tenth
/// above the highest point; with `migrations`, the cells' migrations too.
fn plot_over_time(
    path: &Path,
    r: &Report,
    caption: &str,
    y_desc: Option<&str>,
    lines: Vec<Line>,
    migrations: bool,
) -> Result<(), String> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let y_top = lines
        .iter()
        .flat_map(|(_, _, points)| points.iter().map(|(_, y)| *y))
        .fold(1.0f64, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..x_max(r), 0.0..y_top)
        .map_err(e)?;
    let mut mesh = chart.configure_mesh();
    mesh.x_desc("seconds");
    if let Some(d) = y_desc {
        mesh.y_desc(d);
    }
    mesh.draw().map_err(e)?;
    for (label, colour, points) in lines {
        chart
            .draw_series(LineSeries::new(points, colour.stroke_width(2)))
            .map_err(e)?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], colour));
    }
    if migrations {
        draw_migrations(&mut chart, r, y_top)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(e)?;
    root.present().map_err(e)
}

fn plot_latency(path: &Path, r: &Report) -> Result<(), String> {
    let lines = Metric::ALL
        .into_iter()
        .filter(|m| r.series.iter().any(|s| s.p99_ms.contains_key(m.key())))
        .enumerate()
        .map(|(i, m)| {
            let points = r
                .series
                .iter()
                .filter_map(|s| s.p99_ms.get(m.key()).map(|v| (s.t, *v)))
                .collect();
            (m.label(), COLOURS[i % COLOURS.len()], points)
        })
        .collect();
    plot_over_time(
        path,
        r,
        "p99 latency per second (ms)",
        Some("ms"),
        lines,
        true,
    )
}

fn plot_percentiles(path: &Path, r: &Report) -> Result<(), String> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let names = ["p50", "p90", "p99", "p99.9", "max"];
    let y_top = r.latency.values().map(|p| p.max_ms).fold(1.0f64, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "latency percentiles over the run (ms, log scale)",
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..4.0, (0.1..y_top).log_scale())
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_labels(5)
        .x_label_formatter(&|x: &f64| {
            names
                .get(x.round() as usize)
                .copied()
                .unwrap_or("")
                .to_string()
        })
        .y_desc("ms")
        .draw()
        .map_err(e)?;
    for (i, m) in Metric::ALL.into_iter().enumerate() {
        let Some(p) = r.latency.get(m.key()) else {
            continue;
        };
        let colour = COLOURS[i % COLOURS.len()];
        let values = [p.p50_ms, p.p90_ms, p.p99_ms, p.p999_ms, p.max_ms];
        let points: Vec<(f64, f64)> = values
            .iter()
            .enumerate()
            .map(|(x, v)| (x as f64, v.max(0.1)))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))
            .map_err(e)?
            .label(m.label())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], colour));
        chart
            .draw_series(
                points
                    .into_iter()
                    .map(|pt| Circle::new(pt, 3, colour.filled())),
            )
            .map_err(e)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(e)?;
    root.present().map_err(e)
}

fn plot_connections(path: &Path, r: &Report) -> Result<(), String> {
    let connected = r.series.iter().map(|s| (s.t, s.connected as f64)).collect();
    let errors = r.series.iter().map(|s| (s.t, s.errors as f64)).collect();
    plot_over_time(
        path,
        r,
        "bots logged in, errors per second",
        None,
        vec![
            ("logged in", COLOURS[0], connected),
            ("errors", COLOURS[3], errors),
        ],
        true,
    )
}

fn plot_bytes(path: &Path, r: &Report) -> Result<(), String> {
    let kb = |pick: fn(&Sample) -> f64| r.series.iter().map(|s| (s.t, pick(s) / 1000.0)).collect();
    plot_over_time(
        path,
        r,
        "KB per second per QUIC bot",
        Some("KB/s"),
        vec![
            ("in", COLOURS[0], kb(|s| s.quic_bytes_in_per_bot)),
            ("out", COLOURS[1], kb(|s| s.quic_bytes_out_per_bot)),
        ],
        false,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{ClusterEvent, Percentiles};

    fn report() -> Report {
        let mut r = Report {
            command: "tessera bots --quic 2 <x>".into(),
            scenario: "wander".into(),
            quic_bots: 2,
            duration_s: 3.0,
            ..Report::default()
        };
        r.latency.insert(
            "input_ack".into(),
            Percentiles {
                count: 10,
                p50_ms: 40.0,
                p90_ms: 60.0,
                p99_ms: 80.0,
                p999_ms: 90.0,
                max_ms: 95.0,
                mean_ms: 45.0,
            },
        );
        for t in 1..=3 {
            let mut s = Sample {
                t: t as f64,
                connected: 2,
                quic_bytes_in_per_bot: 3000.0,
                ..Sample::default()
            };
            s.p99_ms.insert("input_ack".into(), 70.0 + t as f64);
            r.series.push(s);
        }
        r.cluster.push(ClusterEvent {
            t: 2.0,
            kind: "migration".into(),
            cell: Some("0,0".into()),
            from: Some("shard-1".into()),
            to: Some("shard-2".into()),
            epoch: Some(2),
        });
        r
    }

    #[test]
    fn a_report_directory_has_the_json_the_plots_and_a_page_that_shows_them() {
        let dir = tempfile::tempdir().unwrap();
        let r = report();
        write_dir(dir.path(), &r).unwrap();
        let back: Report =
            serde_json::from_slice(&std::fs::read(dir.path().join("report.json")).unwrap())
                .unwrap();
        assert_eq!(back, r);
        let html = std::fs::read_to_string(dir.path().join("index.html")).unwrap();
        assert!(html.contains("&lt;x&gt;"), "escaped command");
        for svg in [
            "latency.svg",
            "percentiles.svg",
            "connections.svg",
            "bytes.svg",
        ] {
            assert!(html.contains(svg));
            let text = std::fs::read_to_string(dir.path().join(svg)).unwrap();
            assert!(
                text.starts_with("<svg") && text.contains("polyline"),
                "{svg}"
            );
        }
        let table = table(&r);
        assert!(table.contains("input to ack") && table.contains("80.0"));
        assert!(table.contains("1 cell migrations"));
    }
}
