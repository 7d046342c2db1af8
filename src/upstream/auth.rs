//! Token auth for one upstream: tokens cached per scope until shortly before they expire, one token
//! request per scope at a time, and credentials sent only to hosts they are meant for.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use http::{HeaderValue, Method};
use serde::Deserialize;
use url::Url;

use super::challenge::Challenge;
use super::{Transport, UpstreamError};
use crate::config::{Credentials, UpstreamConfig};
use crate::singleflight::Singleflight;

/// How long a token lives when the token server doesn't say.
const DEFAULT_TOKEN_LIFETIME: u64 = 60;
/// The largest token response regcache reads.
const MAX_TOKEN_RESPONSE: usize = 64 * 1024;

/// A bearer token. `Debug` never shows it.
#[derive(Clone)]
pub struct Token(Arc<str>);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(***)")
    }
}

/// What to put in `Authorization` for requests to the upstream itself.
#[derive(Clone, Debug)]
pub enum Authorization {
    /// Nothing: anonymous.
    None,
    /// `Bearer <token>`.
    Bearer(Token),
    /// `Basic <credentials>`.
    Basic,
}

/// The token state of one upstream.
pub struct Auth {
    upstream: UpstreamConfig,
    // std Mutexes: held only for map lookups and inserts, never across an await.
    tokens: Mutex<HashMap<String, (Token, Instant)>>,
    /// The last Bearer challenge seen, so later scopes fetch a token before their first request.
    bearer: Mutex<Option<(String, Option<String>)>>,
    basic: Mutex<bool>,
    fetches: Singleflight<String, Result<(Token, Duration), UpstreamError>>,
}

#[derive(Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

impl Auth {
    /// Token state for `upstream`.
    pub fn new(upstream: UpstreamConfig) -> Auth {
        Auth {
            upstream,
            tokens: Mutex::new(HashMap::new()),
            bearer: Mutex::new(None),
            basic: Mutex::new(false),
            fetches: Singleflight::default(),
        }
    }

    /// The scope for pulling `repository`.
    pub fn pull_scope(repository: &str) -> String {
        format!("repository:{repository}:pull")
    }

    /// The authorization to send for `scope` before any challenge, from what is already known.
    pub async fn current(&self, transport: &Transport, scope: &str) -> Result<Authorization, UpstreamError> {
        if let Some(token) = self.cached(scope) {
            return Ok(Authorization::Bearer(token));
        }
        let known = self.bearer.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some((realm, service)) = known {
            let token = self.fetch(transport, &realm, service.as_deref(), scope).await?;
            return Ok(Authorization::Bearer(token));
        }
        if *self.basic.lock().unwrap_or_else(|p| p.into_inner()) && self.upstream.credentials.is_some() {
            return Ok(Authorization::Basic);
        }
        Ok(Authorization::None)
    }

    /// Answer a challenge for `scope`: the authorization to retry with, or `None` if there is nothing
    /// new to try.
    pub async fn answer(
        &self,
        transport: &Transport,
        challenge: Challenge,
        scope: &str,
    ) -> Result<Option<Authorization>, UpstreamError> {
        match challenge {
            Challenge::Bearer { realm, service, scope: asked } => {
                *self.bearer.lock().unwrap_or_else(|p| p.into_inner()) = Some((realm.clone(), service.clone()));
                // A cached token that was just refused is stale.
                self.tokens.lock().unwrap_or_else(|p| p.into_inner()).remove(scope);
                let scope = asked.as_deref().unwrap_or(scope);
                let token = self.fetch(transport, &realm, service.as_deref(), scope).await?;
                Ok(Some(Authorization::Bearer(token)))
            }
            Challenge::Basic => {
                if self.upstream.credentials.is_none() {
                    return Ok(None);
                }
                *self.basic.lock().unwrap_or_else(|p| p.into_inner()) = true;
                Ok(Some(Authorization::Basic))
            }
        }
    }

    /// The header value for `auth`, if any.
    pub fn header(&self, auth: &Authorization) -> Option<HeaderValue> {
        let text = match auth {
            Authorization::None => return None,
            Authorization::Bearer(t) => format!("Bearer {}", t.0),
            Authorization::Basic => basic_value(self.upstream.credentials.as_ref()?),
        };
        let mut v = HeaderValue::from_str(&text).ok()?;
        v.set_sensitive(true);
        Some(v)
    }

    fn cached(&self, scope: &str) -> Option<Token> {
        let tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens.get(scope).filter(|(_, until)| Instant::now() < *until).map(|(t, _)| t.clone())
    }

