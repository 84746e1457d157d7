//! `pedestal top [--module NAME]`: a live view of every instance of a base, refreshed every
//! second from `GET /api/v1/samples` — requests/s, 5xx/s, p50/p99, heap and CPU, a sparkline
//! of the last minute's requests per row, and charts of the selected row. `q` (or Esc, Ctrl-C)
//! quits; ↑/↓ (or k/j) select. `--once` prints the latest second as a table, for scripts.
//!
//! A poller thread asks the base while the terminal thread draws, so a slow or vanished base
//! never freezes the keys: the view keeps its last numbers and says what went wrong.

use std::{
    collections::VecDeque,
    io::IsTerminal,
    process::ExitCode,
    sync::mpsc,
    thread,
    time::{Duration, Instant, SystemTime},
};

use anyhow::bail;
use pedestal_fleet::render::{self, Cell, Output, Table, human_bytes, human_micros, state_style};
use ratatui::{
    DefaultTerminal, Frame,
    crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers},
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Paragraph, Row, Sparkline, Table as TuiTable, TableState},
};
use serde_json::Value;

use super::{
    admin::{ApiArgs, ApiError, Client, encode},
    answers::{InstanceSamples, Sample, Samples},
};

#[derive(clap::Args)]
pub struct TopArgs {
    /// Only this module's instances.
    #[arg(long)]
    module: Option<String>,
    /// Print the latest second of every instance as a table and exit, instead of the live view.
    #[arg(long)]
    once: bool,
    #[command(flatten)]
    api: ApiArgs,
}

/// How often the base is asked (its samples are a second apart).
const REFRESH: Duration = Duration::from_secs(1);

/// Samples kept per instance: the base's five minutes.
const KEPT: usize = 300;

pub fn run(args: &TopArgs) -> anyhow::Result<ExitCode> {
    let client = args.api.client()?;
    let query = Query { module: args.module.clone() };
    // The first answer comes before the screen is taken: a wrong token or no base at all is an
    // error on the command line, not a screen that says so.
    let first: Value = client.get(&query.path(0))?;
    if args.once {
        let printer = args.api.printer();
        let samples: Samples = serde_json::from_value(first.clone())?;
        printer.print(&first, || render_once(samples, printer.color));
        return Ok(ExitCode::SUCCESS);
    }
    if args.api.output == Output::Json {
        bail!("the live view has no JSON; `pedestal top --once --output json` prints the samples");
    }
    if !std::io::stdout().is_terminal() {
        bail!("the live view needs a terminal; `pedestal top --once` prints one table");
    }
    let mut board = Board::default();
    board.merge(serde_json::from_value(first)?);
    let url = client.url().to_owned();
    let answers = poll(client, query, board.since_ms());
    let mut terminal = ratatui::try_init()?;
    let outcome = live(&mut terminal, &mut board, &answers, url);
    ratatui::restore();
    outcome?;
    Ok(ExitCode::SUCCESS)
}

/// What `GET /api/v1/samples` is asked.
#[derive(Clone)]
struct Query {
    module: Option<String>,
}

impl Query {
    fn path(&self, since_ms: u64) -> String {
        let mut path = format!("/api/v1/samples?since_ms={since_ms}");
        if let Some(module) = &self.module {
            path.push_str(&format!("&module={}", encode(module)));
        }
        path
    }
}

/// Asks the base every second on a thread of its own, handing each answer over; ends when the
/// view is gone.
fn poll(client: Client, query: Query, mut since_ms: u64) -> mpsc::Receiver<Result<Samples, ApiError>> {
    let (sender, answers) = mpsc::channel();
    thread::spawn(move || {
        loop {
            thread::sleep(REFRESH);
            let answer = client.get::<Samples>(&query.path(since_ms));
            if let Ok(samples) = &answer {
                since_ms = since_ms.max(Board::since_of(samples));
            }
            if sender.send(answer).is_err() {
                return;
            }
        }
    });
    answers
}

/// The terminal loop: apply what the poller brought, draw, wait a little for a key.
fn live(
    terminal: &mut DefaultTerminal,
    board: &mut Board,
    answers: &mpsc::Receiver<Result<Samples, ApiError>>,
    url: String,
) -> anyhow::Result<()> {
    let mut view = View { url, selected: TableState::default().with_selected(Some(0)), ..View::default() };
    view.updated = Some(SystemTime::now());
    loop {
        while let Ok(answer) = answers.try_recv() {
            match answer {
                Ok(samples) => {
                    board.merge(samples);
                    view.problem = None;
                    view.updated = Some(SystemTime::now());
                }
                Err(e) => view.problem = Some(format!("{e}; retrying every second")),
            }
        }
        let rows = board.instances.len();
        view.selected.select(Some(view.selected.selected().unwrap_or(0).min(rows.saturating_sub(1))));
        terminal.draw(|frame| draw(frame, board, &mut view))?;
        let deadline = Instant::now() + Duration::from_millis(200);
        while event::poll(deadline.saturating_duration_since(Instant::now()))? {
            let Event::Key(key) = event::read()? else { continue };
            if key.kind != KeyEventKind::Press {
                continue;
            }
            match key.code {
                KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => return Ok(()),
                KeyCode::Down | KeyCode::Char('j') => view.selected.select_next(),
                KeyCode::Up | KeyCode::Char('k') => view.selected.select_previous(),
                _ => {}
            }
        }
    }
}

