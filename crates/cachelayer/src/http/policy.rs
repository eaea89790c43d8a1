//! RFC 9111 rules for a shared cache, as pure functions over headers and times: what may be
//! stored, for how long it is fresh, how old a stored response is, and whether a request's
//! own directives accept it.
//!
//! This module decides only; it must never touch a store or a body, so every rule can be
//! tested on headers alone. Where the RFC lets a cache choose, it chooses the safer reading
//! (a qualified `private="..."` whose field list it cannot read is treated like `private`).
//!
//! One concept, kept in one file past 600 lines with its tests: the rules read one another
//! (`Cache-Control` parsing, freshness, age, the request's directives), and their tests
//! read best beside them.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::header::{AUTHORIZATION, CACHE_CONTROL, HeaderMap, HeaderName, PRAGMA, SET_COOKIE};
use http::{Method, StatusCode};

/// Largest delta-seconds honoured (RFC 9111 section 1.2.2: 2^31 is "infinity").
const MAX_DELTA_SECONDS: u64 = 1 << 31;
/// Heuristic freshness is this fraction of the time since `Last-Modified` (RFC 9111 section
/// 4.2.2 suggests 10%), and never more than [`StoreRules::heuristic_limit`].
const HEURISTIC_FRACTION: f64 = 0.1;
/// Default [`StoreRules::heuristic_limit`]: a day.
pub const DEFAULT_HEURISTIC_LIMIT: Duration = Duration::from_secs(24 * 60 * 60);

/// The directives of every `Cache-Control` header of a message, names lowercased.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheControl {
    directives: Vec<(String, Option<String>)>,
}

impl CacheControl {
    /// Parse every `Cache-Control` field of `headers` (comma-separated directives, values as
    /// tokens or quoted strings). Unparseable pieces are skipped, never an error.
    pub fn parse(headers: &HeaderMap) -> Self {
        let mut directives = Vec::new();
        for value in headers.get_all(CACHE_CONTROL) {
            let Ok(text) = value.to_str() else { continue };
            for piece in split_outside_quotes(text) {
                let piece = piece.trim();
                if piece.is_empty() {
                    continue;
                }
                let (name, argument) = match piece.split_once('=') {
                    Some((name, argument)) => {
                        let argument = argument.trim();
                        let unquoted = argument
                            .strip_prefix('"')
                            .and_then(|a| a.strip_suffix('"'))
                            .unwrap_or(argument);
                        (name.trim(), Some(unquoted.to_owned()))
                    }
                    None => (piece, None),
                };
                directives.push((name.to_ascii_lowercase(), argument));
            }
        }
        Self { directives }
    }

    /// A targeted field's directives (RFC 9213: a Structured Fields dictionary), or `None`
    /// when the field is absent, empty or not a valid dictionary (then it is ignored).
    /// Booleans are directives without an argument (`?0`: absent); an integer, string or
    /// token is the argument; parameters are ignored, as RFC 9213 asks.
    pub fn parse_targeted(headers: &HeaderMap, name: &HeaderName) -> Option<Self> {
        let mut fields = headers.get_all(name).iter();
        let first = fields.next()?;
        // Several lines of a dictionary field are one field, joined by commas.
        let mut joined = first.as_bytes().to_vec();
        for more in fields {
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(more.as_bytes());
        }
        let dictionary = sfv::Parser::new(&joined).parse::<sfv::Dictionary>().ok()?;
        let mut directives = Vec::with_capacity(dictionary.len());
        for (key, member) in &dictionary {
            let argument = match member {
                sfv::ListEntry::Item(item) => match &item.bare_item {
                    sfv::BareItem::Boolean(false) => continue,
                    sfv::BareItem::Boolean(true) => None,
                    sfv::BareItem::Integer(n) => Some(i64::from(*n).to_string()),
                    sfv::BareItem::String(text) => Some(text.as_str().to_owned()),
                    sfv::BareItem::Token(token) => Some(token.as_str().to_owned()),
                    // Not a delta-seconds nor a field list: present, but unusable.
                    _ => Some(String::new()),
                },
                sfv::ListEntry::InnerList(list) => Some(
                    list.items
                        .iter()
                        .filter_map(|item| match &item.bare_item {
                            sfv::BareItem::String(text) => Some(text.as_str().to_owned()),
                            sfv::BareItem::Token(token) => Some(token.as_str().to_owned()),
                            _ => None,
                        })
                        .collect::<Vec<_>>()
                        .join(", "),
                ),
            };
            directives.push((key.as_str().to_owned(), argument));
        }
        (!directives.is_empty()).then_some(Self { directives })
    }

    /// Whether the directive is present (with or without an argument).
    pub fn has(&self, name: &str) -> bool {
        self.directives.iter().any(|(n, _)| n == name)
    }

    /// Whether the directive is present without a valid list of field names (`no-cache`, not
    /// `no-cache="set-cookie"`). A list this cache cannot read (`private="a b"`) counts as
    /// none: the directive then applies to the whole response, the safe reading.
    pub fn has_unqualified(&self, name: &str) -> bool {
        self.directives
            .iter()
            .any(|(n, argument)| n == name && field_list(argument.as_deref()).is_none())
    }

    /// The field names a qualified `no-cache="..."` or `private="..."` lists (lowercase):
    /// the response may be stored and reused, but never with these fields (RFC 9111
    /// sections 5.2.2.4 and 5.2.2.7).
    pub fn qualified_fields(&self) -> Vec<HeaderName> {
        self.directives
            .iter()
            .filter(|(name, _)| name == "no-cache" || name == "private")
            .filter_map(|(_, argument)| field_list(argument.as_deref()))
            .flatten()
            .collect()
    }

