//! What the program's commands share: reading a duration, waiting for the signal to stop, and printing a
//! table.

use std::time::Duration;

/// A table for a terminal: a header, then a row per line, columns aligned to their widest cell (as a
/// terminal shows it: wide characters count twice), two spaces apart, no trailing blanks.
pub(super) fn table<R: IntoIterator<Item = String>>(header: &[&str], rows: impl IntoIterator<Item = R>) -> String {
    let mut table = comfy_table::Table::new();
    table.load_style(comfy_table::presets::NOTHING).set_content_arrangement(comfy_table::ContentArrangement::Disabled);
    table.set_header(header.to_vec());
    for row in rows {
        table.add_row(row.into_iter().collect::<Vec<String>>());
    }
    for column in table.column_iter_mut() {
        column.set_padding((0, 2));
    }
    let mut out = table.trim_fmt();
    out.push('\n');
    out
}

/// `500ms`, `10s`, `2m`: a duration as the flags take it.
pub(super) fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (write durations like 500ms, 10s, 2m)"))
}

/// Ctrl-C, or SIGTERM on Unix. The handlers are installed when this is called, not when the future is first
/// polled, so call it before announcing readiness: a signal right after the ready line is then a clean
/// shutdown, never the default "terminate".
pub(super) fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, String> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).map_err(|e| format!("cannot handle SIGTERM: {e}"))?;
        let mut int = signal(SignalKind::interrupt()).map_err(|e| format!("cannot handle SIGINT: {e}"))?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_table_aligns_its_columns_as_a_terminal_shows_them() {
        let rows = [
            ["1-0".to_owned(), "team-a/web".to_owned(), "Bash".to_owned()],
            ["12-3".into(), "日本語".into(), "Read".into()],
        ];
        let out = super::table(&["ID", "PROJECT", "TOOL"], rows);
        assert_eq!(out, "ID    PROJECT     TOOL\n1-0   team-a/web  Bash\n12-3  日本語      Read\n");
    }
}