/// What the screen shows besides the board.
#[derive(Default)]
struct View {
    url: String,
    selected: TableState,
    updated: Option<SystemTime>,
    /// Why the last poll failed, until one succeeds.
    problem: Option<String>,
}

/// Every live instance with its recent samples, oldest first, in name and version order.
#[derive(Debug, Default)]
struct Board {
    instances: Vec<Tracked>,
}

#[derive(Debug)]
struct Tracked {
    name: String,
    version: String,
    state: String,
    samples: VecDeque<Sample>,
}

impl Tracked {
    fn latest(&self) -> Option<&Sample> {
        self.samples.back()
    }

    /// The last `n` values of one measure, oldest first, as whole numbers for a sparkline.
    fn series(&self, n: usize, measure: impl Fn(&Sample) -> f64) -> Vec<u64> {
        let skip = self.samples.len().saturating_sub(n);
        self.samples.iter().skip(skip).map(|s| measure(s).max(0.0).round() as u64).collect()
    }
}

impl Board {
    /// Takes in an answer: its instances are the live ones (others are gone), and each keeps
    /// the samples it had plus the newer ones of the answer.
    fn merge(&mut self, answer: Samples) {
        let mut kept = Vec::with_capacity(answer.instances.len());
        for incoming in answer.instances {
            let InstanceSamples { name, version, state, samples } = incoming;
            let mut tracked = match self.instances.iter().position(|t| t.name == name && t.version == version)
            {
                Some(at) => self.instances.swap_remove(at),
                None => Tracked { name, version, state: String::new(), samples: VecDeque::new() },
            };
            tracked.state = state;
            let newest = tracked.latest().map_or(0, |s| s.at_ms);
            tracked.samples.extend(samples.into_iter().filter(|s| s.at_ms > newest));
            while tracked.samples.len() > KEPT {
                tracked.samples.pop_front();
            }
            kept.push(tracked);
        }
        kept.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
        self.instances = kept;
    }

    /// The `since_ms` that asks for what is new: a little before the newest sample seen, as
    /// instances are sampled one after another (merging drops what it already has).
    fn since_ms(&self) -> u64 {
        self.instances
            .iter()
            .filter_map(Tracked::latest)
            .map(|s| s.at_ms)
            .max()
            .unwrap_or(0)
            .saturating_sub(2_000)
    }

    /// [`Board::since_ms`] of an answer alone.
    fn since_of(answer: &Samples) -> u64 {
        let newest = answer.instances.iter().flat_map(|i| i.samples.last()).map(|s| s.at_ms).max();
        newest.unwrap_or(0).saturating_sub(2_000)
    }

    /// All instances' requests per second in their latest sample.
    fn total_requests_per_s(&self) -> f64 {
        self.instances.iter().filter_map(Tracked::latest).map(|s| s.requests_per_s).sum()
    }
}

/// The requests per second of a row, as one line of block characters (one per second).
fn sparkline(values: &[u64]) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let max = values.iter().copied().max().unwrap_or(0);
    values
        .iter()
        .map(|&v| match (v, max) {
            (0, _) => ' ',
            (_, 0) => BARS[0],
            _ => BARS[((v * 7).div_ceil(max) as usize).min(7)],
        })
        .collect()
}

/// A rate for people: `0`, `0.5`, `12.0`, `1234`.
fn rate(per_s: f64) -> String {
    if per_s == 0.0 {
        "0".to_owned()
    } else if per_s < 100.0 {
        format!("{per_s:.1}")
    } else {
        format!("{per_s:.0}")
    }
}

/// The cells of a row: the latest sample of one instance.
fn cells(tracked: &Tracked) -> [String; 9] {
    let latest = tracked.latest().copied().unwrap_or_default();
    let micros = |us: Option<u64>| us.map_or("-".to_owned(), human_micros);
    [
        tracked.name.clone(),
        tracked.version.clone(),
        tracked.state.clone(),
        rate(latest.requests_per_s),
        rate(latest.server_errors_per_s),
        micros(latest.p50_us),
        micros(latest.p99_us),
        latest.heap_bytes.map_or("-".to_owned(), human_bytes),
        format!("{:.1}%", latest.cpu_percent),
    ]
}

