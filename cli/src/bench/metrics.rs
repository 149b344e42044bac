//! The gateway's Prometheus page, read with a plain HTTP/1.1 GET over a `TcpStream`.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// How long a scrape may take, connecting and reading.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(3);

/// Where the metrics page is: `http://HOST:PORT/PATH`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricsUrl {
    /// `HOST:PORT`.
    authority: String,
    path: String,
}

impl std::str::FromStr for MetricsUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<MetricsUrl, String> {
        let rest = s.strip_prefix("http://").ok_or_else(|| {
            format!("{s:?} is not an http:// address like http://127.0.0.1:8080/metrics")
        })?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/metrics"),
        };
        if authority.is_empty() {
            return Err(format!("{s:?} names no host"));
        }
        let authority = if authority.contains(':') && !authority.ends_with(']') {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        Ok(MetricsUrl {
            authority,
            path: path.to_owned(),
        })
    }
}

impl std::fmt::Display for MetricsUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}{}", self.authority, self.path)
    }
}

/// One reading of the metrics page: each series, named as rendered (`meshgate_clients`,
/// `meshgate_dropped_total{reason="slow_consumer"}`), and its value.
#[derive(Clone, Debug, Default)]
pub struct Scrape {
    series: HashMap<String, f64>,
}

impl Scrape {
    /// Parses the Prometheus text format; comment lines and lines without a value are skipped.
    pub fn parse(text: &str) -> Scrape {
        let series = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (name, value) = l.trim().rsplit_once(' ')?;
                Some((name.trim().to_owned(), value.parse().ok()?))
            })
            .collect();
        Scrape { series }
    }

    /// The value of a series; 0 when the page has none.
    pub fn value(&self, series: &str) -> u64 {
        self.series.get(series).map_or(0, |v| v.max(0.0) as u64)
    }

    /// The value of a series as the page gives it, fractions kept; `None` when the page has
    /// none.
    pub fn float(&self, series: &str) -> Option<f64> {
        self.series.get(series).copied()
    }

    /// `meshgate_resident_memory_bytes`.
    pub fn resident(&self) -> u64 {
        self.value("meshgate_resident_memory_bytes")
    }

    /// Whether the page holds `series`.
    pub fn has(&self, series: &str) -> bool {
        self.series.contains_key(series)
    }
}

/// Reads the metrics page, from a Tokio task without holding up its worker.
pub async fn scrape(url: &MetricsUrl) -> Result<Scrape, String> {
    let url = url.clone();
    tokio::task::spawn_blocking(move || scrape_blocking(&url))
        .await
        .map_err(|e| format!("the metrics reader failed: {e}"))?
}

/// Reads the metrics page.
pub fn scrape_blocking(url: &MetricsUrl) -> Result<Scrape, String> {
    let failed = |e: std::io::Error| format!("cannot read the gateway's metrics at {url}: {e}");
    let addr = url
        .authority
        .to_socket_addrs()
        .map_err(failed)?
        .next()
        .ok_or_else(|| format!("{} resolves to no address", url.authority))?;
    let mut stream = TcpStream::connect_timeout(&addr, SCRAPE_TIMEOUT).map_err(failed)?;
    stream
        .set_read_timeout(Some(SCRAPE_TIMEOUT))
        .map_err(failed)?;
    stream
        .set_write_timeout(Some(SCRAPE_TIMEOUT))
        .map_err(failed)?;
    write!(
        stream,
        "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        url.path, url.authority
    )
    .map_err(failed)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).map_err(failed)?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("the answer from {url} has no end of header"))?;
    let status = head.split_whitespace().nth(1).unwrap_or_default();
    if status != "200" {
        return Err(format!("{url} answered {status}, not 200"));
    }
    let scrape = Scrape::parse(body);
    if !scrape.has("meshgate_resident_memory_bytes") {
        return Err(format!("{url} is not a meshgate metrics page"));
    }
    Ok(scrape)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_take_a_host_a_port_and_a_path() {
        let url: MetricsUrl = "http://127.0.0.1:8080/metrics".parse().unwrap();
        assert_eq!(url.authority, "127.0.0.1:8080");
        assert_eq!(url.path, "/metrics");
        let url: MetricsUrl = "http://localhost:9".parse().unwrap();
        assert_eq!(url.path, "/metrics");
        let url: MetricsUrl = "http://gateway/m".parse().unwrap();
        assert_eq!(url.authority, "gateway:80");
        assert!("127.0.0.1:8080".parse::<MetricsUrl>().is_err());
        assert!("http:///metrics".parse::<MetricsUrl>().is_err());
    }

    #[test]
    fn a_page_gives_each_series_by_its_rendered_name() {
        let page = "# HELP meshgate_clients Sessions past CONNECT.\n\
                    # TYPE meshgate_clients gauge\n\
                    meshgate_clients 7\n\
                    meshgate_clients{shard=\"0\"} 3\n\
                    meshgate_dropped_total{reason=\"slow_consumer\"} 12\n\
                    meshgate_resident_memory_bytes 1.5e7\n";
        let s = Scrape::parse(page);
        assert_eq!(s.value("meshgate_clients"), 7);
        assert_eq!(s.value("meshgate_clients{shard=\"0\"}"), 3);
        assert_eq!(
            s.value("meshgate_dropped_total{reason=\"slow_consumer\"}"),
            12
        );
        assert_eq!(s.resident(), 15_000_000);
        assert_eq!(s.value("meshgate_nothing"), 0);
    }
}
