//! `backend_config.nats`: the server urls, the one authentication method (file or
//! environment), TLS and the JetStream layout, into one `NatsOptions`.

use std::path::PathBuf;

use crate::config::{NatsAuth, NatsOptions, StorageKind};
use crate::error::Result;
use crate::instance::validate_service_name;

use super::env::{
    check_url, non_empty, parse_bool, parse_count, parse_duration, split_urls, Loader,
};
use super::raw::RawNats;
use super::{bare, config_error, DEFAULT_NATS_URL};

impl<'a> Loader<'a> {
    pub(super) fn load_nats(&mut self, raw: RawNats, nats: &mut NatsOptions) -> Result<()> {
        const N: &str = "backend_config.nats";

        // Servers.
        let mut urls: Option<(&'static str, Vec<String>)> = None;
        if let Some(url) = raw.url {
            urls = Some(("backend_config.nats.url", split_urls(&url.text())));
        }
        if let Some(list) = raw.urls {
            if urls.is_some() {
                return Err(self.at(
                    "backend_config.nats.urls",
                    "give either `url` or `urls`, not both",
                ));
            }
            let listed = list.0.iter().flat_map(|u| split_urls(&u.text())).collect();
            urls = Some(("backend_config.nats.urls", listed));
        }
        let mut urls = urls.filter(|(_, list)| !list.is_empty());
        if let Some(text) = self.var("PRISM_NATS_URL") {
            let key = urls.as_ref().map_or("backend_config.nats.url", |(k, _)| *k);
            self.overridden.insert(key, "PRISM_NATS_URL");
            urls = Some((key, split_urls(&text)));
        }
        if urls.is_none() {
            if let Some(text) = self.var("NATS_URL") {
                self.overridden
                    .insert("backend_config.nats.url", "NATS_URL");
                urls = Some(("backend_config.nats.url", split_urls(&text)));
            }
        }
        nats.urls = match urls {
            Some((key, list)) => {
                for url in &list {
                    check_url(url).map_err(|m| self.at(key, m))?;
                }
                list
            }
            None => vec![DEFAULT_NATS_URL.to_string()],
        };

        // Authentication: the file's, unless the environment chooses a method.
        let mut token = raw.token.as_ref().and_then(non_empty);
        let mut user = raw.user.as_ref().and_then(non_empty);
        let mut password = raw.password.as_ref().and_then(non_empty);
        let mut creds = raw.creds_file.as_ref().and_then(non_empty);
        let mut seed = raw.nkey_seed.as_ref().and_then(non_empty);
        let mut seed_file = raw.nkey_seed_file.as_ref().and_then(non_empty);
        let env_token = self.var("PRISM_NATS_TOKEN");
        let env_user = self.var("PRISM_NATS_USER");
        let env_password = self.var("PRISM_NATS_PASSWORD");
        let env_creds = self.var("PRISM_NATS_CREDS");
        let env_seed = self.var("PRISM_NATS_NKEY_SEED");
        let mut chosen = Vec::new();
        if env_token.is_some() {
            chosen.push("PRISM_NATS_TOKEN");
        }
        if env_user.is_some() || env_password.is_some() {
            chosen.push(if env_user.is_some() {
                "PRISM_NATS_USER"
            } else {
                "PRISM_NATS_PASSWORD"
            });
        }
        if env_creds.is_some() {
            chosen.push("PRISM_NATS_CREDS");
        }
        if env_seed.is_some() {
            chosen.push("PRISM_NATS_NKEY_SEED");
        }
        match chosen.as_slice() {
            [] => {}
            [_] => {
                if env_user.is_some() || env_password.is_some() {
                    user = env_user.or(user);
                    password = env_password.or(password);
                    token = None;
                    creds = None;
                    seed = None;
                    seed_file = None;
                } else {
                    token = env_token;
                    creds = env_creds;
                    seed = env_seed;
                    user = None;
                    password = None;
                    seed_file = None;
                }
                for (key, var) in [
                    ("backend_config.nats.token", "PRISM_NATS_TOKEN"),
                    ("backend_config.nats.user", "PRISM_NATS_USER"),
                    ("backend_config.nats.password", "PRISM_NATS_PASSWORD"),
                    ("backend_config.nats.creds_file", "PRISM_NATS_CREDS"),
                    ("backend_config.nats.nkey_seed", "PRISM_NATS_NKEY_SEED"),
                ] {
                    if self.var(var).is_some() {
                        self.overridden.insert(key, var);
                    }
                }
            }
            several => {
                return Err(config_error(format!(
                    "environment variables {} each choose a NATS authentication method; set one",
                    several.join(", ")
                )))
            }
        }
        match (&user, &password) {
            (Some(_), None) => {
                return Err(self.at(
                    "backend_config.nats.user",
                    "a user needs a password (backend_config.nats.password)",
                ))
            }
            (None, Some(_)) => {
                return Err(self.at(
                    "backend_config.nats.password",
                    "a password needs a user (backend_config.nats.user)",
                ))
            }
            _ => {}
        }
        if seed.is_some() && seed_file.is_some() {
            return Err(self.at(
                "backend_config.nats.nkey_seed_file",
                "give either `nkey_seed` or `nkey_seed_file`, not both",
            ));
        }
        let methods: Vec<&str> = [
            (token.is_some(), "token"),
            (user.is_some(), "user/password"),
            (creds.is_some(), "creds_file"),
            (seed.is_some() || seed_file.is_some(), "nkey_seed"),
        ]
        .into_iter()
        .filter_map(|(set, name)| set.then_some(name))
        .collect();
        if methods.len() > 1 {
            return Err(self.at(
                N,
                format!(
                    "more than one authentication method ({}); keep one",
                    methods.join(", ")
                ),
            ));
        }
        // At most one is set: more than one was refused above.
        nats.auth = token
            .map(NatsAuth::Token)
            .or_else(|| {
                user.zip(password)
                    .map(|(user, password)| NatsAuth::UserPassword { user, password })
            })
            .or_else(|| creds.map(|path| NatsAuth::CredentialsFile(PathBuf::from(path))))
            .or_else(|| seed.map(NatsAuth::NkeySeed))
            .or_else(|| seed_file.map(|path| NatsAuth::NkeySeedFile(PathBuf::from(path))));

        // TLS.
        let tls = raw.tls.unwrap_or_default();
        let mut ca = tls.ca_file.as_ref().and_then(non_empty);
        if let Some(path) = self.var("PRISM_NATS_TLS_CA") {
            self.overridden
                .insert("backend_config.nats.tls.ca_file", "PRISM_NATS_TLS_CA");
            ca = Some(path);
        }
        nats.tls_ca = ca.map(PathBuf::from);
        match (
            tls.cert_file.as_ref().and_then(non_empty),
            tls.key_file.as_ref().and_then(non_empty),
        ) {
            (Some(cert), Some(key)) => {
                nats.tls_client_cert = Some((PathBuf::from(cert), PathBuf::from(key)))
            }
            (Some(_), None) => {
                return Err(self.at(
                    "backend_config.nats.tls.cert_file",
                    "a client certificate needs its key (tls.key_file)",
                ))
            }
            (None, Some(_)) => {
                return Err(self.at(
                    "backend_config.nats.tls.key_file",
                    "a client key needs its certificate (tls.cert_file)",
                ))
            }
            (None, None) => {}
        }
        if let Some(required) = self.layered(
            "backend_config.nats.tls.required",
            tls.required,
            None,
            parse_bool,
        )? {
            nats.tls_required = required;
        }

        // JetStream layout and timeouts.
        for (key, raw, field) in [
            ("backend_config.nats.bucket", raw.bucket, &mut nats.bucket),
            (
                "backend_config.nats.event_stream",
                raw.event_stream,
                &mut nats.event_stream,
            ),
        ] {
            if let Some(name) = raw.as_ref().and_then(non_empty) {
                if !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                {
                    return Err(self.at(
                        key,
                        format!("{name:?} must be ASCII letters, digits, '-' or '_'"),
                    ));
                }
                *field = name;
            }
        }
        if let Some(prefix) = raw.subject_prefix.as_ref().and_then(non_empty) {
            validate_service_name(&prefix)
                .map_err(|e| self.at("backend_config.nats.subject_prefix", bare(&e)))?;
            nats.subject_prefix = prefix;
        }
        if let Some(replicas) = self.layered(
            "backend_config.nats.replicas",
            raw.replicas,
            None,
            parse_count,
        )? {
            if !(1..=5).contains(&replicas) {
                return Err(self.at(
                    "backend_config.nats.replicas",
                    format!("must be 1 to 5, got {replicas}"),
                ));
            }
            nats.replicas = replicas as usize;
        }
        if let Some(shards) =
            self.layered("backend_config.nats.shards", raw.shards, None, parse_count)?
        {
            let most = crate::config::MAX_SHARDS;
            match u16::try_from(shards)
                .ok()
                .filter(|s| (1..=most).contains(s))
            {
                Some(shards) => nats.shards = Some(shards),
                None => {
                    return Err(self.at(
                        "backend_config.nats.shards",
                        format!("must be 1 to {most}, got {shards}"),
                    ))
                }
            }
        }
        if let Some(storage) =
            self.layered("backend_config.nats.storage", raw.storage, None, |s| {
                non_empty(s)
                    .map(|t| match t.to_ascii_lowercase().as_str() {
                        "file" => Ok(StorageKind::File),
                        "memory" => Ok(StorageKind::Memory),
                        _ => Err(format!("unknown storage {t:?} (expected file or memory)")),
                    })
                    .transpose()
            })?
        {
            nats.storage = storage;
        }
        for (key, raw, field) in [
            (
                "backend_config.nats.connect_timeout",
                raw.connect_timeout,
                &mut nats.connect_timeout,
            ),
            (
                "backend_config.nats.connect_deadline",
                raw.connect_deadline,
                &mut nats.connect_deadline,
            ),
            (
                "backend_config.nats.request_timeout",
                raw.request_timeout,
                &mut nats.request_timeout,
            ),
        ] {
            if let Some(timeout) = self.layered(key, raw, None, parse_duration)? {
                if timeout.is_zero() {
                    return Err(self.at(key, "must be above zero"));
                }
                *field = timeout;
            }
        }
        // Retention of the audit trail (docs/architecture.md sizes it).
        if let Some(age) = self.layered(
            "backend_config.nats.event_max_age",
            raw.event_max_age,
            None,
            parse_duration,
        )? {
            if age.is_zero() {
                return Err(self.at("backend_config.nats.event_max_age", "must be above zero"));
            }
            nats.event_max_age = age;
        }
        if let Some(bytes) = self.layered(
            "backend_config.nats.event_max_bytes",
            raw.event_max_bytes,
            None,
            parse_count,
        )? {
            nats.event_max_bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        }
        nats.client_name = raw.client_name.as_ref().and_then(non_empty);
        nats.inbox_prefix = raw.inbox_prefix.as_ref().and_then(non_empty);
        Ok(())
    }
}
