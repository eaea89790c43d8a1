//! Which Redis deployment a URL names: one server (`redis://`, `rediss://`), a primary found
//! through Sentinels (`redis+sentinel://`), or a Redis Cluster (`redis+cluster://`), and the
//! plain per-node URLs each of them is reached through.
//!
//! The `redis` crate reads one node's URL; a deployment of several nodes needs a list of
//! addresses and, for Sentinel, a master name, which no URL form of that crate carries. This
//! module turns such a URL into node URLs the crate reads, so credentials, TLS (`rediss`,
//! `#insecure`) and query options are spelled once and mean the same on every node. It must
//! never connect, and never put a password anywhere but the node URLs it returns.

use super::redact_url;
use crate::error::{Error, Result};

/// A Redis deployment, as its URL names it. (`Debug` redacts passwords.)
#[derive(Clone, PartialEq, Eq)]
pub(super) enum Deployment {
    /// One server, reached through this URL as given.
    Server(String),
    /// A primary that Sentinels name, and follow when they fail it over.
    Sentinel(SentinelSet),
    /// A Redis Cluster, first reached through its seed nodes.
    Cluster(ClusterSeeds),
}

/// The nodes a Redis Cluster is first reached through, and how to reach any of its nodes.
#[derive(Clone, PartialEq, Eq)]
pub(super) struct ClusterSeeds {
    /// Each seed node's URL, with the deployment's credentials, TLS and options.
    pub(super) seeds: Vec<String>,
    node: NodeUrl,
}

impl ClusterSeeds {
    /// The URL of the node at `host:port`, as the cluster announces it.
    pub(super) fn node_url(&self, host: &str, port: u16) -> String {
        self.node.with_address(&host_port(host, port))
    }
}

/// Where the Sentinels are, which primary to ask them for, and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SentinelSet {
    /// Each Sentinel's URL (TLS as the data nodes, no credentials).
    pub(super) sentinels: Vec<String>,
    /// The name the Sentinels monitor the primary under (`sentinel monitor <name> ...`).
    pub(super) master: String,
    /// How a data node is reached: `{scheme}://{userinfo}@` before the address, the
    /// database, query and fragment after it.
    node: NodeUrl,
}

impl SentinelSet {
    /// The URL of the data node at `host:port`, with the deployment's credentials, TLS,
    /// database and options.
    pub(super) fn node_url(&self, host: &str, port: u16) -> String {
        self.node.with_address(&host_port(host, port))
    }
}

/// The parts of a node URL around its address.
#[derive(Clone, PartialEq, Eq)]
struct NodeUrl {
    before: String,
    after: String,
}

impl NodeUrl {
    fn with_address(&self, address: &str) -> String {
        format!("{}{address}{}", self.before, self.after)
    }
}

// The URLs below carry passwords: their `Debug` shows them redacted.
impl std::fmt::Debug for Deployment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Server(url) => f.debug_tuple("Server").field(&redact_url(url)).finish(),
            Self::Sentinel(set) => f.debug_tuple("Sentinel").field(set).finish(),
            Self::Cluster(seeds) => f.debug_tuple("Cluster").field(seeds).finish(),
        }
    }
}

impl std::fmt::Debug for ClusterSeeds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let seeds: Vec<String> = self.seeds.iter().map(|seed| redact_url(seed)).collect();
        f.debug_struct("ClusterSeeds")
            .field("seeds", &seeds)
            .finish()
    }
}

impl std::fmt::Debug for NodeUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&redact_url(&self.with_address("<host>:<port>")))
    }
}

/// `host:port`, with brackets around an IPv6 address.
pub(super) fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

impl Deployment {
    /// Read `url`. Only the two multi-node schemes are taken apart here; any other URL is
    /// one server's, checked later by the `redis` crate.
    pub(super) fn parse(url: &str) -> Result<Self> {
        let Some((scheme, rest)) = url.split_once("://") else {
            return Ok(Self::Server(url.to_owned()));
        };
        let (node_scheme, sentinel) = match scheme {
            "redis+cluster" => ("redis", false),
            "rediss+cluster" => ("rediss", false),
            "redis+sentinel" => ("redis", true),
            "rediss+sentinel" => ("rediss", true),
            _ => return Ok(Self::Server(url.to_owned())),
        };
        let parts = UrlParts::split(rest);
        let hosts: Vec<&str> = parts.hosts.split(',').collect();
        if hosts.iter().any(|host| host.is_empty()) {
            return Err(bad(url, "name at least one host:port, separated by commas"));
        }
        let userinfo = parts.userinfo.map(|u| format!("{u}@")).unwrap_or_default();
        let tail = format!("{}{}", parts.query, parts.fragment);
        if sentinel {
            let (master, database) = sentinel_path(url, parts.path)?;
            let sentinels = hosts
                .iter()
                .map(|host| format!("{node_scheme}://{host}{}", parts.fragment))
                .collect();
            Ok(Self::Sentinel(SentinelSet {
                sentinels,
                master,
                node: NodeUrl {
                    before: format!("{node_scheme}://{userinfo}"),
                    after: format!("/{database}{tail}"),
                },
            }))
        } else {
            if !matches!(parts.path, "" | "/" | "/0") {
                return Err(bad(url, "a cluster has only database 0; drop the path"));
            }
            let node = NodeUrl {
                before: format!("{node_scheme}://{userinfo}"),
                after: tail,
            };
            let seeds = hosts.iter().map(|host| node.with_address(host)).collect();
            Ok(Self::Cluster(ClusterSeeds { seeds, node }))
        }
    }
}