    async fn fetch(
        &self,
        transport: &Transport,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<Token, UpstreamError> {
        if let Some(token) = self.cached(scope) {
            return Ok(token);
        }
        let mut url = Url::parse(realm).map_err(|e| UpstreamError::Protocol(format!("token realm {realm:?}: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(UpstreamError::Protocol(format!("token realm {realm:?} is not http(s)")));
        }
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            q.append_pair("scope", scope);
        }
        let credentials = self.upstream.credentials.as_ref().filter(|_| self.may_receive_credentials(&url));
        let basic = credentials.and_then(|c| HeaderValue::from_str(&basic_value(c)).ok());
        let transport = transport.clone();
        let key = scope.to_owned();
        let (token, lifetime) = self
            .fetches
            .run(key, move || async move { request_token(&transport, url, basic).await })
            .await?;
        self.remember(scope, &token, lifetime);
        Ok(token)
    }

    /// Store a token fetched for `scope` that lives `lifetime`.
    fn remember(&self, scope: &str, token: &Token, lifetime: Duration) {
        let margin = (lifetime / 10).max(Duration::from_secs(5)).min(lifetime / 2);
        let until = Instant::now() + lifetime - margin;
        self.tokens.lock().unwrap_or_else(|p| p.into_inner()).insert(scope.to_owned(), (token.clone(), until));
    }

    /// Whether the configured credentials may go to `realm`: the upstream's own host, its registrable
    /// domain (`auth.docker.io` for `registry-1.docker.io`), or a configured `auth_hosts` entry; never
    /// over plain HTTP unless the upstream itself is plain HTTP.
    fn may_receive_credentials(&self, realm: &Url) -> bool {
        let (Some(host), Some(own)) = (realm.host_str(), self.upstream.url.host_str()) else { return false };
        let host = host.to_ascii_lowercase();
        let own = own.to_ascii_lowercase();
        if realm.scheme() == "http" && self.upstream.url.scheme() == "https" {
            return false;
        }
        if host == own || self.upstream.auth_hosts.contains(&host) {
            return true;
        }
        let is_ip = |h: &str| h.parse::<std::net::IpAddr>().is_ok() || h.starts_with('[');
        if is_ip(&host) || is_ip(&own) {
            return false;
        }
        match (psl::domain_str(&host), psl::domain_str(&own)) {
            (Some(a), Some(b)) => a == b,
            _ => false,
        }
    }
}

/// `Basic base64(user:pass)`.
fn basic_value(c: &Credentials) -> String {
    let raw = format!("{}:{}", c.username, c.password);
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(raw))
}

async fn request_token(
    transport: &Transport,
    url: Url,
    basic: Option<HeaderValue>,
) -> Result<(Token, Duration), UpstreamError> {
    let mut headers = http::HeaderMap::new();
    if let Some(mut v) = basic {
        v.set_sensitive(true);
        headers.insert(http::header::AUTHORIZATION, v);
    }
    transport.count_token_fetch();
    let resp = transport.send(Method::GET, &url, headers).await?;
    let status = resp.status();
    let body = transport.read_body(resp, MAX_TOKEN_RESPONSE).await?;
    if !status.is_success() {
        return Err(UpstreamError::Status {
            status: if status == http::StatusCode::UNAUTHORIZED || status == http::StatusCode::FORBIDDEN {
                status
            } else {
                http::StatusCode::BAD_GATEWAY
            },
            code: None,
            retry_after: None,
            rate_limit: super::RateLimit::default(),
            message: format!("token server answered {status}"),
        });
    }
    let parsed: TokenResponse = serde_json::from_slice(&body)
        .map_err(|e| UpstreamError::Protocol(format!("token response is not JSON: {e}")))?;
    let text = parsed
        .token
        .or(parsed.access_token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| UpstreamError::Protocol("token response has no token".into()))?;
    let lifetime = Duration::from_secs(parsed.expires_in.filter(|s| *s > 0).unwrap_or(DEFAULT_TOKEN_LIFETIME));
    Ok((Token(text.into()), lifetime))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Overrides};

    fn auth(url: &str, auth_hosts: &str) -> Auth {
        let toml = format!("[[upstream]]\nname = \"x.io\"\nurl = \"{url}\"\nusername = \"u\"\npassword = \"p\"\nauth_hosts = [{auth_hosts}]\n");
        let c = Config::from_toml(&toml, &Overrides::default(), std::path::Path::new(".")).unwrap();
        Auth::new(c.upstreams[0].clone())
    }

    #[test]
    fn credentials_go_only_where_they_belong() {
        let hub = auth("https://registry-1.docker.io", "\"login.example.com\"");
        let cases = [
            ("https://auth.docker.io/token", true),
            ("https://registry-1.docker.io/token", true),
            ("https://login.example.com/token", true),
            ("http://auth.docker.io/token", false),
            ("https://evil.example/token", false),
            ("https://docker.io.evil.example/token", false),
            ("https://127.0.0.1/token", false),
        ];
        for (realm, want) in cases {
            assert_eq!(hub.may_receive_credentials(&Url::parse(realm).unwrap()), want, "{realm}");
        }
        let uk = auth("https://registry.example.co.uk", "");
        assert!(!uk.may_receive_credentials(&Url::parse("https://other.co.uk/token").unwrap()), "public suffixes are not a domain");
        assert!(uk.may_receive_credentials(&Url::parse("https://auth.example.co.uk/token").unwrap()));
        let ip = auth("http://127.0.0.1:5000", "");
        assert!(ip.may_receive_credentials(&Url::parse("http://127.0.0.1:5001/token").unwrap()), "same host, other port");
        assert!(!ip.may_receive_credentials(&Url::parse("http://127.0.0.2/token").unwrap()));
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let t = Token("very-secret".into());
        assert!(!format!("{t:?}").contains("very-secret"));
    }
}
