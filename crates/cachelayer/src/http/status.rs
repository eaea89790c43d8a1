//! How a response was produced, as the `X-Cache` label and the `Cache-Status` field
//! (RFC 9211): [`CacheStatus`] renders both, for the HTTP layer and for any server that
//! answers from a [`Cache`](crate::Cache) itself.
//!
//! This module only renders: it must never decide how a response is produced, nor count it
//! (the layer records its metrics where it decides).

use std::fmt::Write as _;

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};

/// The `X-Cache` header: one label (`HIT`, `STALE`, `MISS`, `BYPASS`).
pub const X_CACHE: HeaderName = HeaderName::from_static("x-cache");
/// The `Cache-Status` header (RFC 9211): one entry per cache on the response's path.
pub const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// The name this cache gives itself in `Cache-Status`.
const CACHE_NAME: &str = "cachelayer";

/// Why the cache went forward to the origin (RFC 9211 `fwd`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Forward {
    /// Nothing was stored for the URL (`uri-miss`).
    UriMiss,
    /// The URL varies, and nothing was stored for this request's variant (`vary-miss`).
    VaryMiss,
    /// Nothing usable was stored, for a reason not told apart (`miss`).
    Miss,
    /// The request's own directives refused what was stored (`request`).
    Request,
    /// What was stored was stale (`stale`).
    Stale,
}

impl Forward {
    /// The `fwd` parameter's value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::UriMiss => "uri-miss",
            Self::VaryMiss => "vary-miss",
            Self::Miss => "miss",
            Self::Request => "request",
            Self::Stale => "stale",
        }
    }
}

impl std::fmt::Display for Forward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a response was produced, rendered as `X-Cache` and `Cache-Status`.
///
/// ```
/// use cachelayer::http::status::{CacheStatus, Forward};
///
/// let status = CacheStatus::Miss { fwd: Forward::UriMiss, fwd_status: None, stored: true, collapsed: false };
/// assert_eq!(status.x_cache(), "MISS");
/// assert_eq!(status.cache_status(), "cachelayer; fwd=uri-miss; stored");
///
/// let mut headers = http::HeaderMap::new();
/// CacheStatus::Hit { ttl: Some(30) }.write_to(&mut headers);
/// assert_eq!(headers["x-cache"], "HIT");
/// assert_eq!(headers["cache-status"], "cachelayer; hit; ttl=30");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CacheStatus {
    /// Served fresh from the cache (`HIT`).
    Hit {
        /// Seconds of freshness left (`ttl`), when told.
        ttl: Option<i64>,
    },
    /// Served stale from the cache (`STALE`).
    Stale {
        /// Seconds of freshness left, negative (`ttl`), when told.
        ttl: Option<i64>,
        /// Why the cache also went forward (a refresh), when told.
        fwd: Option<Forward>,
    },
    /// Answered by the origin (`MISS`).
    Miss {
        /// Why the cache went forward.
        fwd: Forward,
        /// The status the origin answered with, when it is not the response's own (a 304
        /// that refreshed a stored response) (`fwd-status`).
        fwd_status: Option<u16>,
        /// The response was stored (`stored`).
        stored: bool,
        /// The request waited on another one's origin call (`collapsed`).
        collapsed: bool,
    },
    /// The cache did not apply to the request (`BYPASS`).
    Bypass {
        /// Why, as a token (`detail`), when told.
        detail: Option<&'static str>,
    },
}

impl CacheStatus {
    /// A stale response the origin confirmed with a 304, stored again refreshed.
    pub const REVALIDATED: Self = Self::Miss {
        fwd: Forward::Stale,
        fwd_status: Some(304),
        stored: true,
        collapsed: false,
    };

    /// A response from the origin, `fwd` saying why; neither stored nor collapsed (yet).
    pub const fn forwarded(fwd: Forward) -> Self {
        Self::Miss {
            fwd,
            fwd_status: None,
            stored: false,
            collapsed: false,
        }
    }

    /// The same status, noting whether the response was written to the store.
    #[must_use]
    pub const fn with_stored(self, written: bool) -> Self {
        match self {
            Self::Miss {
                fwd,
                fwd_status,
                collapsed,
                ..
            } => Self::Miss {
                fwd,
                fwd_status,
                stored: written,
                collapsed,
            },
            other => other,
        }
    }

    /// The same status, noting that the response came from another request's origin call.
    #[must_use]
    pub const fn collapsed(self) -> Self {
        match self {
            Self::Miss {
                fwd,
                fwd_status,
                stored,
                ..
            } => Self::Miss {
                fwd,
                fwd_status,
                stored,
                collapsed: true,
            },
            other => other,
        }
    }