    /// A delta-seconds argument. A repeated or invalid one makes the directive unusable
    /// (`None`), except where the caller treats presence alone as meaningful.
    pub fn seconds(&self, name: &str) -> Option<Duration> {
        let mut found = self.directives.iter().filter(|(n, _)| n == name);
        let (_, argument) = found.next()?;
        if found.next().is_some() {
            return None;
        }
        let digits = argument.as_deref()?;
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let seconds = digits.parse::<u64>().unwrap_or(MAX_DELTA_SECONDS);
        Some(Duration::from_secs(seconds.min(MAX_DELTA_SECONDS)))
    }
}

/// The field names of a qualified directive's argument, or `None` when it has none or one
/// of them is not a field name.
fn field_list(argument: Option<&str>) -> Option<Vec<HeaderName>> {
    let names: Vec<&str> = argument?
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .collect();
    if names.is_empty() {
        return None;
    }
    names
        .into_iter()
        .map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
        .collect()
}

/// Splits on commas that are not inside a quoted string.
pub(crate) fn split_outside_quotes(text: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (at, byte) in text.bytes().enumerate() {
        match byte {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b',' if !quoted => {
                pieces.push(&text[start..at]);
                start = at + 1;
            }
            _ => {}
        }
    }
    pieces.push(&text[start..]);
    pieces
}

/// Statuses a cache may store without explicit freshness (RFC 9110 section 15.1).
pub fn heuristically_cacheable(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 206 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// Final statuses whose caching requirements this cache implements: those RFC 9110 defines.
/// `must-understand` lets a response of one of them be stored despite `no-store` (RFC 9111
/// section 5.2.2.3); any other status with `must-understand` is not stored.
const UNDERSTOOD: StatusSet = StatusSet::of(&[
    200, 201, 202, 203, 204, 205, 300, 301, 302, 303, 305, 307, 308, 400, 401, 402, 403, 404, 405,
    406, 407, 408, 409, 410, 411, 412, 413, 414, 415, 416, 417, 421, 422, 426, 500, 501, 502, 503,
    504, 505,
]);

/// A set of status codes (100 to 999), small and `Copy`: one bit per code.
///
/// ```
/// use cachelayer::http::policy::StatusSet;
/// use http::StatusCode;
///
/// let statuses: StatusSet = [StatusCode::OK, StatusCode::NOT_FOUND].into_iter().collect();
/// assert!(statuses.contains(StatusCode::NOT_FOUND));
/// assert!(!statuses.contains(StatusCode::METHOD_NOT_ALLOWED));
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct StatusSet([u64; 16]);

impl StatusSet {
    /// The set of `codes`; codes outside 100 to 999 (not statuses) are left out.
    pub const fn of(codes: &[u16]) -> Self {
        let mut words = [0u64; 16];
        let mut i = 0;
        while i < codes.len() {
            let code = codes[i];
            if code >= 100 && code <= 999 {
                words[(code / 64) as usize] |= 1 << (code % 64);
            }
            i += 1;
        }
        Self(words)
    }

    /// Whether `status` is in the set.
    pub fn contains(&self, status: StatusCode) -> bool {
        let code = status.as_u16();
        self.0[usize::from(code / 64)] & (1 << (code % 64)) != 0
    }

    /// The codes in the set, ascending.
    pub fn codes(&self) -> impl Iterator<Item = u16> + '_ {
        (100..=999u16).filter(|code| self.0[usize::from(code / 64)] & (1 << (code % 64)) != 0)
    }
}

impl FromIterator<StatusCode> for StatusSet {
    fn from_iter<I: IntoIterator<Item = StatusCode>>(statuses: I) -> Self {
        let codes: Vec<u16> = statuses.into_iter().map(|s| s.as_u16()).collect();
        Self::of(&codes)
    }
}

impl std::fmt::Debug for StatusSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.codes()).finish()
    }
}

/// The statuses a default TTL applies to unless told otherwise: successes and permanent
/// redirects, the heuristically cacheable statuses that say the resource is as asked. Not
/// the errors (404, 405, 410, 414, 501): one odd request must not make an error page the
/// answer for everyone for a whole TTL.
pub const DEFAULT_TTL_STATUSES: StatusSet = StatusSet::of(&[200, 203, 204, 301, 308]);

/// What a shared cache does with a response that sets a cookie, where the origin does not
/// say (a qualified `no-cache="Set-Cookie"` or `private="Set-Cookie"` always stores the
/// response without the cookie).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SetCookieResponses {
    /// Not stored (the default): such a response is usually meant for one user.
    #[default]
    Refuse,
    /// Stored without `Set-Cookie`: the client that caused the fetch gets the cookie, hits
    /// do not.
    Strip,
    /// Stored with `Set-Cookie`, served to everyone, as RFC 9111 allows a shared cache: only
    /// for origins that mark every per-user response `private` or `no-store` themselves.
    Store,
}

/// The layer's choices where the RFC leaves one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreRules {
    /// Fresh lifetime of responses that carry no freshness information and whose status is
    /// in `default_ttl_statuses`. `None`: such responses are not stored unless `heuristic`
    /// applies.
    pub default_ttl: Option<Duration>,
    /// The statuses `default_ttl` applies to ([`DEFAULT_TTL_STATUSES`] by default). A
    /// status listed here is stored for the default TTL even if it is not heuristically
    /// cacheable: listing it is the operator speaking for the origin. 1xx, 206 and 304 are
    /// never stored.
    pub default_ttl_statuses: StatusSet,
    /// Derive freshness from `Last-Modified` when nothing explicit is given (RFC 9111
    /// section 4.2.2). Off by default: explicit is better than guessed.
    pub heuristic: bool,
    /// Longest heuristic freshness ([`DEFAULT_HEURISTIC_LIMIT`] by default).
    pub heuristic_limit: Duration,
    /// Responses that set a cookie ([`SetCookieResponses::Refuse`] by default).
    pub set_cookie: SetCookieResponses,
    /// Targeted cache-control fields (RFC 9213) this cache obeys, first match first, such
    /// as `CDN-Cache-Control`: the first present and valid one replaces `Cache-Control` and
    /// `Expires` for this cache. Empty by default.
    pub targeted: Arc<[HeaderName]>,
}

