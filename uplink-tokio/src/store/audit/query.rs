//! Reading the log a page at a time: which records ([`AuditQuery`]) and one page of them ([`AuditPage`]).

use super::record::Sealed;

/// The most bytes of records in one page (beside [`AuditQuery::limit`]); a single larger record still
/// makes a page of its own.
pub const MAX_PAGE_BYTES: usize = 8 << 20;

/// Which records to read (`GET /api/audit`): every filter set must match.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditQuery {
    /// Only this project's.
    pub project: Option<String>,
    /// Only this tool's.
    pub tool: Option<String>,
    /// Only records that end a permission this way.
    pub outcome: Option<String>,
    /// From this time on (Unix milliseconds, inclusive).
    pub since: Option<u64>,
    /// Before this time (Unix milliseconds, exclusive).
    pub until: Option<u64>,
    /// After this place in the log (the previous page's `next`: a record's seq in a log with one chain, its
    /// place among every chain's records in one with several).
    pub after: Option<u64>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<u32>,
}

impl AuditQuery {
    /// The page size asked for, within its bounds.
    pub fn page_size(&self) -> u32 {
        self.limit.unwrap_or(100).clamp(1, 1000)
    }
}

/// One page of records.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditPage {
    /// The records, each with its seal.
    pub records: Vec<Sealed>,
    /// The `after` of the next page, when there may be more.
    pub next: Option<u64>,
}

impl AuditPage {
    /// One page of `records` (those matching a query, in order, each with its place in the log; no more than
    /// one past the page is read): at most `size` of them, and at most [`MAX_PAGE_BYTES`] of them (but always
    /// one), so that a page of large tool inputs stays a page; `next` is set when more follow. The first
    /// error ends it.
    pub fn gather<E>(records: impl IntoIterator<Item = Result<(u64, Sealed), E>>, size: usize) -> Result<AuditPage, E> {
        let (mut page, mut bytes, mut last) = (AuditPage::default(), 0usize, None);
        for record in records {
            let (place, record) = record?;
            if page.records.len() == size || (!page.records.is_empty() && bytes + record.text.len() > MAX_PAGE_BYTES) {
                page.next = last;
                break;
            }
            bytes += record.text.len();
            last = Some(place);
            page.records.push(record);
        }
        Ok(page)
    }
}
