//! How the operator's commands print, shared by `pedestal fleet ...` and the base's own commands
//! (`pedestal ls`, `show`, `health`...): aligned tables, colours only on a terminal, sizes,
//! durations and latencies for people, and `--output json` for scripts.
//!
//! ```
//! use pedestal_fleet::render::{Cell, Style, Table, human_bytes};
//!
//! let mut table = Table::new(&["MODULE", "STATE", "HEAP"]);
//! table.row(vec![Cell::plain("greeter"), Cell::new("active", Style::Good), Cell::plain(human_bytes(1536))]);
//! assert_eq!(table.render(false), "MODULE   STATE   HEAP\ngreeter  active  1.5 KiB\n");
//! ```

use std::{io::IsTerminal, time::Duration};

/// How answers are printed (`--output`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned tables and one-line summaries.
    Table,
    /// The API's JSON.
    Json,
}

/// Colours only on a terminal, and never with `NO_COLOR` or `TERM=dumb`.
pub fn use_color() -> bool {
    std::io::stdout().is_terminal()
        && std::env::var_os("NO_COLOR").is_none()
        && std::env::var("TERM").map(|t| t != "dumb").unwrap_or(true)
}

/// Prints an answer the way `--output` asks.
#[derive(Debug, Clone, Copy)]
pub struct Printer {
    /// Table or JSON.
    pub output: Output,
    /// Whether tables are coloured.
    pub color: bool,
}

impl Printer {
    /// A printer for `output`, coloured when stdout is a terminal that takes colours.
    pub fn new(output: Output) -> Self {
        Self { output, color: use_color() }
    }

    /// Prints `answer` as JSON, or the text `table` renders.
    pub fn print<T: serde::Serialize>(&self, answer: &T, table: impl FnOnce() -> String) {
        match self.output {
            Output::Json => emit(&(serde_json::to_string_pretty(answer).expect("answers serialize") + "\n")),
            Output::Table => emit(&table()),
        }
    }
}

/// Writes `text` to stdout. A closed pipe (`| head`) is not an error: whoever reads has what
/// they wanted.
pub fn emit(text: &str) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush());
}

/// A terminal colour for a cell or a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// No colour.
    Plain,
    /// Green: running as wanted.
    Good,
    /// Yellow: in between, or worth a look.
    Warn,
    /// Red: needs an operator.
    Bad,
    /// Faint: headers and asides.
    Dim,
}

impl Style {
    /// The ANSI sequence that starts it (`None` for plain).
    pub fn ansi(self) -> Option<&'static str> {
        match self {
            Style::Plain => None,
            Style::Good => Some("\x1b[32m"),
            Style::Warn => Some("\x1b[33m"),
            Style::Bad => Some("\x1b[31m"),
            Style::Dim => Some("\x1b[2m"),
        }
    }

    /// `text` in this style (as is without colour, or when it is empty).
    pub fn paint(self, text: &str, color: bool) -> String {
        match (color, self.ansi()) {
            (true, Some(start)) if !text.is_empty() => format!("{start}{text}\x1b[0m"),
            _ => text.to_owned(),
        }
    }
}

/// The style of a state, of a base's instance or of a fleet's placement: what runs as wanted is
/// good, what needs an operator (`broken`, `pinned`, `quarantined`...) is bad.
pub fn state_style(state: &str) -> Style {
    match state {
        "active" | "placed" => Style::Good,
        "failed" | "broken" | "unschedulable" | "pinned" | "quarantined" => Style::Bad,
        "pending" | "starting" | "installing" | "installed" | "stopping" => Style::Warn,
        "inactive" | "stopped" => Style::Dim,
        _ => Style::Plain,
    }
}

/// The style of a health verdict.
pub fn health_style(health: &str) -> Style {
    match health {
        "healthy" | "ok" => Style::Good,
        "degraded" => Style::Warn,
        "unhealthy" => Style::Bad,
        _ => Style::Dim,
    }
}

/// One cell of a [`Table`].
#[derive(Debug, Clone)]
pub struct Cell {
    text: String,
    style: Style,
}

/// `text` with its control characters (an escape sequence a module logged, a newline in a
/// reason) written as `\u{1b}`-style escapes, so what a base reports cannot drive the
/// operator's terminal. The CLIs' own colours are added after.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    std::borrow::Cow::Owned(
        text.chars()
            .map(|c| if c.is_control() { c.escape_unicode().to_string() } else { c.to_string() })
            .collect(),
    )
}

impl Cell {
    /// A cell in `style` (its text made [`printable`]).
    pub fn new(text: impl Into<String>, style: Style) -> Self {
        let text = text.into();
        Self { text: printable(&text).into_owned(), style }
    }

    /// A cell without colour.
    pub fn plain(text: impl Into<String>) -> Self {
        Self::new(text, Style::Plain)
    }
}

#[derive(Debug)]
enum Line {
    Row(Vec<Cell>),
    Note(String, Style),
}