impl Default for StoreRules {
    fn default() -> Self {
        Self {
            default_ttl: None,
            default_ttl_statuses: DEFAULT_TTL_STATUSES,
            heuristic: false,
            heuristic_limit: DEFAULT_HEURISTIC_LIMIT,
            set_cookie: SetCookieResponses::Refuse,
            targeted: Arc::from([]),
        }
    }
}

/// The response directives this cache obeys: the first targeted field of `rules` that is
/// present and valid (RFC 9213), else `Cache-Control`. True with them when they are
/// targeted (then `Expires` is ignored too).
pub fn response_directives(response: &HeaderMap, rules: &StoreRules) -> (CacheControl, bool) {
    let targeted = rules
        .targeted
        .iter()
        .find_map(|name| CacheControl::parse_targeted(response, name));
    match targeted {
        Some(directives) => (directives, true),
        None => (CacheControl::parse(response), false),
    }
}

/// Whether a response says how long it is fresh itself (`s-maxage`, `max-age` or, unless a
/// targeted field speaks, `Expires`), rather than leaving it to a heuristic or a default.
pub fn has_explicit_freshness(response: &HeaderMap, rules: &StoreRules) -> bool {
    let (directives, targeted) = response_directives(response, rules);
    directives.has("s-maxage")
        || directives.has("max-age")
        || (!targeted && response.contains_key(http::header::EXPIRES))
}

/// The fields of a response never stored with it: those a qualified `no-cache` or `private`
/// names, and `Set-Cookie` when the rules strip it.
pub fn fields_not_stored(response: &HeaderMap, rules: &StoreRules) -> Vec<HeaderName> {
    let (directives, _) = response_directives(response, rules);
    let mut fields = directives.qualified_fields();
    if rules.set_cookie == SetCookieResponses::Strip {
        fields.push(SET_COOKIE);
    }
    fields
}

/// Why a response is not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum NotStored {
    /// Only GET responses are stored (HEAD is answered from them).
    Method,
    /// Not a final status this cache stores (1xx, 206 partial content, or no freshness).
    Status,
    /// `no-store` in the request or the response.
    NoStore,
    /// `private`: meant for one user.
    Private,
    /// `no-cache` without validators: each use would fetch it whole again.
    NoCache,
    /// The request carried `Authorization` and the response did not allow sharing it
    /// (`public`, `s-maxage` or `must-revalidate`, RFC 9111 section 3.5).
    Authorization,
    /// `Vary: *` can never match a later request.
    VaryAll,
    /// The response sets a cookie.
    SetCookie,
    /// No freshness information and no default TTL: nothing says how long it may be reused.
    NoFreshness,
    /// `must-understand` on a status whose requirements this cache does not implement.
    NotUnderstood,
}

impl NotStored {
    /// A stable label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            NotStored::Method => "method",
            NotStored::Status => "status",
            NotStored::NoStore => "no_store",
            NotStored::Private => "private",
            NotStored::NoCache => "no_cache",
            NotStored::Authorization => "authorization",
            NotStored::VaryAll => "vary_all",
            NotStored::SetCookie => "set_cookie",
            NotStored::NoFreshness => "no_freshness",
            NotStored::NotUnderstood => "not_understood",
        }
    }
}

/// What a shared cache may do with a response it received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Storable {
    /// Its freshness lifetime.
    pub freshness: Duration,
    /// It may not be served stale (`must-revalidate`, `proxy-revalidate` or `s-maxage`).
    pub must_revalidate: bool,
    /// It may not be served at all without a successful revalidation (`no-cache`).
    pub no_cache: bool,
    /// Its freshness is a guess from `Last-Modified` (RFC 9111 section 4.2.2).
    pub heuristic: bool,
    /// Its `stale-while-revalidate` window (RFC 5861), zero when absent.
    pub stale_while_revalidate: Duration,
    /// Its `stale-if-error` window (RFC 5861), zero when absent.
    pub stale_if_error: Duration,
}

impl Storable {
    /// Facts of a response fresh for `freshness`, with no other directive.
    pub const fn fresh_for(freshness: Duration) -> Self {
        Self {
            freshness,
            must_revalidate: false,
            no_cache: false,
            heuristic: false,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
        }
    }

    /// Whether it may ever be served without the origin confirming it first (stale under
    /// a stale window, or for a request accepting staleness).
    pub const fn may_serve_stale(&self) -> bool {
        !self.must_revalidate && !self.no_cache
    }
}

/// Whether a shared cache may store `status` + `response` received for `method` +
/// `request`, and for how long it is fresh (RFC 9111 sections 3, 3.5 and 4.2.1).
pub fn storable(
    method: &Method,
    request: &HeaderMap,
    status: StatusCode,
    response: &HeaderMap,
    rules: &StoreRules,
) -> Result<Storable, NotStored> {
    if method != Method::GET {
        return Err(NotStored::Method);
    }
    // A 304 answers one client's validators; 206 is a part of a body.
    if status.is_informational()
        || status == StatusCode::PARTIAL_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Err(NotStored::Status);
    }
    let request_cc = CacheControl::parse(request);
    let (response_cc, targeted) = response_directives(response, rules);
    if request_cc.has("no-store") {
        return Err(NotStored::NoStore);
    }
    if response_cc.has("must-understand") {
        // It replaces no-store, for the statuses understood here only.
        if !UNDERSTOOD.contains(status) {
            return Err(NotStored::NotUnderstood);
        }
    } else if response_cc.has("no-store") {
        return Err(NotStored::NoStore);
    }
    if response_cc.has_unqualified("private") {
        return Err(NotStored::Private);
    }
    if request.contains_key(AUTHORIZATION)
        && !(response_cc.has("public")
            || response_cc.has("s-maxage")
            || response_cc.has("must-revalidate"))
    {
        return Err(NotStored::Authorization);
    }
    if response
        .get_all(http::header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|name| name.trim() == "*")
    {
        return Err(NotStored::VaryAll);
    }
    if response.contains_key(SET_COOKIE)
        && rules.set_cookie == SetCookieResponses::Refuse
        && !response_cc.qualified_fields().contains(&SET_COOKIE)
    {
        return Err(NotStored::SetCookie);
    }
    let no_cache = response_cc.has_unqualified("no-cache");
    let expires = if targeted {
        None
    } else {
        response.get(http::header::EXPIRES)
    };
    let (freshness, heuristic) =
        match freshness_lifetime(status, response, expires, &response_cc, rules) {
            Ok(found) => found,
            // A no-cache response needs no freshness: every use is revalidated.
            Err(NotStored::NoFreshness) if no_cache => (Duration::ZERO, false),
            Err(refused) => return Err(refused),
        };
    if freshness.is_zero() && !no_cache {
        return Err(NotStored::NoFreshness);
    }
    Ok(Storable {
        freshness,
        must_revalidate: response_cc.has("must-revalidate")
            || response_cc.has("proxy-revalidate")
            || response_cc.has("s-maxage"),
        no_cache,
        heuristic,
        stale_while_revalidate: response_cc
            .seconds("stale-while-revalidate")
            .unwrap_or_default(),
        stale_if_error: response_cc.seconds("stale-if-error").unwrap_or_default(),
    })
}

