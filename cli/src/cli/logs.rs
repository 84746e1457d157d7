//! `pedestal logs MODULE [--tail N] [--level L] [-f]`: a module's recent log lines, or with
//! `-f` the server-sent event stream of its new ones, printed line by line until Ctrl-C (or
//! until the base ends the stream). `--output json` prints the API's answer, or with `-f` each
//! event's data: one JSON object per line.

use std::{
    io::{BufRead, Write as _},
    process::ExitCode,
};

use anyhow::Context;
use pedestal_fleet::render::Output;
use serde_json::Value;

use super::{
    admin::{ApiArgs, encode},
    answers::LogLine,
    views::render_log_line,
};

#[derive(clap::Args)]
pub struct LogsArgs {
    /// The module's name.
    module: String,
    /// How many recent lines (the base keeps up to 1000; default 100).
    #[arg(long, value_name = "N")]
    tail: Option<usize>,
    /// The least severe level shown: `error`, `warn`, `info`, `debug` or `trace`.
    #[arg(long)]
    level: Option<String>,
    /// Keep printing new lines as the module writes them.
    #[arg(long, short)]
    follow: bool,
    #[command(flatten)]
    api: ApiArgs,
}

pub fn run(args: &LogsArgs) -> anyhow::Result<ExitCode> {
    let client = args.api.client()?;
    let mut query = Vec::new();
    if let Some(tail) = args.tail {
        query.push(format!("tail={tail}"));
    }
    if let Some(level) = &args.level {
        query.push(format!("level={}", encode(level)));
    }
    if args.follow {
        query.push("follow=true".to_owned());
    }
    let query = if query.is_empty() { String::new() } else { format!("?{}", query.join("&")) };
    let path = format!("/api/v1/modules/{}/logs{query}", encode(&args.module));
    let printer = args.api.printer();
    if !args.follow {
        let answer: Value = client.get(&path)?;
        printer.print(&answer, || {
            let lines: Vec<LogLine> = serde_json::from_value(answer["lines"].clone()).unwrap_or_default();
            lines.iter().map(|line| render_log_line(line, printer.color) + "\n").collect()
        });
        return Ok(ExitCode::SUCCESS);
    }
    let stream = client.stream(&path)?;
    let mut stdout = std::io::stdout().lock();
    for data in events(stream) {
        let data = data.context("the log stream broke off")?;
        let text = match printer.output {
            Output::Json => data,
            Output::Table => match serde_json::from_str::<LogLine>(&data) {
                Ok(line) => render_log_line(&line, printer.color),
                Err(_) => data,
            },
        };
        // A closed pipe (`| head`) ends the command quietly.
        if writeln!(stdout, "{text}").and_then(|()| stdout.flush()).is_err() {
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The data of each `log` event of a server-sent event stream, as it arrives: comments (the
/// base's keep-alives) and other events are skipped, a multi-line data field is joined.
fn events(stream: impl BufRead) -> impl Iterator<Item = std::io::Result<String>> {
    let mut lines = stream.lines();
    std::iter::from_fn(move || {
        let mut event = String::from("message");
        let mut data: Option<String> = None;
        loop {
            let line = match lines.next()? {
                Ok(line) => line,
                Err(e) => return Some(Err(e)),
            };
            if line.is_empty() {
                // The end of one event.
                match data.take() {
                    Some(data) if event == "log" => return Some(Ok(data)),
                    _ => event = String::from("message"),
                }
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((&line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => event = value.to_owned(),
                "data" => match &mut data {
                    Some(data) => {
                        data.push('\n');
                        data.push_str(value);
                    }
                    None => data = Some(value.to_owned()),
                },
                _ => {}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::events;

    #[test]
    fn only_the_data_of_log_events() {
        let stream = "\
: keep-alive

event: log
data: {\"message\":\"one\"}

event: other
data: skipped

event: log
data: first half
data: second half

";
        let data: Vec<String> = events(stream.as_bytes()).map(Result::unwrap).collect();
        assert_eq!(data, ["{\"message\":\"one\"}", "first half\nsecond half"]);
    }
}