    /// The `X-Cache` label.
    pub const fn label(&self) -> &'static str {
        match self {
            Self::Hit { .. } => "HIT",
            Self::Stale { .. } => "STALE",
            Self::Miss { .. } => "MISS",
            Self::Bypass { .. } => "BYPASS",
        }
    }

    /// The `X-Cache` value.
    pub const fn x_cache(&self) -> HeaderValue {
        HeaderValue::from_static(self.label())
    }

    /// This cache's `Cache-Status` entry, e.g. `cachelayer; hit; ttl=30`.
    pub fn cache_status_text(&self) -> String {
        let mut text = String::from(CACHE_NAME);
        let mut param = |name: &str, value: Option<&dyn std::fmt::Display>| {
            let _ = match value {
                Some(value) => write!(text, "; {name}={value}"),
                None => write!(text, "; {name}"),
            };
        };
        match *self {
            Self::Hit { ttl } => {
                param("hit", None);
                if let Some(ttl) = ttl {
                    param("ttl", Some(&ttl));
                }
            }
            Self::Stale { ttl, fwd } => {
                param("hit", None);
                if let Some(fwd) = fwd {
                    param("fwd", Some(&fwd));
                }
                if let Some(ttl) = ttl {
                    param("ttl", Some(&ttl));
                }
            }
            Self::Miss {
                fwd,
                fwd_status,
                stored,
                collapsed,
            } => {
                param("fwd", Some(&fwd));
                if let Some(status) = fwd_status {
                    param("fwd-status", Some(&status));
                }
                if stored {
                    param("stored", None);
                }
                if collapsed {
                    param("collapsed", None);
                }
            }
            Self::Bypass { detail } => {
                param("fwd", Some(&"bypass"));
                if let Some(detail) = detail {
                    param("detail", Some(&detail));
                }
            }
        }
        text
    }

    /// The `Cache-Status` value of this cache's entry (an empty value if a `detail` is not a
    /// valid header value).
    pub fn cache_status(&self) -> HeaderValue {
        HeaderValue::from_str(&self.cache_status_text()).unwrap_or(HeaderValue::from_static(""))
    }

    /// Writes both headers: `X-Cache` replaces any other, this cache's `Cache-Status` entry
    /// is appended after those of caches closer to the origin (RFC 9211). An entry that is
    /// not a valid header value (a `detail` with control characters) is left out.
    pub fn write_to(&self, headers: &mut HeaderMap) {
        headers.insert(X_CACHE, self.x_cache());
        if let Ok(value) = HeaderValue::from_str(&self.cache_status_text()) {
            headers.append(CACHE_STATUS, value);
        }
    }
}

/// Adds the cache key (RFC 9211 `key`) to this cache's `Cache-Status` entry, the last one.
pub(crate) fn append_key(headers: &mut HeaderMap, key: &str) {
    append_param(headers, &["key=\"", key, "\""]);
}

/// Adds a parameter (the concatenation of `pieces`, already valid: `name=value`) to this
/// cache's `Cache-Status` entry, the last one.
pub(crate) fn append_param(headers: &mut HeaderMap, pieces: &[&str]) {
    if headers.get_all(CACHE_STATUS).iter().count() == 1 {
        // Ours is the only entry (every hit): replaced in place.
        if let Some(updated) = headers
            .get(CACHE_STATUS)
            .and_then(|ours| with_param(ours, pieces))
        {
            headers.insert(CACHE_STATUS, updated);
        }
        return;
    }
    let mut values: Vec<HeaderValue> = headers.get_all(CACHE_STATUS).iter().cloned().collect();
    // Ours is the last entry (caches closer to the origin list theirs first).
    let Some(ours) = values.pop() else {
        return;
    };
    values.push(with_param(&ours, pieces).unwrap_or(ours));
    headers.remove(CACHE_STATUS);
    for value in values {
        headers.append(CACHE_STATUS, value);
    }
}