/// Freshness lifetime for a shared cache, and whether it is a guess: `s-maxage`, then
/// `max-age`, then `expires` minus `Date`, then (for heuristically cacheable statuses) the
/// heuristic, then (for the statuses it applies to) the default TTL.
fn freshness_lifetime(
    status: StatusCode,
    response: &HeaderMap,
    expires: Option<&http::HeaderValue>,
    cc: &CacheControl,
    rules: &StoreRules,
) -> Result<(Duration, bool), NotStored> {
    // A present but invalid (or repeated) directive means "stale", not "look elsewhere".
    for directive in ["s-maxage", "max-age"] {
        if cc.has(directive) {
            return Ok((cc.seconds(directive).unwrap_or_default(), false));
        }
    }
    if let Some(expires) = expires {
        // An invalid Expires (such as "0") means "already expired".
        let expires = expires.to_str().ok().and_then(parse_date);
        let date = date_of(response).unwrap_or_else(SystemTime::now);
        let lifetime = expires
            .and_then(|e| e.duration_since(date).ok())
            .unwrap_or_default();
        return Ok((lifetime, false));
    }
    let heuristic = heuristically_cacheable(status);
    if heuristic
        && rules.heuristic
        && let Some(freshness) = heuristic_freshness(response, rules.heuristic_limit)
    {
        return Ok((freshness, true));
    }
    if let Some(ttl) = rules.default_ttl
        && rules.default_ttl_statuses.contains(status)
    {
        return Ok((ttl, false));
    }
    if heuristic || cc.has("public") {
        Err(NotStored::NoFreshness)
    } else {
        Err(NotStored::Status)
    }
}

fn heuristic_freshness(response: &HeaderMap, limit: Duration) -> Option<Duration> {
    let modified = response
        .get(http::header::LAST_MODIFIED)?
        .to_str()
        .ok()
        .and_then(parse_date)?;
    let date = date_of(response).unwrap_or_else(SystemTime::now);
    let since = date.duration_since(modified).ok()?;
    Some(since.mul_f64(HEURISTIC_FRACTION).min(limit)).filter(|f| !f.is_zero())
}

/// An HTTP date in any of the three formats recipients must accept (RFC 9110 section
/// 5.6.7: IMF-fixdate, RFC 850, asctime), with day, month and zone names in any case.
pub fn parse_date(text: &str) -> Option<SystemTime> {
    if let Ok(date) = httpdate::parse_http_date(text) {
        return Some(date);
    }
    // httpdate matches names case-sensitively: retry with each word capitalized as the
    // formats spell them ("Thu", "Jan", "GMT").
    let mut canonical = String::with_capacity(text.len());
    let mut word_start = true;
    for c in text.chars() {
        if c.is_ascii_alphabetic() {
            canonical.push(if word_start {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            });
            word_start = false;
        } else {
            canonical.push(c);
            word_start = true;
        }
    }
    let canonical = canonical.replace("Gmt", "GMT");
    httpdate::parse_http_date(&canonical).ok()
}

/// A message's `Date`, in any of the formats [`parse_date`] reads.
pub fn date_of(headers: &HeaderMap) -> Option<SystemTime> {
    headers
        .get(http::header::DATE)?
        .to_str()
        .ok()
        .and_then(parse_date)
}

/// The `Age` a message carries (RFC 9111 section 5.1): the first member of a list, larger
/// values taken as 2^31; an invalid one is ignored (`None`).
pub fn age_header(headers: &HeaderMap) -> Option<Duration> {
    let first = headers
        .get(http::header::AGE)?
        .to_str()
        .ok()?
        .split(',')
        .next()?
        .trim();
    if first.is_empty() || !first.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let seconds = first.parse::<u64>().unwrap_or(MAX_DELTA_SECONDS);
    Some(Duration::from_secs(seconds.min(MAX_DELTA_SECONDS)))
}

/// The age a response had when it arrived (RFC 9111 section 4.2.3): the larger of its
/// apparent age (`response_time - Date`) and its `Age` header plus the request's round trip.
pub fn initial_age(
    response: &HeaderMap,
    request_time: SystemTime,
    response_time: SystemTime,
) -> Duration {
    let apparent = date_of(response)
        .and_then(|date| response_time.duration_since(date).ok())
        .unwrap_or_default();
    let age_header = age_header(response).unwrap_or_default();
    let delay = response_time
        .duration_since(request_time)
        .unwrap_or_default();
    apparent.max(age_header.saturating_add(delay))
}

