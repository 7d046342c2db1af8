//! Token auth for one upstream: tokens cached per scope until shortly before they expire, one token
//! request per scope at a time, and credentials sent only to hosts they are meant for.

use std::collections::{HashMap, HashSet};
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
use crate::sync::lock;

/// How long a token lives when the token server doesn't say (or says nothing usable).
const DEFAULT_TOKEN_LIFETIME: u64 = 60;
/// The longest a token is kept, whatever the token server says.
const MAX_TOKEN_LIFETIME: u64 = 24 * 60 * 60;
/// How many tokens are kept. Scopes name repositories clients choose, so the map is capped: expired
/// tokens go first, then the ones that expire soonest.
const MAX_TOKENS: usize = 1024;
/// The largest token response regcache reads.
const MAX_TOKEN_RESPONSE: usize = 64 * 1024;
/// How many token realm hosts the "credentials withheld" warning is logged for (the realm comes from
/// the upstream, so the set of hosts is bounded).
const MAX_WITHHELD_WARNINGS: usize = 16;

/// A bearer token. `Debug` never shows it.
#[derive(Clone)]
pub struct Token(Arc<str>);

impl Token {
    /// The token itself, for the `Authorization` header (never for a log).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

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
    /// Tokens by scope, until when they may be used. Bounded: at most MAX_TOKENS (see
    /// `Tokens::remember`). Shared with the token fetches, which store what they fetched.
    tokens: Arc<Tokens>,
    /// The last Bearer challenge seen, so later scopes fetch a token before their first request.
    bearer: Mutex<Option<(String, Option<String>)>>,
    basic: Mutex<bool>,
    /// Realm hosts already warned about withholding the credentials from, at most
    /// [`MAX_WITHHELD_WARNINGS`].
    withheld: Mutex<HashSet<String>>,
    /// Token requests by scope; bounded by the singleflight's own cap.
    fetches: Singleflight<String, Result<(Token, Duration), UpstreamError>>,
}

#[derive(Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    /// Any JSON: token servers send integers, floats, strings, negatives; see [`token_lifetime`].
    expires_in: Option<serde_json::Value>,
}

/// Cached tokens by scope, with until when each may be used.
#[derive(Default)]
struct Tokens(Mutex<HashMap<String, (Token, Instant)>>);

impl Tokens {
    /// A token for `scope` that may still be used.
    fn cached(&self, scope: &str) -> Option<Token> {
        let mut tokens = lock(&self.0);
        match tokens.get(scope) {
            Some((token, until)) if Instant::now() < *until => Some(token.clone()),
            Some(_) => {
                tokens.remove(scope);
                None
            }
            None => None,
        }
    }

    /// Forget the token of `scope` (the upstream refused it).
    fn forget(&self, scope: &str) {
        lock(&self.0).remove(scope);
    }

    /// Store a token fetched for `scope` that lives `lifetime`, to be used until shortly before it
    /// expires. A full map first drops expired tokens, then the one that expires soonest.
    fn remember(&self, scope: &str, token: &Token, lifetime: Duration) {
        let margin = (lifetime / 10).max(Duration::from_secs(5)).min(lifetime / 2);
        let now = Instant::now();
        let until = now.checked_add(lifetime.saturating_sub(margin)).unwrap_or(now);
        let mut tokens = lock(&self.0);
        if tokens.len() >= MAX_TOKENS && !tokens.contains_key(scope) {
            tokens.retain(|_, (_, until)| now < *until);
            if tokens.len() >= MAX_TOKENS {
                let soonest = tokens.iter().min_by_key(|(_, (_, until))| *until).map(|(s, _)| s.clone());
                if let Some(s) = soonest {
                    tokens.remove(&s);
                }
            }
        }
        tokens.insert(scope.to_owned(), (token.clone(), until));
    }

}