const HEADER: [&str; 10] =
    ["MODULE", "VERSION", "STATE", "REQ/S", "5XX/S", "P50", "P99", "HEAP", "CPU", "REQ/S, LAST MINUTE"];

fn tui_color(style: render::Style) -> Style {
    match style {
        render::Style::Plain => Style::default(),
        render::Style::Good => Style::default().fg(Color::Green),
        render::Style::Warn => Style::default().fg(Color::Yellow),
        render::Style::Bad => Style::default().fg(Color::Red).add_modifier(Modifier::BOLD),
        render::Style::Dim => Style::default().add_modifier(Modifier::DIM),
    }
}

fn draw(frame: &mut Frame, board: &Board, view: &mut View) {
    let [title, table_area, charts, status] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(5),
        Constraint::Length(12),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    let updated = view.updated.map_or("never".to_owned(), |at| {
        let text = humantime::format_rfc3339_seconds(at).to_string();
        text.get(11..19).unwrap_or(&text).to_owned()
    });
    frame.render_widget(
        Paragraph::new(Line::from(vec![
            Span::styled("pedestal top", Style::default().add_modifier(Modifier::BOLD)),
            Span::raw(format!(
                "  {}  {} instances  {} req/s  updated {updated} UTC",
                view.url,
                board.instances.len(),
                rate(board.total_requests_per_s())
            )),
        ])),
        title,
    );

    let width = usize::from(table_area.width.saturating_sub(100).clamp(10, 60));
    let rows: Vec<Row> = board
        .instances
        .iter()
        .map(|tracked| {
            let [name, version, state, rps, errors, p50, p99, heap, cpu] = cells(tracked);
            let latest = tracked.latest().copied().unwrap_or_default();
            let state_style = tui_color(state_style(&state));
            let error_style = if latest.server_errors_per_s > 0.0 {
                tui_color(render::Style::Bad)
            } else {
                Style::default()
            };
            Row::new(vec![
                ratatui::text::Text::raw(name),
                ratatui::text::Text::raw(version),
                ratatui::text::Text::styled(state, state_style),
                ratatui::text::Text::raw(rps),
                ratatui::text::Text::styled(errors, error_style),
                ratatui::text::Text::raw(p50),
                ratatui::text::Text::raw(p99),
                ratatui::text::Text::raw(heap),
                ratatui::text::Text::raw(cpu),
                ratatui::text::Text::styled(
                    sparkline(&tracked.series(width, |s| s.requests_per_s)),
                    Style::default().fg(Color::Cyan),
                ),
            ])
        })
        .collect();
    let widths = [
        Constraint::Min(14),
        Constraint::Length(9),
        Constraint::Length(11),
        Constraint::Length(7),
        Constraint::Length(7),
        Constraint::Length(9),
        Constraint::Length(9),
        Constraint::Length(10),
        Constraint::Length(7),
        Constraint::Length(width as u16),
    ];
    let table = TuiTable::new(rows, widths)
        .column_spacing(2)
        .header(Row::new(HEADER).style(Style::default().add_modifier(Modifier::DIM | Modifier::BOLD)))
        .block(Block::default().borders(Borders::TOP | Borders::BOTTOM))
        .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED));
    frame.render_stateful_widget(table, table_area, &mut view.selected);

    match view.selected.selected().and_then(|at| board.instances.get(at)) {
        Some(tracked) => draw_charts(frame, charts, tracked),
        None => frame.render_widget(
            Paragraph::new(if board.instances.is_empty() {
                "no live instance: install one with `pedestal install FILE.so`"
            } else {
                ""
            }),
            charts,
        ),
    }

    let line = match &view.problem {
        Some(problem) => Line::styled(problem.clone(), tui_color(render::Style::Bad)),
        None => Line::styled(
            "q quits  ↑/↓ select  (one sample a second, last 5 minutes)",
            Style::default().add_modifier(Modifier::DIM),
        ),
    };
    frame.render_widget(Paragraph::new(line), status);
}