/// What a request's own directives say about using a stored response (RFC 9111 section
/// 5.2.1, with `Pragma: no-cache` for HTTP/1.0 clients).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RequestDirectives {
    /// `no-cache` (or `Pragma: no-cache` without `Cache-Control`): go to the origin.
    pub no_cache: bool,
    /// `no-store`: do not store the response to this request.
    pub no_store: bool,
    /// `max-age`: accept nothing older.
    pub max_age: Option<Duration>,
    /// `max-stale`: accept this much staleness (`Some(None)`: any).
    pub max_stale: Option<Option<Duration>>,
    /// `min-fresh`: require this much freshness left.
    pub min_fresh: Option<Duration>,
    /// `only-if-cached`: answer from the cache or with 504.
    pub only_if_cached: bool,
}

impl RequestDirectives {
    /// The directives of a request's headers.
    pub fn of(request: &HeaderMap) -> Self {
        let cc = CacheControl::parse(request);
        let pragma_no_cache = !request.contains_key(CACHE_CONTROL)
            && request
                .get_all(PRAGMA)
                .iter()
                .filter_map(|p| p.to_str().ok())
                .any(|p| {
                    p.split(',')
                        .any(|d| d.trim().eq_ignore_ascii_case("no-cache"))
                });
        Self {
            no_cache: cc.has("no-cache") || pragma_no_cache,
            no_store: cc.has("no-store"),
            max_age: cc.seconds("max-age"),
            max_stale: max_stale(&cc),
            min_fresh: cc.seconds("min-fresh"),
            only_if_cached: cc.has("only-if-cached"),
        }
    }
}

/// `max-stale` alone accepts any staleness; with an invalid argument it accepts none.
fn max_stale(cc: &CacheControl) -> Option<Option<Duration>> {
    let argument = cc
        .directives
        .iter()
        .find(|(name, _)| name == "max-stale")
        .map(|(_, argument)| argument.is_some())?;
    if argument {
        cc.seconds("max-stale").map(Some)
    } else {
        Some(None)
    }
}

/// Whether a stored response may answer a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usable {
    /// Fresh, and fresh enough for the request.
    Fresh,
    /// Stale, but the request accepts that much staleness.
    StaleAccepted,
    /// Stale by this much; usable only under a stale window (`stale-while-revalidate`,
    /// `stale-if-error`), if the response allows stale serving at all.
    Stale(Duration),
    /// Usable only once the origin confirms it (a `304` to a conditional request): it is
    /// stale and `must-revalidate`, or `no-cache`. Stale by this much (zero when fresh).
    Revalidate(Duration),
    /// The request's own directives refuse it (`no-cache`, `max-age`, `min-fresh`).
    Refused,
}

