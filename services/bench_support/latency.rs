//! The latency table the front services' benches print (auth, chat, asset),
//! shared as a source file: each bench includes it with
//! `#[path = "../../bench_support/latency.rs"] mod latency;`.

use hdrhistogram::Histogram;
use std::time::Duration;

/// A histogram of microseconds, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new(3).expect("histogram")
}

pub fn micros(d: Duration) -> u64 {
    d.as_micros() as u64
}

/// Rows of p50, p90, p99 and max in milliseconds, labels `width` wide, and
/// an optional last column (`extra`, 10 wide).
pub struct Table {
    width: usize,
    extra: Option<&'static str>,
}

impl Table {
    /// Prints the header line and returns the table.
    pub fn start(width: usize, extra: Option<&'static str>) -> Table {
        let t = Table { width, extra };
        t.print(
            "",
            ["p50", "p90", "p99", "max"].map(String::from),
            extra.map(String::from),
        );
        t
    }

    /// One row of a histogram of microseconds.
    pub fn row(&self, label: &str, h: &Histogram<u64>) {
        self.row_with(label, h, None);
    }

    /// One row, with the last column's value.
    pub fn row_with(&self, label: &str, h: &Histogram<u64>, extra: Option<String>) {
        let ms = |us: u64| format!("{:.2} ms", us as f64 / 1000.0);
        let cells = [
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.9)),
            ms(h.value_at_quantile(0.99)),
            ms(h.max()),
        ];
        let extra = self.extra.map(|_| extra.unwrap_or_default());
        self.print(label, cells, extra);
    }

    fn print(&self, label: &str, cells: [String; 4], extra: Option<String>) {
        let width = self.width;
        let [a, b, c, d] = cells;
        match extra {
            Some(e) => println!("{label:<width$} {a:>9} {b:>9} {c:>9} {d:>9} {e:>10}"),
            None => println!("{label:<width$} {a:>9} {b:>9} {c:>9} {d:>9}"),
        }
    }
}
