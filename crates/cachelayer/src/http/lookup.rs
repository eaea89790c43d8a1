//! Judging what was found for a request (RFC 9111 section 4 and the request's directives):
//! a pure function from what the store held to the [`Phase`] the request goes on in.
//!
//! This module must never read or write the store, nor call the origin: whatever it needs
//! (the stored entry, what its tags say, the time) is handed in, so it is tested without one.

use std::time::{Duration, SystemTime};

use http::HeaderMap;

use super::key::request_values;
use super::policy::{RequestDirectives, Usable, usable};
use super::status::Forward;
use super::stored::StoredResponse;
use super::tags::TagCheck;
use crate::stampede::within;

/// What the store held for a request, looked up under the URL's key and, when the URL
/// varies, under the request's variant's key.
// A stored response is the common case (every hit): boxing it would allocate per hit.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(super) enum Found {
    /// No response (`varies`: the URL varies, and this variant is not stored).
    Nothing { varies: bool },
    /// The URL's responses were recently found not storable.
    Pass,
    /// A stored response, and what its tags say about it.
    Stored {
        stored: StoredResponse,
        tags: TagCheck,
    },
}

/// A stored response to serve, with its age and its freshness left.
#[derive(Debug)]
pub(super) struct Serve {
    pub(super) stored: StoredResponse,
    pub(super) age: Duration,
    /// Seconds of freshness left (negative when stale), for `Cache-Status: ttl`.
    pub(super) ttl: i64,
}

/// How a request goes on after the lookup.
#[derive(Debug)]
pub(super) enum Phase {
    /// Serve the stored response: it is fresh enough.
    Fresh(Serve),
    /// Serve the stored response stale: the request accepts that much staleness.
    StaleServed(Serve),
    /// Serve the stored response stale, and refresh it in the background.
    StaleWhileRevalidate(Serve),
    /// Go to the origin with the stale response's validators; keep it for stale-if-error.
    Revalidate {
        stored: StoredResponse,
        /// How stale it is.
        by: Duration,
    },
    /// Go to the origin, for this reason.
    Miss(Forward),
    /// Go to the origin without waiting on other requests (the URL was not storable).
    Pass,
    /// Answer 504: the request accepts only a stored response, and none is usable.
    OnlyIfCachedMiss,
}

/// The phase a request with `request` headers and `directives` goes on in, given what was
/// `found` for it, at `now`.
pub(super) fn judge(
    found: Found,
    request: &HeaderMap,
    directives: &RequestDirectives,
    now: SystemTime,
) -> Phase {
    let miss = |reason| {
        if directives.only_if_cached {
            Phase::OnlyIfCachedMiss
        } else {
            Phase::Miss(reason)
        }
    };
    let stored = match found {
        Found::Pass if directives.only_if_cached => return Phase::OnlyIfCachedMiss,
        Found::Pass => return Phase::Pass,
        Found::Nothing { varies: true } => return miss(Forward::VaryMiss),
        Found::Nothing { varies: false } => return miss(Forward::UriMiss),
        // A tag dropped it, or the tags could not be checked: as if nothing were stored.
        Found::Stored { tags, .. } if tags != TagCheck::Valid => return miss(Forward::UriMiss),
        Found::Stored { stored, .. } => stored,
    };
    if !stored.matches(&request_values(&stored.vary_names(), request)) {
        return miss(Forward::VaryMiss);
    }
    let age = stored.age(now);
    let ttl = signed_secs(stored.facts().freshness, age);
    match usable(&stored.facts(), age, directives) {
        Usable::Fresh => Phase::Fresh(Serve { stored, age, ttl }),
        Usable::StaleAccepted => Phase::StaleServed(Serve { stored, age, ttl }),
        Usable::Stale(by) if within(by, stored.facts().stale_while_revalidate) => {
            Phase::StaleWhileRevalidate(Serve { stored, age, ttl })
        }
        Usable::Stale(_) | Usable::Revalidate(_) if directives.only_if_cached => {
            Phase::OnlyIfCachedMiss
        }
        Usable::Stale(by) | Usable::Revalidate(by) => Phase::Revalidate { stored, by },
        Usable::Refused => miss(Forward::Request),
    }
}