impl Auth {
    /// Token state for `upstream`.
    pub fn new(upstream: UpstreamConfig) -> Auth {
        Auth {
            upstream,
            tokens: Arc::default(),
            bearer: Mutex::new(None),
            basic: Mutex::new(false),
            withheld: Mutex::new(HashSet::new()),
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
        let known = lock(&self.bearer).clone();
        if let Some((realm, service)) = known {
            let token = self.fetch(transport, &realm, service.as_deref(), scope).await?;
            return Ok(Authorization::Bearer(token));
        }
        if *lock(&self.basic) && self.upstream.credentials.is_some() {
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
                *lock(&self.bearer) = Some((realm.clone(), service.clone()));
                // A cached token that was just refused is stale.
                self.tokens.forget(scope);
                let scope = asked.as_deref().unwrap_or(scope);
                let token = self.fetch(transport, &realm, service.as_deref(), scope).await?;
                Ok(Some(Authorization::Bearer(token)))
            }
            Challenge::Basic => {
                if self.upstream.credentials.is_none() {
                    return Ok(None);
                }
                *lock(&self.basic) = true;
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
        self.tokens.cached(scope)
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
        // The realm is the upstream's text: it goes to the log, the client is told in words.
        let unusable = |why: &str| {
            tracing::warn!(upstream = %self.upstream.name, realm, why, "unusable token realm in the upstream's challenge");
            UpstreamError::Protocol("the upstream's token realm is not a usable http(s) URL".into())
        };
        let mut url = Url::parse(realm).map_err(|e| unusable(&e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(unusable("not http(s)"));
        }
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            q.append_pair("scope", scope);
        }
        let basic = self
            .credentials_for(&url).and_then(|c| HeaderValue::from_str(&basic_value(c)).ok());
        let (transport, tokens, key) = (transport.clone(), self.tokens.clone(), scope.to_owned());
        // The shared call stores the token itself: once, even if every caller has gone meanwhile.
        let (token, _) = self
            .fetches
            .run(key.clone(), move || async move {
                let (token, lifetime) = request_token(&transport, url, basic).await?;
                tokens.remember(&key, &token, lifetime);
                Ok((token, lifetime))
            })
            .await?;
        Ok(token)
    }

    /// `Tokens::remember`, for tests.
    #[cfg(test)]
    fn remember(&self, scope: &str, token: &Token, lifetime: Duration) {
        self.tokens.remember(scope, token, lifetime);
    }

    /// The credentials to send to the token realm `realm`, if any are configured and may go there.
    /// Withholding them is logged once per realm host, so an operator knows why pulls are anonymous.
    fn credentials_for(&self, realm: &Url) -> Option<&Credentials> {
        let credentials = self.upstream.credentials.as_ref()?;
        if self.may_receive_credentials(realm) {
            return Some(credentials);
        }
        let host = realm.host_str().unwrap_or_default().to_ascii_lowercase();
        let first = {
            let mut warned = lock(&self.withheld);
            warned.len() < MAX_WITHHELD_WARNINGS && warned.insert(host.clone())
        };
        if first {
            tracing::warn!(
                upstream = %self.upstream.name, realm_host = %host, scheme = realm.scheme(),
                "credentials withheld from the token realm (not the upstream's domain, or plain HTTP): \
                 token requests are anonymous; add the host to the upstream's auth_hosts if it should receive them"
            );
        }
        None
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
    // A 401 or 403 is the upstream refusing regcache (its credentials, or anonymous access), kept as
    // the upstream's answer; any other failure is a token server that regcache can't use.
    if matches!(status.as_u16(), 401 | 403) {
        return Err(UpstreamError::Status {
            status,
            code: None,
            retry_after: None,
            rate_limit: super::RateLimit::default(),
            message: format!("token server answered {status}"),
        });
    }
    if !status.is_success() {
        return Err(UpstreamError::Protocol(format!("token server answered {status}")));
    }
    parse_token_response(&body)
}

/// The token in a token server's answer (a non-empty `token`, else OAuth2's `access_token`) and
/// how long it lives ([`token_lifetime`]). Public for the property tests and fuzz targets of outside input.
#[doc(hidden)]
pub fn parse_token_response(body: &[u8]) -> Result<(Token, Duration), UpstreamError> {
    let parsed: TokenResponse = serde_json::from_slice(body)
        .map_err(|e| UpstreamError::Protocol(format!("token response is not JSON: {e}")))?;
    // An empty `token` beside an `access_token` is no token: the other field is.
    let given = |t: Option<String>| t.filter(|t| !t.is_empty());
    let text = given(parsed.token)
        .or_else(|| given(parsed.access_token))
        .ok_or_else(|| UpstreamError::Protocol("token response has no token".into()))?;
    Ok((Token(text.into()), token_lifetime(parsed.expires_in.as_ref())))
}

/// How long a token lives, from the token server's `expires_in` (seconds): a positive number
/// (integer, float, or a string of digits), at most [`MAX_TOKEN_LIFETIME`]; anything else (missing,
/// zero, negative, not a number) is [`DEFAULT_TOKEN_LIFETIME`].
fn token_lifetime(expires_in: Option<&serde_json::Value>) -> Duration {
    use serde_json::Value;
    let secs = match expires_in {
        Some(Value::Number(n)) => n.as_u64().or_else(|| {
            // Float to integer casts saturate: no overflow, whatever the float.
            n.as_f64().filter(|f| f.is_finite() && *f >= 1.0).map(|f| f as u64)
        }),
        Some(Value::String(s)) => s.trim().parse::<u64>().ok(),
        _ => None,
    };
    Duration::from_secs(secs.filter(|s| *s > 0).unwrap_or(DEFAULT_TOKEN_LIFETIME).min(MAX_TOKEN_LIFETIME))
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

    /// Everything `f` logs, as text.
    fn logged(f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt().with_ansi(false).with_writer(move || sink.clone()).finish();
        tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        text
    }

    #[test]
    fn withheld_credentials_are_logged_once_per_realm_host() {
        let hub = auth("https://registry-1.docker.io", "");
        let url = |s: &str| Url::parse(s).unwrap();
        let log = logged(|| {
            for _ in 0..3 {
                assert!(hub.credentials_for(&url("https://evil.example/token?scope=a")).is_none());
            }
            assert!(hub.credentials_for(&url("https://auth.docker.io/token")).is_some());
            assert!(hub.credentials_for(&url("http://auth.docker.io/token")).is_none(), "plain HTTP");
            for i in 0..3 * MAX_WITHHELD_WARNINGS {
                assert!(hub.credentials_for(&url(&format!("https://h{i}.example/token"))).is_none());
            }
        });
        let warnings: Vec<&str> = log.lines().filter(|l| l.contains("credentials withheld")).collect();
        assert_eq!(warnings.len(), MAX_WITHHELD_WARNINGS, "bounded:\n{log}");
        assert_eq!(warnings.iter().filter(|l| l.contains("realm_host=evil.example")).count(), 1, "{log}");
        assert_eq!(warnings.iter().filter(|l| l.contains("realm_host=auth.docker.io")).count(), 1, "{log}");
        assert!(warnings.iter().all(|l| l.contains("auth_hosts")), "{log}");

        let anonymous = Auth::new(Config::from_toml("", &Overrides::default(), std::path::Path::new(".")).unwrap().upstreams[0].clone());
        let log = logged(|| assert!(anonymous.credentials_for(&url("https://evil.example/token")).is_none()));
        assert!(log.is_empty(), "nothing withheld without credentials: {log}");
    }

    #[test]
    fn token_lifetimes_are_clamped() {
        use serde_json::json;
        let day = Duration::from_secs(MAX_TOKEN_LIFETIME);
        let default = Duration::from_secs(DEFAULT_TOKEN_LIFETIME);
        let cases = [
            (Some(json!(300)), Duration::from_secs(300)),
            (Some(json!(u64::MAX)), day),
            (Some(json!(18_446_744_073_709_551_616.0)), day),
            (Some(json!(1e300)), day),
            (Some(json!(86_401)), day),
            (Some(json!(-1)), default),
            (Some(json!(i64::MIN)), default),
            (Some(json!(0)), default),
            (Some(json!(0.5)), default),
            (Some(json!(1.5)), Duration::from_secs(1)),
            (Some(json!("300")), Duration::from_secs(300)),
            (Some(json!("soon")), default),
            (Some(json!(null)), default),
            (Some(json!({"s": 1})), default),
            (None, default),
        ];
        for (expires_in, want) in cases {
            assert_eq!(token_lifetime(expires_in.as_ref()), want, "{expires_in:?}");
        }
    }

    #[test]
    fn every_lifetime_can_be_remembered() {
        let a = auth("https://registry.example.com", "");
        let t = Token("t".into());
        for secs in [0, 1, 5, 60, MAX_TOKEN_LIFETIME, u64::MAX] {
            a.remember("repository:x:pull", &t, Duration::from_secs(secs));
        }
        a.remember("repository:x:pull", &t, Duration::MAX);
    }

    #[test]
    fn the_token_map_drops_expired_tokens_and_is_capped() {
        let a = auth("https://registry.example.com", "");
        let t = Token("t".into());
        let len = || a.tokens.0.lock().unwrap().len();
        // Full of expired tokens (a lifetime of zero is over at once): they make room.
        for i in 0..MAX_TOKENS {
            a.remember(&format!("repository:gone{i}:pull"), &t, Duration::ZERO);
        }
        assert!(a.cached("repository:gone0:pull").is_none());
        assert_eq!(len(), MAX_TOKENS - 1, "an expired token found on lookup is dropped");
        a.remember("repository:gone0:pull", &t, Duration::ZERO);
        a.remember("repository:live:pull", &t, Duration::from_secs(300));
        assert_eq!(len(), 1, "expired tokens were dropped");
        // Full of live tokens: the one that expires soonest goes.
        a.remember("repository:soon:pull", &t, Duration::from_secs(60));
        for i in 0..MAX_TOKENS {
            a.remember(&format!("repository:r{i}:pull"), &t, Duration::from_secs(300));
        }
        assert_eq!(len(), MAX_TOKENS);
        assert!(a.cached("repository:soon:pull").is_none(), "the soonest to expire made room");
        assert!(a.cached(&format!("repository:r{}:pull", MAX_TOKENS - 1)).is_some());
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let t = Token("very-secret".into());
        assert!(!format!("{t:?}").contains("very-secret"));
    }
}