/// How a stored response of `age` with `stored` facts stands for a request with `request`
/// directives.
pub fn usable(stored: &Storable, age: Duration, request: &RequestDirectives) -> Usable {
    if request.no_cache || request.max_age.is_some_and(|max| age > max) {
        return Usable::Refused;
    }
    let staleness = age.saturating_sub(stored.freshness);
    if stored.no_cache {
        return Usable::Revalidate(staleness);
    }
    if let Some(left) = stored.freshness.checked_sub(age).filter(|l| !l.is_zero()) {
        return match request.min_fresh {
            Some(min) if left < min => Usable::Refused,
            _ => Usable::Fresh,
        };
    }
    if stored.must_revalidate {
        return Usable::Revalidate(staleness);
    }
    let accepted = match request.max_stale {
        Some(None) => true,
        Some(Some(limit)) => staleness <= limit,
        None => false,
    };
    if accepted {
        Usable::StaleAccepted
    } else {
        Usable::Stale(staleness)
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).expect("valid"));
        }
        map
    }

    fn store(response: &[(&'static str, &str)]) -> Result<Storable, NotStored> {
        storable(
            &Method::GET,
            &HeaderMap::new(),
            StatusCode::OK,
            &headers(response),
            &StoreRules::default(),
        )
    }

    /// Directives are case-insensitive, quoted values and several fields are read, and a
    /// duplicated or malformed delta makes that directive unusable.
    #[test]
    fn cache_control_parsing() {
        let cc = CacheControl::parse(&headers(&[
            ("cache-control", "Public, MAX-AGE=60"),
            (
                "cache-control",
                "no-cache=\"set-cookie, x-a\", s-maxage=\"30\"",
            ),
        ]));
        assert!(cc.has("public") && cc.has("no-cache"));
        assert_eq!(cc.seconds("max-age"), Some(Duration::from_secs(60)));
        assert_eq!(cc.seconds("s-maxage"), Some(Duration::from_secs(30)));
        let bad = CacheControl::parse(&headers(&[(
            "cache-control",
            "max-age=1, max-age=2, s-maxage=-1",
        )]));
        assert_eq!(bad.seconds("max-age"), None);
        assert_eq!(bad.seconds("s-maxage"), None);
        let huge = CacheControl::parse(&headers(&[(
            "cache-control",
            "max-age=99999999999999999999",
        )]));
        assert_eq!(
            huge.seconds("max-age"),
            Some(Duration::from_secs(MAX_DELTA_SECONDS))
        );
    }

    /// Freshness comes from s-maxage, then max-age, then Expires - Date; nothing else without
    /// a default TTL or the heuristic.
    #[test]
    fn freshness_sources_in_order() {
        let fresh = |r: &[(&'static str, &str)]| store(r).map(|s| s.freshness);
        assert_eq!(
            fresh(&[("cache-control", "max-age=60, s-maxage=10")]),
            Ok(Duration::from_secs(10))
        );
        assert_eq!(
            fresh(&[("cache-control", "max-age=60")]),
            Ok(Duration::from_secs(60))
        );
        assert_eq!(
            fresh(&[
                ("date", "Sat, 28 Nov 2026 08:00:00 GMT"),
                ("expires", "Sat, 28 Nov 2026 08:05:00 GMT"),
            ]),
            Ok(Duration::from_secs(300))
        );
        // An invalid Expires means already expired.
        assert_eq!(fresh(&[("expires", "0")]), Err(NotStored::NoFreshness));
        // An invalid max-age means stale, even with a default TTL; a 304 is never stored.
        let invalid = storable(
            &Method::GET,
            &HeaderMap::new(),
            StatusCode::OK,
            &headers(&[("cache-control", "max-age=soon")]),
            &StoreRules {
                default_ttl: Some(Duration::from_secs(5)),
                ..StoreRules::default()
            },
        );
        assert_eq!(invalid, Err(NotStored::NoFreshness));
        let not_modified = storable(
            &Method::GET,
            &HeaderMap::new(),
            StatusCode::NOT_MODIFIED,
            &headers(&[("cache-control", "max-age=60")]),
            &StoreRules::default(),
        );
        assert_eq!(not_modified, Err(NotStored::Status));
        assert_eq!(fresh(&[]), Err(NotStored::NoFreshness));
        let with_default = storable(
            &Method::GET,
            &HeaderMap::new(),
            StatusCode::OK,
            &HeaderMap::new(),
            &StoreRules {
                default_ttl: Some(Duration::from_secs(5)),
                ..StoreRules::default()
            },
        );
        assert_eq!(
            with_default.map(|s| s.freshness),
            Ok(Duration::from_secs(5))
        );
        let heuristic = storable(
            &Method::GET,
            &HeaderMap::new(),
            StatusCode::OK,
            &headers(&[
                ("date", "Sat, 28 Nov 2026 08:00:00 GMT"),
                ("last-modified", "Sat, 28 Nov 2026 07:00:00 GMT"),
            ]),
            &StoreRules {
                heuristic: true,
                ..StoreRules::default()
            },
        );
        assert_eq!(heuristic.map(|s| s.freshness), Ok(Duration::from_secs(360)));
        // A status that is not heuristically cacheable needs explicit freshness.
        let created = storable(
            &Method::GET,
            &HeaderMap::new(),
            StatusCode::CREATED,
            &HeaderMap::new(),
            &StoreRules {
                default_ttl: Some(Duration::from_secs(5)),
                ..StoreRules::default()
            },
        );
        assert_eq!(created, Err(NotStored::Status));
    }

    /// A default TTL applies to successes and permanent redirects only, unless the rules
    /// list other statuses; explicit freshness applies to every status as before.
    #[test]
    fn default_ttl_applies_to_its_statuses() {
        let rules = |statuses: Option<&[u16]>| StoreRules {
            default_ttl: Some(Duration::from_secs(5)),
            default_ttl_statuses: statuses.map_or(DEFAULT_TTL_STATUSES, StatusSet::of),
            ..StoreRules::default()
        };
        let stored = |code: u16, response: &HeaderMap, rules: &StoreRules| {
            let status = StatusCode::from_u16(code).expect("status");
            storable(&Method::GET, &HeaderMap::new(), status, response, rules).map(|s| s.freshness)
        };
        let none = HeaderMap::new();
        let five = Ok(Duration::from_secs(5));
        for code in [200, 203, 204, 301, 308] {
            assert_eq!(stored(code, &none, &rules(None)), five, "{code}");
        }
        for code in [300, 404, 405, 410, 414, 501] {
            assert_eq!(
                stored(code, &none, &rules(None)),
                Err(NotStored::NoFreshness),
                "{code}"
            );
        }
        assert_eq!(stored(500, &none, &rules(None)), Err(NotStored::Status));
        let listed = rules(Some(&[200, 405, 500]));
        assert_eq!(stored(405, &none, &listed), five);
        assert_eq!(
            stored(500, &none, &listed),
            five,
            "listed: the operator's choice"
        );
        assert_eq!(stored(204, &none, &listed), Err(NotStored::NoFreshness));
        // Explicit freshness is the origin's word, whatever the default TTL's statuses.
        let explicit = headers(&[("cache-control", "max-age=60")]);
        assert_eq!(
            stored(405, &explicit, &rules(None)),
            Ok(Duration::from_secs(60))
        );
        assert_eq!(
            format!("{:?}", DEFAULT_TTL_STATUSES),
            "{200, 203, 204, 301, 308}"
        );
    }

    /// no-store, private, Vary: *, Set-Cookie, partial content and methods other than GET
    /// are never stored; Authorization only with public, s-maxage or must-revalidate.
    #[test]
    fn what_a_shared_cache_refuses() {
        let ok = [("cache-control", "max-age=60")];
        assert_eq!(
            store(&[("cache-control", "max-age=60, no-store")]),
            Err(NotStored::NoStore)
        );
        assert_eq!(
            store(&[("cache-control", "private, max-age=60")]),
            Err(NotStored::Private)
        );
        // A qualified private or no-cache stores without the fields named; an unqualified
        // no-cache stores, to be revalidated on every use.
        assert!(store(&[("cache-control", "private=\"x-user\", max-age=60")]).is_ok());
        // A list that is not one (space-separated names) is read as plain private.
        assert_eq!(
            store(&[("cache-control", "private=\"x-user x-account\", max-age=60")]),
            Err(NotStored::Private)
        );
        assert_eq!(
            store(&[("cache-control", "no-cache, max-age=60")]).map(|s| s.no_cache),
            Ok(true)
        );
        assert_eq!(
            store(&[("cache-control", "max-age=60"), ("vary", "accept, *")]),
            Err(NotStored::VaryAll)
        );
        assert_eq!(
            store(&[("cache-control", "max-age=60"), ("set-cookie", "id=1")]),
            Err(NotStored::SetCookie)
        );
        let request_no_store = headers(&[("cache-control", "no-store")]);
        assert_eq!(
            storable(
                &Method::GET,
                &request_no_store,
                StatusCode::OK,
                &headers(&ok),
                &StoreRules::default()
            ),
            Err(NotStored::NoStore)
        );
        assert_eq!(
            storable(
                &Method::PUT,
                &HeaderMap::new(),
                StatusCode::OK,
                &headers(&ok),
                &StoreRules::default()
            ),
            Err(NotStored::Method)
        );
        assert_eq!(
            storable(
                &Method::GET,
                &HeaderMap::new(),
                StatusCode::PARTIAL_CONTENT,
                &headers(&ok),
                &StoreRules::default()
            ),
            Err(NotStored::Status)
        );
        let authorized = headers(&[("authorization", "Bearer t")]);
        let with = |cc: &str| {
            storable(
                &Method::GET,
                &authorized,
                StatusCode::OK,
                &headers(&[("cache-control", cc)]),
                &StoreRules::default(),
            )
        };
        assert_eq!(with("max-age=60"), Err(NotStored::Authorization));
        assert!(with("public, max-age=60").is_ok());
        assert!(with("s-maxage=60").is_ok());
        assert!(with("max-age=60, must-revalidate").is_ok());
    }

    /// A targeted field (RFC 9213) replaces Cache-Control and Expires when it is on the
    /// rules' list, present and a valid dictionary; the first listed one wins.
    #[test]
    fn targeted_cache_control_takes_precedence() {
        let rules = StoreRules {
            targeted: Arc::from([
                HeaderName::from_static("cachelayer-cache-control"),
                HeaderName::from_static("cdn-cache-control"),
            ]),
            ..StoreRules::default()
        };
        let with = |pairs: &[(&'static str, &str)]| {
            storable(
                &Method::GET,
                &HeaderMap::new(),
                StatusCode::OK,
                &headers(pairs),
                &rules,
            )
        };
        let minute = Ok(Duration::from_secs(60));
        let fresh = |pairs: &[(&'static str, &str)]| with(pairs).map(|s| s.freshness);
        assert_eq!(
            fresh(&[
                ("cdn-cache-control", "max-age=60"),
                ("cache-control", "no-store")
            ]),
            minute
        );
        assert_eq!(
            fresh(&[
                ("cdn-cache-control", "max-age=0"),
                ("cache-control", "max-age=600"),
                ("expires", "Fri, 31 Dec 2100 23:59:59 GMT"),
            ]),
            Err(NotStored::NoFreshness)
        );
        assert_eq!(
            with(&[
                ("cdn-cache-control", "no-store"),
                ("cache-control", "max-age=60")
            ]),
            Err(NotStored::NoStore)
        );
        assert_eq!(
            with(&[
                ("cdn-cache-control", "private"),
                ("cache-control", "max-age=60")
            ]),
            Err(NotStored::Private)
        );
        assert_eq!(
            fresh(&[
                ("cachelayer-cache-control", "max-age=60"),
                ("cdn-cache-control", "no-store"),
            ]),
            minute
        );
        // Not a valid dictionary (nor is a `MAX-AGE` key): ignored, Cache-Control decides.
        for invalid in ["max-age=60,,;;\"", "MAX-AGE=5", "max-age=\"5\"x"] {
            assert_eq!(
                fresh(&[
                    ("cdn-cache-control", invalid),
                    ("cache-control", "max-age=60")
                ]),
                minute,
                "{invalid}"
            );
        }
        assert_eq!(
            with(&[
                ("cdn-cache-control", "no-cache, max-age=60"),
                ("etag", "\"a\"")
            ])
            .map(|s| s.no_cache),
            Ok(true)
        );
        // `?0` is absent; a layer without the list ignores the field.
        assert_eq!(
            fresh(&[("cdn-cache-control", "max-age=60, no-store=?0")]),
            minute
        );
        assert_eq!(
            store(&[
                ("cdn-cache-control", "max-age=60"),
                ("cache-control", "no-store")
            ]),
            Err(NotStored::NoStore)
        );
    }

    /// Age: the first member of a list; an invalid value is ignored; a huge one is 2^31.
    #[test]
    fn age_reads_the_first_member() {
        let age = |value: &str| age_header(&headers(&[("age", value)]));
        assert_eq!(age("7200, 0"), Some(Duration::from_secs(7200)));
        assert_eq!(age(" 5 "), Some(Duration::from_secs(5)));
        assert_eq!(age("bogus"), None);
        assert_eq!(age("+5"), None);
        assert_eq!(
            age("99999999999999999999999"),
            Some(Duration::from_secs(MAX_DELTA_SECONDS))
        );
    }

    /// Dates in the three formats, names in any case; a huge max-age is clamped.
    #[test]
    fn dates_in_every_format() {
        let expected = httpdate::parse_http_date("Thu, 01 Jan 2037 00:00:00 GMT").ok();
        for text in [
            "Thu, 01 Jan 2037 00:00:00 GMT",
            "Thursday, 01-Jan-37 00:00:00 GMT",
            "Thu Jan  1 00:00:00 2037",
            "thu, 01 jan 2037 00:00:00 gmt",
            "THURSDAY, 01-JAN-37 00:00:00 GMT",
        ] {
            assert_eq!(parse_date(text), expected, "{text}");
        }
        assert_eq!(parse_date("soon"), None);
        assert_eq!(
            store(&[("cache-control", "max-age=2147483648")]).map(|s| s.freshness),
            Ok(Duration::from_secs(MAX_DELTA_SECONDS))
        );
    }

    /// must-understand stores despite no-store for a status this cache understands, and
    /// nothing of a status it does not.
    #[test]
    fn must_understand_replaces_no_store() {
        let directives = headers(&[("cache-control", "must-understand, no-store, max-age=60")]);
        let with = |code: u16| {
            let status = StatusCode::from_u16(code).expect("status");
            storable(
                &Method::GET,
                &HeaderMap::new(),
                status,
                &directives,
                &StoreRules::default(),
            )
        };
        assert!(with(200).is_ok());
        assert_eq!(with(599), Err(NotStored::NotUnderstood));
        let no_store_request = headers(&[("cache-control", "no-store")]);
        let request = storable(
            &Method::GET,
            &no_store_request,
            StatusCode::OK,
            &directives,
            &StoreRules::default(),
        );
        assert_eq!(request, Err(NotStored::NoStore));
    }

    /// Set-Cookie: refused, stripped or stored as the rules say; a qualified no-cache or
    /// private naming it stores the response without it.
    #[test]
    fn set_cookie_responses_follow_the_rules() {
        let cookie = [("cache-control", "max-age=60"), ("set-cookie", "a=1")];
        let rules = |set_cookie| StoreRules {
            set_cookie,
            ..StoreRules::default()
        };
        let judged = |pairs: &[(&'static str, &str)], rules: &StoreRules| {
            let response = headers(pairs);
            let decision = storable(
                &Method::GET,
                &HeaderMap::new(),
                StatusCode::OK,
                &response,
                rules,
            );
            (decision.is_ok(), fields_not_stored(&response, rules))
        };
        let refuse = rules(SetCookieResponses::Refuse);
        assert_eq!(judged(&cookie, &refuse), (false, vec![]));
        assert_eq!(
            judged(&cookie, &rules(SetCookieResponses::Strip)),
            (true, vec![SET_COOKIE])
        );
        assert_eq!(
            judged(&cookie, &rules(SetCookieResponses::Store)),
            (true, vec![])
        );
        for qualified in [
            "max-age=60, no-cache=\"Set-Cookie\"",
            "private=\"set-cookie\", max-age=60",
        ] {
            let pairs = [("cache-control", qualified), ("set-cookie", "a=1")];
            assert_eq!(
                judged(&pairs, &refuse),
                (true, vec![SET_COOKIE]),
                "{qualified}"
            );
        }
    }

    /// Heuristic freshness is a tenth of the time since Last-Modified, up to the limit, for
    /// heuristically cacheable statuses, and marked as such.
    #[test]
    fn heuristic_freshness_is_limited_and_marked() {
        let rules = StoreRules {
            heuristic: true,
            heuristic_limit: Duration::from_secs(600),
            ..StoreRules::default()
        };
        let response = |modified: &str| {
            headers(&[
                ("date", "Sat, 28 Nov 2026 08:00:00 GMT"),
                ("last-modified", modified),
            ])
        };
        let with = |code: u16, modified: &str| {
            let status = StatusCode::from_u16(code).expect("status");
            storable(
                &Method::GET,
                &HeaderMap::new(),
                status,
                &response(modified),
                &rules,
            )
        };
        let hour_ago = "Sat, 28 Nov 2026 07:00:00 GMT";
        let stored = with(200, hour_ago).expect("stored");
        assert_eq!(
            (stored.freshness, stored.heuristic),
            (Duration::from_secs(360), true)
        );
        assert_eq!(
            with(410, "Sat, 21 Nov 2026 08:00:00 GMT").map(|s| s.freshness),
            Ok(Duration::from_secs(600))
        );
        assert_eq!(with(500, hour_ago), Err(NotStored::Status));
    }

    /// Age is the larger of the apparent age and Age plus the round trip.
    #[test]
    fn initial_age_per_rfc() {
        let date = httpdate::parse_http_date("Sat, 28 Nov 2026 08:00:00 GMT").expect("date");
        let request_time = date + Duration::from_secs(8);
        let response_time = date + Duration::from_secs(10);
        let response = headers(&[("date", "Sat, 28 Nov 2026 08:00:00 GMT"), ("age", "30")]);
        assert_eq!(
            initial_age(&response, request_time, response_time),
            Duration::from_secs(32)
        );
        let response = headers(&[("date", "Sat, 28 Nov 2026 08:00:00 GMT")]);
        assert_eq!(
            initial_age(&response, request_time, response_time),
            Duration::from_secs(10)
        );
    }

    /// Request directives: no-cache, Pragma, max-age, min-fresh and max-stale.
    #[test]
    fn request_directives_decide_use() {
        let stored = Storable::fresh_for(Duration::from_secs(60));
        let secs = Duration::from_secs;
        let of = |pairs: &[(&'static str, &str)]| RequestDirectives::of(&headers(pairs));
        assert_eq!(usable(&stored, secs(10), &of(&[])), Usable::Fresh);
        assert_eq!(
            usable(&stored, secs(10), &of(&[("cache-control", "no-cache")])),
            Usable::Refused
        );
        assert_eq!(
            usable(&stored, secs(10), &of(&[("pragma", "no-cache")])),
            Usable::Refused
        );
        // Cache-Control wins over Pragma.
        assert_eq!(
            usable(
                &stored,
                secs(10),
                &of(&[("pragma", "no-cache"), ("cache-control", "max-stale")])
            ),
            Usable::Fresh
        );
        assert_eq!(
            usable(&stored, secs(10), &of(&[("cache-control", "max-age=5")])),
            Usable::Refused
        );
        assert_eq!(
            usable(&stored, secs(50), &of(&[("cache-control", "min-fresh=20")])),
            Usable::Refused
        );
        assert_eq!(usable(&stored, secs(70), &of(&[])), Usable::Stale(secs(10)));
        assert_eq!(
            usable(&stored, secs(70), &of(&[("cache-control", "max-stale=20")])),
            Usable::StaleAccepted
        );
        assert_eq!(
            usable(&stored, secs(90), &of(&[("cache-control", "max-stale=20")])),
            Usable::Stale(secs(30))
        );
        assert_eq!(
            usable(&stored, secs(900), &of(&[("cache-control", "max-stale")])),
            Usable::StaleAccepted
        );
        let strict = Storable {
            must_revalidate: true,
            ..stored
        };
        // Stale and must-revalidate: only once the origin confirms it.
        assert_eq!(
            usable(&strict, secs(70), &of(&[("cache-control", "max-stale")])),
            Usable::Revalidate(secs(10))
        );
        assert!(of(&[("cache-control", "only-if-cached, no-store")]).only_if_cached);
        assert_eq!(of(&[("cache-control", "max-stale=soon")]).max_stale, None);
    }
}