/// The selected instance's last minutes: requests/s, p99, heap and CPU.
fn draw_charts(frame: &mut Frame, area: Rect, tracked: &Tracked) {
    let rows = Layout::vertical([Constraint::Ratio(1, 2), Constraint::Ratio(1, 2)]).split(area);
    let [requests, latency] =
        Layout::horizontal([Constraint::Ratio(1, 2), Constraint::Ratio(1, 2)]).areas(rows[0]);
    let [heap, cpu] = Layout::horizontal([Constraint::Ratio(1, 2), Constraint::Ratio(1, 2)]).areas(rows[1]);
    let latest = tracked.latest().copied().unwrap_or_default();
    let id = format!("{}@{}", tracked.name, tracked.version);
    let charts: [(Rect, String, Vec<u64>, Color); 4] = [
        (
            requests,
            format!(
                " {id} requests/s: {} ({} 5xx/s) ",
                rate(latest.requests_per_s),
                rate(latest.server_errors_per_s)
            ),
            tracked.series(usize::from(requests.width.saturating_sub(2)), |s| s.requests_per_s),
            Color::Cyan,
        ),
        (
            latency,
            format!(" p99: {} ", latest.p99_us.map_or("-".to_owned(), human_micros)),
            tracked.series(usize::from(latency.width.saturating_sub(2)), |s| s.p99_us.unwrap_or(0) as f64),
            Color::Magenta,
        ),
        (
            heap,
            format!(" heap: {} ", latest.heap_bytes.map_or("-".to_owned(), human_bytes)),
            tracked.series(usize::from(heap.width.saturating_sub(2)), |s| s.heap_bytes.unwrap_or(0) as f64),
            Color::Green,
        ),
        (
            cpu,
            format!(" cpu: {:.1}% of a core ", latest.cpu_percent),
            tracked.series(usize::from(cpu.width.saturating_sub(2)), |s| s.cpu_percent * 10.0),
            Color::Yellow,
        ),
    ];
    for (area, title, data, color) in charts {
        frame.render_widget(
            Sparkline::default()
                .block(Block::default().borders(Borders::ALL).title(title))
                .data(&data)
                .style(Style::default().fg(color)),
            area,
        );
    }
}

/// `top --once`: the latest second of every instance.
fn render_once(samples: Samples, color: bool) -> String {
    let mut board = Board::default();
    board.merge(samples);
    if board.instances.is_empty() {
        return "no live instance: install one with `pedestal install FILE.so`\n".to_owned();
    }
    let mut table = Table::new(&HEADER[..9]);
    for tracked in &board.instances {
        let row: Vec<Cell> = cells(tracked)
            .into_iter()
            .enumerate()
            .map(
                |(i, text)| {
                    if i == 2 { Cell::new(text.clone(), state_style(&text)) } else { Cell::plain(text) }
                },
            )
            .collect();
        table.row(row);
    }
    table.render(color)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_ms: u64, requests_per_s: f64) -> Sample {
        Sample { at_ms, requests_per_s, heap_bytes: Some(2048), p99_us: Some(512), ..Sample::default() }
    }

    fn answer(instances: &[(&str, &str, &[Sample])]) -> Samples {
        Samples {
            interval_ms: 1000,
            instances: instances
                .iter()
                .map(|(name, version, samples)| InstanceSamples {
                    name: (*name).into(),
                    version: (*version).into(),
                    state: "active".into(),
                    samples: samples.to_vec(),
                })
                .collect(),
        }
    }

    #[test]
    fn merging_keeps_history_drops_duplicates_and_gone_instances() {
        let mut board = Board::default();
        board
            .merge(answer(&[("b", "1.0.0", &[sample(1_000, 1.0), sample(2_000, 2.0)]), ("a", "1.0.0", &[])]));
        assert_eq!(board.instances.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(board.since_ms(), 0);
        // An overlapping answer: the sample at 2 000 is not counted twice.
        board.merge(answer(&[("b", "1.0.0", &[sample(2_000, 2.0), sample(3_000, 3.0)])]));
        assert_eq!(board.instances.len(), 1, "a is gone");
        assert_eq!(board.instances[0].series(10, |s| s.requests_per_s), [1, 2, 3]);
        assert_eq!(board.instances[0].series(2, |s| s.requests_per_s), [2, 3]);
        assert_eq!(board.since_ms(), 1_000);
        assert_eq!(board.total_requests_per_s(), 3.0);
    }

    #[test]
    fn a_board_keeps_five_minutes() {
        let mut board = Board::default();
        let many: Vec<Sample> = (1..=400).map(|i| sample(i * 1_000, 1.0)).collect();
        board.merge(answer(&[("a", "1.0.0", &many)]));
        assert_eq!(board.instances[0].samples.len(), KEPT);
        assert_eq!(board.instances[0].samples.front().unwrap().at_ms, 101_000);
    }

    #[test]
    fn sparklines_scale_to_their_peak() {
        assert_eq!(sparkline(&[0, 1, 2, 4, 8]), " ▂▃▅█");
        assert_eq!(sparkline(&[3, 3]), "██");
        assert_eq!(sparkline(&[]), "");
    }

    #[test]
    fn once_is_a_table_of_the_latest_second() {
        let samples = answer(&[("fx-good", "0.1.0", &[sample(1_000, 0.0), sample(2_000, 42.5)])]);
        assert_eq!(
            render_once(samples, false),
            "\
MODULE   VERSION  STATE   REQ/S  5XX/S  P50  P99    HEAP     CPU
fx-good  0.1.0    active  42.5   0      -    512µs  2.0 KiB  0.0%
"
        );
    }
}
