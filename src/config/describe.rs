//! `regcache check-config`: the effective settings, one per line, with every secret masked
//! (passwords, the S3 secret key, htpasswd hashes). Each table's part is written by its type.

use super::{Access, Config};

impl Config {
    /// The effective settings, one per line, secrets masked.
    pub fn describe(&self) -> String {
        let mut s = format!("listen = {}\ndata_dir = {}\n", self.listen, self.data_dir.display());
        if let Some(a) = self.admin_listen {
            s.push_str(&format!("admin_listen = {a}\n"));
        }
        match &self.tls {
            Some(t) => s.push_str(&format!("tls = HTTPS with {} (key {})\n", t.cert.display(), t.key.display())),
            None => s.push_str("tls = none (plain HTTP)\n"),
        }
        s.push_str(&self.access.describe());
        s.push_str(&format!("log_format = {}\n", self.log_format.as_str()));
        let c = &self.connections;
        s.push_str(&format!(
            "header_timeout = {}\nkeepalive_timeout = {}\nclient_idle_timeout = {}\nmax_connections = {}\n",
            humantime::format_duration(c.header_timeout),
            humantime::format_duration(c.keepalive_timeout),
            humantime::format_duration(c.client_idle_timeout),
            c.max_connections
        ));
        match self.max_size {
            Some(m) => s.push_str(&format!("max_size = {m} bytes\n")),
            None => s.push_str("max_size = unlimited\n"),
        }
        let f = &self.fills;
        s.push_str(&format!(
            "fills: min_free {} bytes, max_temp {}, unread_max {}, unread_min_rate {} bytes/s over {}\n",
            f.min_free,
            f.max_temp.map_or("unlimited".to_owned(), |m| format!("{m} bytes")),
            humantime::format_duration(f.unread_max),
            f.unread_min_rate,
            humantime::format_duration(f.rate_window),
        ));
        s.push_str(&self.storage.describe());
        for u in &self.upstreams {
            s.push_str(&u.describe());
        }
        s
    }
}

impl Access {
    /// Its effective settings, one per line, hashes not shown.
    fn describe(&self) -> String {
        let mut s = String::new();
        if self.users.is_empty() {
            s.push_str("access.htpasswd = none (no credentials needed)\n");
        } else {
            let users: Vec<&str> = self.users.iter().map(|(u, _)| u.as_str()).collect();
            s.push_str(&format!("access.htpasswd = users {} (hashes not shown)\n", users.join(", ")));
            s.push_str(&format!("access.max_failures = {} per address per minute\n", self.max_failures));
        }
        if self.allow.is_empty() {
            s.push_str("access.allow = any address\n");
        } else {
            let nets: Vec<String> = self.allow.iter().map(|n| n.to_string()).collect();
            s.push_str(&format!("access.allow = {}\n", nets.join(", ")));
        }
        s
    }
}