/// Columns aligned over every row; notes (a module's header line) span the table.
#[derive(Debug)]
pub struct Table {
    header: Vec<&'static str>,
    lines: Vec<Line>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(header: &[&'static str]) -> Self {
        Self { header: header.to_vec(), lines: Vec::new() }
    }

    /// Adds a row: one cell per column.
    pub fn row(&mut self, cells: Vec<Cell>) {
        debug_assert_eq!(cells.len(), self.header.len());
        self.lines.push(Line::Row(cells));
    }

    /// Adds a line that spans the table (not aligned, not counted in the widths).
    pub fn note(&mut self, text: String, style: Style) {
        self.lines.push(Line::Note(text, style));
    }

    /// The table as text, one line per row, trailing spaces trimmed; colour escapes (when
    /// `color`) never count as width.
    pub fn render(&self, color: bool) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for line in &self.lines {
            if let Line::Row(cells) = line {
                for (width, cell) in widths.iter_mut().zip(cells) {
                    *width = (*width).max(cell.text.chars().count());
                }
            }
        }
        let mut out = String::new();
        let header: Vec<Cell> = self.header.iter().map(|h| Cell::new(*h, Style::Dim)).collect();
        let emit = |cells: &[Cell], out: &mut String| {
            let mut line = String::new();
            for (i, (cell, width)) in cells.iter().zip(&widths).enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                line.push_str(&cell.style.paint(&cell.text, color));
                // Padding after the colour's end, so escapes never count as width.
                let pad = width - cell.text.chars().count();
                line.extend(std::iter::repeat_n(' ', pad));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        };
        emit(&header, &mut out);
        for line in &self.lines {
            match line {
                Line::Row(cells) => emit(cells, &mut out),
                Line::Note(text, style) => {
                    out.push_str(&style.paint(text, color));
                    out.push('\n');
                }
            }
        }
        out
    }
}

/// Bytes for people: `512 B`, `1.5 KiB`, `64.0 MiB`, `2.0 GiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Thousandths of a core, as Kubernetes writes them: `150m`.
pub fn millicores(millis: u64) -> String {
    format!("{millis}m")
}

/// A span for people, two units at most: `250ms`, `4.2s`, `3m 07s`, `5h 02m`, `3d 4h`.
pub fn human_duration(duration: Duration) -> String {
    let ms = duration.as_millis();
    let secs = duration.as_secs();
    match secs {
        0 => format!("{ms}ms"),
        1..60 => format!("{:.1}s", ms as f64 / 1e3),
        60..3_600 => format!("{}m {:02}s", secs / 60, secs % 60),
        3_600..86_400 => format!("{}h {:02}m", secs / 3_600, secs % 3_600 / 60),
        _ => format!("{}d {}h", secs / 86_400, secs % 86_400 / 3_600),
    }
}

/// A latency in microseconds for people: `512µs`, `1.5ms`, `2.25s`.
pub fn human_micros(us: u64) -> String {
    match us {
        0..1_000 => format!("{us}µs"),
        1_000..1_000_000 => format!("{:.1}ms", us as f64 / 1e3),
        _ => format!("{:.2}s", us as f64 / 1e6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_for_people() {
        let check = |bytes: u64, expected: &str| assert_eq!(human_bytes(bytes), expected, "{bytes}");
        check(0, "0 B");
        check(1023, "1023 B");
        check(1024, "1.0 KiB");
        check(1536, "1.5 KiB");
        check(64 << 20, "64.0 MiB");
        check((1 << 30) + (1 << 29), "1.5 GiB");
        check(5 << 40, "5.0 TiB");
        assert_eq!(millicores(1250), "1250m");
    }

    #[test]
    fn durations_for_people() {
        let check = |ms: u64, expected: &str| {
            assert_eq!(human_duration(Duration::from_millis(ms)), expected, "{ms} ms");
        };
        check(0, "0ms");
        check(999, "999ms");
        check(1_000, "1.0s");
        check(4_249, "4.2s");
        check(60_000, "1m 00s");
        check(187_000, "3m 07s");
        check(3_600_000, "1h 00m");
        check(5 * 3_600_000 + 2 * 60_000 + 59_000, "5h 02m");
        check(3 * 86_400_000 + 4 * 3_600_000, "3d 4h");
    }

    #[test]
    fn latencies_for_people() {
        let check = |us: u64, expected: &str| assert_eq!(human_micros(us), expected, "{us} µs");
        check(0, "0µs");
        check(512, "512µs");
        check(1_024, "1.0ms");
        check(1_536, "1.5ms");
        check(2_250_000, "2.25s");
    }

    #[test]
    fn colours_do_not_shift_columns() {
        let mut table = Table::new(&["A", "STATE"]);
        table.row(vec![Cell::plain("xx"), Cell::new("active", state_style("active"))]);
        table.row(vec![Cell::plain("y"), Cell::new("quarantined", state_style("quarantined"))]);
        let coloured = table.render(true);
        assert!(coloured.contains("\x1b[32mactive\x1b[0m"), "{coloured:?}");
        assert!(coloured.contains("\x1b[31mquarantined\x1b[0m"), "{coloured:?}");
        let stripped = ["\x1b[32m", "\x1b[31m", "\x1b[2m", "\x1b[0m"]
            .iter()
            .fold(coloured, |text, e| text.replace(e, ""));
        assert_eq!(stripped, table.render(false));
        assert_eq!(stripped, "A   STATE\nxx  active\ny   quarantined\n");
    }
}

#[cfg(test)]
mod printable_tests {
    use super::{Cell, printable};

    #[test]
    fn control_characters_never_reach_the_terminal() {
        assert_eq!(printable("plain text, µs"), "plain text, µs");
        assert_eq!(printable("a\u{1b}]0;owned\u{7}b\nc"), "a\\u{1b}]0;owned\\u{7}b\\u{a}c");
        assert!(!Cell::plain("x\u{1b}[2J").text.contains('\u{1b}'));
    }
}
