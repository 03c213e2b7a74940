//! `GET /api/audit`: the audit log, a page at a time, read beside the writer. What the records say is the
//! recorder's (`recorder.rs`); sealing and the chain are the store's (`store::audit`).

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::Response;
use hyper::StatusCode;

use super::extract::Reader;
use super::recorder::record_line;
use super::shared::Shared;
use crate::http::{error, json_text};
use crate::store::AuditQuery;

/// `GET /api/audit`.
pub(super) async fn list(
    _: Reader,
    State(shared): State<Arc<Shared>>,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(query)) = query else {
        return error(
            StatusCode::BAD_REQUEST,
            "query: project, tool, outcome (strings), since, until (Unix ms), after (seq), limit (1-1000)",
        );
    };
    let Some(reader) = shared.audit.clone() else {
        return error(StatusCode::NOT_FOUND, "this gateway keeps no audit log (it runs without a store)");
    };
    // The permit goes with the query: a caller that hangs up does not free its place before the read ends.
    let Ok(permit) = shared.audit_queries.clone().try_acquire_owned() else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "too many audit queries at once; try again");
    };
    let read = move || {
        let page = reader.query(&query);
        drop(permit);
        page
    };
    let page = match tokio::task::spawn_blocking(read).await {
        Ok(Ok(page)) => page,
        Ok(Err(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        Err(_) => return error(StatusCode::INTERNAL_SERVER_ERROR, "the audit query failed"),
    };
    let mut body = String::from(r#"{"records":["#);
    for (i, record) in page.records.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&record_line(record));
    }
    let _ = write!(body, r#"],"next":{}}}"#, page.next.map_or_else(|| "null".to_owned(), |n| n.to_string()));
    json_text(StatusCode::OK, body)
}