/// A `Cache-Status` entry with the parameter made of `pieces` added.
fn with_param(entry: &HeaderValue, pieces: &[&str]) -> Option<HeaderValue> {
    let entry = entry.to_str().ok()?;
    let length: usize = pieces.iter().map(|piece| piece.len()).sum();
    let mut text = String::with_capacity(entry.len() + length + 2);
    text.push_str(entry);
    text.push_str("; ");
    for piece in pieces {
        text.push_str(piece);
    }
    HeaderValue::from_str(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered(status: CacheStatus) -> (&'static str, String) {
        (status.label(), status.cache_status_text())
    }

    /// Every rendering of the HTTP layer.
    #[test]
    fn renders_the_layers_statuses() {
        let cases = [
            (
                CacheStatus::Hit { ttl: Some(30) },
                "HIT",
                "cachelayer; hit; ttl=30",
            ),
            (
                CacheStatus::Stale {
                    ttl: Some(-5),
                    fwd: None,
                },
                "STALE",
                "cachelayer; hit; ttl=-5",
            ),
            (
                CacheStatus::forwarded(Forward::UriMiss),
                "MISS",
                "cachelayer; fwd=uri-miss",
            ),
            (
                CacheStatus::forwarded(Forward::UriMiss).with_stored(true),
                "MISS",
                "cachelayer; fwd=uri-miss; stored",
            ),
            (
                CacheStatus::forwarded(Forward::VaryMiss).collapsed(),
                "MISS",
                "cachelayer; fwd=vary-miss; collapsed",
            ),
            (
                CacheStatus::forwarded(Forward::Request).with_stored(true),
                "MISS",
                "cachelayer; fwd=request; stored",
            ),
            (
                CacheStatus::forwarded(Forward::Stale),
                "MISS",
                "cachelayer; fwd=stale",
            ),
            (
                CacheStatus::REVALIDATED,
                "MISS",
                "cachelayer; fwd=stale; fwd-status=304; stored",
            ),
            (
                CacheStatus::Bypass {
                    detail: Some("cookie"),
                },
                "BYPASS",
                "cachelayer; fwd=bypass; detail=cookie",
            ),
        ];
        for (status, label, text) in cases {
            assert_eq!(rendered(status), (label, text.to_owned()), "{status:?}");
        }
    }

    /// Every rendering of a server answering from a cache itself (and of a route around it).
    #[test]
    fn renders_a_servers_statuses() {
        let cases = [
            (CacheStatus::Hit { ttl: None }, "HIT", "cachelayer; hit"),
            (
                CacheStatus::Stale {
                    ttl: None,
                    fwd: Some(Forward::Stale),
                },
                "STALE",
                "cachelayer; hit; fwd=stale",
            ),
            (
                CacheStatus::forwarded(Forward::Miss).collapsed(),
                "MISS",
                "cachelayer; fwd=miss; collapsed",
            ),
            (
                CacheStatus::forwarded(Forward::Miss).with_stored(true),
                "MISS",
                "cachelayer; fwd=miss; stored",
            ),
            (
                CacheStatus::Bypass { detail: None },
                "BYPASS",
                "cachelayer; fwd=bypass",
            ),
            (
                CacheStatus::Bypass {
                    detail: Some("pending-invalidation"),
                },
                "BYPASS",
                "cachelayer; fwd=bypass; detail=pending-invalidation",
            ),
        ];
        for (status, label, text) in cases {
            assert_eq!(rendered(status), (label, text.to_owned()), "{status:?}");
        }
    }

    /// `X-Cache` replaces an upstream's label; `Cache-Status` goes after upstream entries.
    #[test]
    fn writes_both_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(X_CACHE, HeaderValue::from_static("HIT from upstream"));
        headers.append(CACHE_STATUS, HeaderValue::from_static("upstream; hit"));
        CacheStatus::forwarded(Forward::UriMiss)
            .with_stored(true)
            .write_to(&mut headers);
        assert_eq!(headers[X_CACHE], "MISS");
        let entries: Vec<_> = headers.get_all(CACHE_STATUS).iter().collect();
        assert_eq!(
            entries,
            ["upstream; hit", "cachelayer; fwd=uri-miss; stored"]
        );
        let status = CacheStatus::Hit { ttl: Some(1) };
        assert_eq!(status.x_cache(), "HIT");
        assert_eq!(status.cache_status(), "cachelayer; hit; ttl=1");
    }

    /// A detail that is not a valid header value leaves `Cache-Status` out, not the label.
    #[test]
    fn an_invalid_detail_is_left_out() {
        let mut headers = HeaderMap::new();
        CacheStatus::Bypass {
            detail: Some("bad\nvalue"),
        }
        .write_to(&mut headers);
        assert_eq!(headers[X_CACHE], "BYPASS");
        assert!(!headers.contains_key(CACHE_STATUS));
    }

    /// With no other cache's entry, ours gets the key in place.
    #[test]
    fn the_key_goes_on_a_lone_entry() {
        let mut headers = HeaderMap::new();
        CacheStatus::Hit { ttl: Some(3) }.write_to(&mut headers);
        append_key(&mut headers, "#abc");
        let entries: Vec<_> = headers.get_all(CACHE_STATUS).iter().collect();
        assert_eq!(entries, ["cachelayer; hit; ttl=3; key=\"#abc\""]);
    }

    /// The key goes on this cache's entry only, the last one.
    #[test]
    fn the_key_goes_on_the_last_entry() {
        let mut headers = HeaderMap::new();
        headers.append(CACHE_STATUS, HeaderValue::from_static("upstream; hit"));
        CacheStatus::Hit { ttl: Some(3) }.write_to(&mut headers);
        append_key(&mut headers, "shop.example:abc");
        let entries: Vec<_> = headers.get_all(CACHE_STATUS).iter().collect();
        assert_eq!(
            entries,
            [
                "upstream; hit",
                "cachelayer; hit; ttl=3; key=\"shop.example:abc\""
            ]
        );
    }
}