/// A URL after its `scheme://`, cut as the `url` crate would: the authority ends at the
/// first `/`, `?` or `#` (a password must percent-encode those), and within it the user
/// info ends at the last `@` (a password may hold `@`).
struct UrlParts<'a> {
    userinfo: Option<&'a str>,
    hosts: &'a str,
    path: &'a str,
    query: &'a str,
    fragment: &'a str,
}

impl<'a> UrlParts<'a> {
    fn split(rest: &'a str) -> Self {
        let (rest, fragment) = match rest.find('#') {
            Some(at) => rest.split_at(at),
            None => (rest, ""),
        };
        let (authority, rest) = match rest.find(['/', '?']) {
            Some(at) => rest.split_at(at),
            None => (rest, ""),
        };
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => (Some(userinfo), hosts),
            None => (None, authority),
        };
        let (path, query) = match rest.find('?') {
            Some(at) => rest.split_at(at),
            None => (rest, ""),
        };
        Self {
            userinfo,
            hosts,
            path,
            query,
            fragment,
        }
    }
}

/// `/<master name>[/<database>]`.
fn sentinel_path(url: &str, path: &str) -> Result<(String, u32)> {
    let mut segments = path.trim_start_matches('/').split('/');
    let master = segments.next().unwrap_or_default();
    if master.is_empty() {
        return Err(bad(
            url,
            "name the primary the Sentinels monitor: redis+sentinel://host:port,.../<master name>[/<db>]",
        ));
    }
    let database = match segments.next() {
        None | Some("") => 0,
        Some(db) => db
            .parse()
            .map_err(|_| bad(url, "the database after the master name must be a number"))?,
    };
    if segments.next().is_some() {
        return Err(bad(url, "the path is /<master name>[/<db>], nothing more"));
    }
    Ok((master.to_owned(), database))
}

fn bad(url: &str, why: &str) -> Error {
    Error::config(format!("invalid redis URL {}: {why}", redact_url(url)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain URLs pass through untouched, for the `redis` crate to read.
    #[test]
    fn one_server_urls_are_left_alone() {
        for url in [
            "redis://h:1/2",
            "rediss://u:p@h",
            "redis+unix:///s.sock",
            "junk",
        ] {
            assert_eq!(
                Deployment::parse(url).ok(),
                Some(Deployment::Server(url.into()))
            );
        }
    }

    /// A cluster URL becomes one seed URL per host, each with the credentials, TLS, query
    /// and fragment.
    #[test]
    fn cluster_urls_name_seed_nodes() {
        let Ok(Deployment::Cluster(cluster)) =
            Deployment::parse("rediss+cluster://app:p@ss@a:1,[::1]:2/?protocol=3#insecure")
        else {
            panic!("a cluster deployment");
        };
        assert_eq!(
            cluster.seeds,
            [
                "rediss://app:p@ss@a:1?protocol=3#insecure",
                "rediss://app:p@ss@[::1]:2?protocol=3#insecure",
            ]
        );
        assert_eq!(
            cluster.node_url("10.0.0.9", 7001),
            "rediss://app:p@ss@10.0.0.9:7001?protocol=3#insecure"
        );
        assert!(
            Deployment::parse("redis+cluster://a:1/3").is_err(),
            "no database but 0"
        );
        assert!(Deployment::parse("redis+cluster://a:1,,b:2").is_err());
        let err = Deployment::parse("redis+cluster://u:s3cret@a:1,/2").expect_err("empty host");
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }

    /// A Sentinel URL names the Sentinels, the master and how to reach the data nodes; the
    /// credentials go to the data nodes only.
    #[test]
    fn sentinel_urls_name_sentinels_and_master() {
        let Ok(Deployment::Sentinel(set)) =
            Deployment::parse("redis+sentinel://u:pw@s1:26379,s2:26380/mymaster/2?protocol=3")
        else {
            panic!("a sentinel deployment");
        };
        assert_eq!(set.sentinels, ["redis://s1:26379", "redis://s2:26380"]);
        assert_eq!(set.master, "mymaster");
        assert_eq!(
            set.node_url("10.0.0.1", 6380),
            "redis://u:pw@10.0.0.1:6380/2?protocol=3"
        );
        assert_eq!(
            set.node_url("::1", 6380),
            "redis://u:pw@[::1]:6380/2?protocol=3"
        );
        for bad in [
            "redis+sentinel://s1:1",
            "redis+sentinel://s1:1/",
            "redis+sentinel://s1:1/m/x",
            "redis+sentinel://s1:1/m/1/2",
        ] {
            assert!(Deployment::parse(bad).is_err(), "{bad}");
        }
        let Ok(Deployment::Sentinel(tls)) = Deployment::parse("rediss+sentinel://s:1/m#insecure")
        else {
            panic!("a sentinel deployment");
        };
        assert_eq!(tls.sentinels, ["rediss://s:1#insecure"]);
        assert_eq!(tls.node_url("h", 2), "rediss://h:2/0#insecure");
    }
}