/// Seconds of freshness left (negative when stale), for `Cache-Status: ttl`.
pub(super) fn signed_secs(freshness: Duration, age: Duration) -> i64 {
    let secs = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    secs(freshness) - secs(age)
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use bytes::Bytes;

    use super::*;
    use crate::http::policy::Storable;
    use crate::http::stored::Arrival;

    const FRESH_FOR: Duration = Duration::from_secs(60);

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    /// A response stored at `at(0)`, fresh for a minute, with these stale windows and values
    /// of `Vary`.
    fn stored(
        swr: Duration,
        must_revalidate: bool,
        vary: Vec<(String, Option<String>)>,
    ) -> StoredResponse {
        let (head, ()) = http::Response::new(()).into_parts();
        let facts = Storable {
            must_revalidate,
            stale_while_revalidate: swr,
            ..Storable::fresh_for(FRESH_FOR)
        };
        let arrival = Arrival {
            initial_age: Duration::ZERO,
            response_time: at(0),
        };
        StoredResponse::new(&head, Bytes::new(), facts, arrival, vary, &[])
    }

    fn plain() -> StoredResponse {
        stored(Duration::ZERO, false, Vec::new())
    }

    fn found(stored: StoredResponse) -> Found {
        Found::Stored {
            stored,
            tags: TagCheck::Valid,
        }
    }

    fn request(cache_control: &str) -> (HeaderMap, RequestDirectives) {
        let mut headers = HeaderMap::new();
        if !cache_control.is_empty() {
            headers.insert(
                http::header::CACHE_CONTROL,
                cache_control.parse().expect("a valid value"),
            );
        }
        let directives = RequestDirectives::of(&headers);
        (headers, directives)
    }

    fn judged(found: Found, cache_control: &str, now: SystemTime) -> Phase {
        let (headers, directives) = request(cache_control);
        judge(found, &headers, &directives, now)
    }

    #[test]
    fn nothing_stored_is_a_uri_or_vary_miss() {
        let uri = judged(Found::Nothing { varies: false }, "", at(1));
        assert!(matches!(uri, Phase::Miss(Forward::UriMiss)), "{uri:?}");
        let vary = judged(Found::Nothing { varies: true }, "", at(1));
        assert!(matches!(vary, Phase::Miss(Forward::VaryMiss)), "{vary:?}");
    }

    #[test]
    fn a_fresh_response_is_served_with_its_ttl() {
        let phase = judged(found(plain()), "", at(10));
        let Phase::Fresh(serve) = phase else {
            panic!("{phase:?}");
        };
        assert_eq!((serve.age, serve.ttl), (Duration::from_secs(10), 50));
    }

    #[test]
    fn a_stale_response_is_revalidated() {
        let phase = judged(found(plain()), "", at(70));
        let Phase::Revalidate { by, .. } = phase else {
            panic!("{phase:?}");
        };
        assert_eq!(by, Duration::from_secs(10));
    }

    #[test]
    fn max_stale_serves_it_stale() {
        let phase = judged(found(plain()), "max-stale=30", at(70));
        let Phase::StaleServed(serve) = phase else {
            panic!("{phase:?}");
        };
        assert_eq!(serve.ttl, -10);
    }

    #[test]
    fn within_stale_while_revalidate_it_is_served_and_refreshed() {
        let swr = stored(Duration::from_secs(30), false, Vec::new());
        let phase = judged(found(swr.clone()), "", at(80));
        assert!(matches!(phase, Phase::StaleWhileRevalidate(_)), "{phase:?}");
        let past = judged(found(swr), "", at(100));
        assert!(matches!(past, Phase::Revalidate { .. }), "{past:?}");
    }

    #[test]
    fn the_requests_directives_can_refuse_it() {
        for directive in ["no-cache", "max-age=5", "min-fresh=55"] {
            let phase = judged(found(plain()), directive, at(10));
            assert!(
                matches!(phase, Phase::Miss(Forward::Request)),
                "{directive}: {phase:?}"
            );
        }
        // Stale and must-revalidate: only after the origin confirms it, whatever the
        // request accepts.
        let must = stored(Duration::ZERO, true, Vec::new());
        let phase = judged(found(must), "max-stale", at(70));
        assert!(matches!(phase, Phase::Revalidate { .. }), "{phase:?}");
    }

    #[test]
    fn another_variant_is_a_vary_miss() {
        let gzip = vec![("accept-encoding".to_owned(), Some("gzip".to_owned()))];
        let phase = judged(found(stored(Duration::ZERO, false, gzip)), "", at(1));
        assert!(matches!(phase, Phase::Miss(Forward::VaryMiss)), "{phase:?}");
    }

    #[test]
    fn a_response_whose_tags_are_not_valid_is_a_uri_miss() {
        for tags in [TagCheck::Invalid, TagCheck::Unknown] {
            let stale_tags = Found::Stored {
                stored: plain(),
                tags,
            };
            let phase = judged(stale_tags, "", at(1));
            assert!(matches!(phase, Phase::Miss(Forward::UriMiss)), "{phase:?}");
        }
    }

    #[test]
    fn a_pass_marker_goes_straight_to_the_origin() {
        assert!(matches!(judged(Found::Pass, "", at(1)), Phase::Pass));
    }

    #[test]
    fn only_if_cached_answers_only_from_the_store() {
        let fresh = judged(found(plain()), "only-if-cached", at(10));
        assert!(matches!(fresh, Phase::Fresh(_)), "{fresh:?}");
        let misses = [
            Found::Nothing { varies: false },
            Found::Pass,
            found(plain()),
        ];
        for (found, now) in misses.into_iter().zip([at(1), at(1), at(70)]) {
            let phase = judged(found, "only-if-cached", now);
            assert!(matches!(phase, Phase::OnlyIfCachedMiss), "{phase:?}");
        }
    }

    #[test]
    fn ttl_is_signed() {
        assert_eq!(signed_secs(FRESH_FOR, Duration::from_secs(75)), -15);
    }
}
