//! `uplink gateway`: run a gateway, or (`uplink gateway token …`) manage its credentials file.
//!
//! Where the credentials come from, in order:
//! 1. `--sled-token` / `--admin-token`: the original's shared tokens (any sled may be any project), with a
//!    warning; a missing one is generated and printed;
//! 2. otherwise the store's credentials (`uplink gateway token …`, kept in `STATE_DIR/uplink.db`) together
//!    with a declarative file: `--credentials FILE`, else `STATE_DIR/credentials.toml` if there is one (see
//!    [`credentials_file`](super::credentials_file)). Where both name a credential (the same token, or an
//!    admin of the same name), the file wins. Both are watched: a change to either, or SIGHUP, reloads;
//! 3. nothing at all (the first start): a sled token and an admin token are generated into the store (into
//!    `STATE_DIR/credentials.toml` with `--no-store`); their plain text is printed and written once to
//!    `STATE_DIR/tokens`, readable by the owner only, so that a restart keeps them.
//!
//! The store (`STATE_DIR/uplink.db`, or the PostgreSQL database of `--store postgres://…`, unless
//! `--no-store`) keeps the rules made at run time, the audit log, the console's sign-ins, the requests that
//! may come back, and the credentials `token …` manages; see [`crate::store::sqlite`] and
//! [`crate::store::postgres`].

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use clap::{Args, Subcommand};
use uplink_proto::gateway::{CONFIG_RULE_IDS, ResumeConfig, Role, SessionConfig};
use uplink_proto::rules::{Rule, RuleId};

use super::common::shutdown_signal;
use super::credentials_file::{self as file, NewToken};
use super::credentials_watch::{self as watch, Source};
use super::gateway_args::RunArgs;
use super::store_at::{Keeping, StoreAt};
use crate::gateway::credentials::Credentials;
use crate::gateway::{self, GatewayServer, GatewayServerConfig};

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(super) struct GatewayArgs {
    #[command(subcommand)]
    action: Option<Action>,
    /// A declarative credentials file (TOML): sled credentials bound to projects and admin principals with
    /// roles, tokens stored as hashes; used beside the store's credentials, and it wins where both name one.
    /// Reloaded on SIGHUP and when it changes. With `token …`: edit this file instead of the store.
    #[arg(long, global = true, env = "UPLINK_CREDENTIALS")]
    credentials: Option<PathBuf>,
    /// Where the gateway keeps its store (uplink.db: rules, the audit log, the credentials `token …`
    /// manages) and the tokens it generates at its first start. Default: $XDG_STATE_HOME/uplink, else
    /// ~/.local/state/uplink.
    #[arg(long, global = true, env = "UPLINK_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Keep the store in a PostgreSQL database instead of the state directory's file: a URL such as
    /// postgres://uplink@db.example/uplink?sslmode=require (libpq's form; `host=/run/postgresql` for a Unix
    /// socket). Its tables live in a schema `uplink`, made at the first start. Give a password in
    /// UPLINK_STORE rather than on the command line. The state directory still keeps what is this node's
    /// own (the tokens generated at a first start).
    #[arg(long, global = true, env = "UPLINK_STORE", hide_env_values = true, value_name = "URL")]
    store: Option<String>,
    /// A PEM file of certificate authorities, beside the web's roots, for the PostgreSQL server's
    /// certificate.
    #[arg(long, global = true, value_name = "FILE")]
    store_ca: Option<PathBuf>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Action {
    /// Manage the credentials file: add a credential (its token is printed once), list, revoke.
    #[command(subcommand)]
    Token(TokenCmd),
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Add a sled credential (--sled --project P…) or an admin principal (--admin NAME --role R).
    Add(AddArgs),
    /// List the credentials: names, projects or roles, expiry, the start of each token's hash.
    Ls,
    /// Remove the credential named WHO (an admin's name, a sled's label, or the start of its hash).
    Revoke {
        /// Whose credential.
        who: String,
    },
}

#[derive(Args)]
struct AddArgs {
    /// A sled credential.
    #[arg(long, requires = "projects", conflicts_with = "admin")]
    sled: bool,
    /// A project (or `*` pattern) the sled may identify as (repeatable).
    #[arg(long = "project")]
    projects: Vec<String>,
    /// A label for the sled credential (listings, revoke).
    #[arg(long)]
    label: Option<String>,
    /// When the sled credential stops working: an RFC 3339 time, or a duration from now (30d).
    #[arg(long, value_parser = file::expiry)]
    expires: Option<SystemTime>,
    /// An admin principal with this name.
    #[arg(long, value_name = "NAME", requires = "role")]
    admin: Option<String>,
    /// The principal's role: viewer, approver or admin.
    #[arg(long)]
    role: Option<Role>,
}

pub(super) async fn run(args: GatewayArgs) -> Result<(), String> {
    let state_dir = args.state_dir.unwrap_or_else(file::default_state_dir);
    let store = StoreAt::new(args.store, args.store_ca, &state_dir)?;
    match args.action {
        Some(Action::Token(cmd)) => {
            // A file when one is named; the store otherwise.
            let place = match args.credentials {
                Some(path) => file::Place::File(path),
                None => file::Place::Store(store.clone()),
            };
            token(cmd, &place, &state_dir, &store).await
        }
        None => serve(args.run, args.credentials, &state_dir, &store).await,
    }
}

/// `token …`. A change is reported done only once the gateway running on `state_dir` (if one uses `place`)
/// has it in force; a refusal or no confirmation is an error, with the change written but not in force.
#[allow(clippy::print_stdout)]
async fn token(cmd: TokenCmd, place: &file::Place, state_dir: &Path, store: &StoreAt) -> Result<(), String> {
    match cmd {
        TokenCmd::Add(a) => {
            let new = match (a.sled, a.admin, a.role) {
                (true, _, _) => NewToken::Sled { label: a.label, projects: a.projects, expires: a.expires },
                (false, Some(name), Some(role)) => NewToken::Admin { name, role },
                _ => return Err("say --sled --project P, or --admin NAME --role ROLE".into()),
            };
            let token = file::add(place, new)?;
            // The token first: it is written, and shown only this once, whatever the gateway says.
            println!("{token}");
            eprintln!("added to {}; this token is shown once.", place.describe());
            eprintln!("{}", watch::confirm(place, state_dir, store).await?);
        }
        TokenCmd::Ls => print!("{}", file::list(place)?),
        TokenCmd::Revoke { who } => {
            eprintln!("{}", file::revoke(place, &who)?);
            eprintln!("{}", watch::confirm(place, state_dir, store).await?);
        }
    }
    Ok(())
}

#[allow(clippy::print_stdout)]
async fn serve(args: RunArgs, credentials: Option<PathBuf>, state_dir: &Path, at: &StoreAt) -> Result<(), String> {
    let sled_tokens: Vec<String> =
        args.sled_tokens.iter().map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()).collect();
    let mut admin_token = args.admin_token.as_deref().map(str::trim).filter(|t| !t.is_empty()).map(str::to_owned);
    // UPLINK_ADMIN_TOKEN names the command-line client's credential: exported for it, it must not turn a
    // gateway started in the same shell into shared-token mode. Read as the gateway's only where that is
    // what was meant (beside shared sled tokens), and said so either way.
    let client_token = std::env::var("UPLINK_ADMIN_TOKEN").ok().filter(|t| !t.trim().is_empty());
    if admin_token.is_none()
        && let Some(token) = client_token
    {
        if sled_tokens.is_empty() {
            tracing::warn!(
                "UPLINK_ADMIN_TOKEN is set: it is the command-line client's credential, and this gateway does not use it (the gateway's shared admin token is --admin-token or UPLINK_GATEWAY_ADMIN_TOKEN)"
            );
        } else {
            tracing::warn!(
                "UPLINK_ADMIN_TOKEN is read as the gateway's shared admin token beside the shared sled tokens; name it UPLINK_GATEWAY_ADMIN_TOKEN (UPLINK_ADMIN_TOKEN is the command-line client's)"
            );
            admin_token = Some(token.trim().to_owned());
        }
    }
    let shared = !sled_tokens.is_empty() || admin_token.is_some();
    let mut announce = Vec::new();
    if credentials.is_some() && shared {
        return Err("use --credentials or the shared tokens (--sled-token, --admin-token), not both".into());
    }
    // The store first: it holds credentials too, and a second gateway on this directory stops here.
    let store = if args.no_store {
        if let StoreAt::Postgres { .. } = at {
            return Err("use --store or --no-store, not both".into());
        }
        None
    } else {
        let keeping = Keeping {
            full_sync: args.store_sync == "full",
            keep_for: args.audit_keep,
            keep_records: args.audit_keep_records,
        };
        Some(at.open(&keeping)?)
    };
    // Tokens and credentials an older uplink left readable by others are narrowed to their owner.
    for kept in ["tokens", "credentials.toml"] {
        crate::owner_only::narrow_if_there(&state_dir.join(kept))
            .map_err(|e| format!("{}: {e}", state_dir.join(kept).display()))?;
    }
    let (source, creds, loaded) = if shared {
        tracing::warn!("shared tokens: any sled with the sled token may identify as any project; see --credentials");
        let mut sled_tokens = sled_tokens;
        if sled_tokens.is_empty() {
            sled_tokens.push(gateway::generate_token().map_err(|e| e.to_string())?);
            announce.push(format!("  sled token (generated):  {}", sled_tokens[0]));
        }
        let admin_token = match admin_token {
            Some(t) => t,
            None => {
                let t = gateway::generate_token().map_err(|e| e.to_string())?;
                announce.push(format!("  admin token (generated): {t}"));
                t
            }
        };
        if sled_tokens.contains(&admin_token) {
            return Err("the admin token must differ from every sled token".into());
        }
        (Source::Tokens, Credentials::from_tokens(&sled_tokens, &admin_token).map_err(|e| e.to_string())?, None)
    } else {
        let legacy = state_dir.join("credentials.toml");
        let file = credentials.or_else(|| legacy.exists().then_some(legacy.clone()));
        // A first start is one whose store never held credentials (version 0): a store whose last
        // credential was revoked is not, and gets nothing generated.
        let never_kept = match &store {
            Some(s) => match s.credentials() {
                Some(kept) => kept.version().map_err(|e| e.to_string())? == 0,
                None => true,
            },
            None => true,
        };
        if file.is_none() && never_kept {
            let place = match &store {
                Some(_) => file::Place::Store(at.clone()),
                None => file::Place::File(legacy.clone()),
            };
            first_start(state_dir, &place, &mut announce)?;
        } else if state_dir.join("tokens").is_file() {
            // A first start made them (one that then failed to listen, say): say where they are.
            let tokens = state_dir.join("tokens");
            announce
                .push(format!("  tokens generated at the first start: {} (readable by you only)", tokens.display()));
        }
        let source = match (&store, &file) {
            (Some(s), file) => Source::Kept { file: file.clone(), store: s.credentials() },
            (None, Some(file)) => Source::Kept { file: Some(file.clone()), store: None },
            (None, None) => Source::Kept { file: Some(legacy), store: None },
        };
        if let Source::Kept { file: Some(path), .. } = &source {
            announce.push(format!("  credentials: {}", path.display()));
        }
        if let Source::Kept { store: Some(_), .. } = &source {
            announce.push("  credentials: the store's (uplink gateway token …)".to_owned());
        }
        let (creds, left_out, loaded) = source.load_first()?;
        for why in left_out {
            tracing::warn!("{why}");
        }
        for warning in watch::warnings(&creds) {
            tracing::warn!("{warning}");
        }
        (source, creds, Some(loaded))
    };
    let tls = args.tls_cert.zip(args.tls_key);
    if tls.is_none() && !args.listen.ip().is_loopback() {
        tracing::warn!(
            listen = %args.listen,
            "listening beyond loopback without TLS: sled and admin tokens would cross the network in the clear; \
             give --tls-cert and --tls-key, or put a TLS proxy in front"
        );
    }
    let scheme = if tls.is_some() { ("https", "wss") } else { ("http", "ws") };
    let mut config = GatewayServerConfig::with_credentials(args.listen, creds);
    config.tls = tls;
    config.accept_query_token = !args.refuse_query_token;
    let open_files = super::open_files::raise();
    let hub = &mut config.hub;
    hub.max_connections = args.max_connections.unwrap_or_else(|| super::open_files::connection_budget(open_files));
    if let Some(limit) = open_files
        && hub.max_connections as u64 >= limit
    {
        tracing::warn!(
            limit,
            max_connections = hub.max_connections,
            "--max-connections is at or over the open-file limit: sleds beyond the limit find no socket (accepting \
             fails and backs off) instead of a 503"
        );
    }
    tracing::info!(open_files, max_connections = hub.max_connections, "connection budget");
    hub.max_unidentified = args.max_unidentified;
    hub.max_pending_input_bytes = args.max_pending_bytes;
    let created = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    hub.rules = args
        .rules
        .into_iter()
        .enumerate()
        .map(|(i, (effect, pattern))| {
            Rule::new(RuleId(CONFIG_RULE_IDS + i as u64 + 1), effect, pattern, "command line", created)
        })
        .collect();
    hub.auto_approve = args.auto_approve.into_iter().collect();
    hub.auto_deny = args.auto_deny.into_iter().collect();
    hub.session = SessionConfig {
        identity_timeout: args.identity_timeout,
        stale_after: args.stale_after,
        dead_after: args.dead_after,
        mcp_timeout: args.mcp_timeout,
        max_pending_input_bytes: args.max_sled_pending_bytes,
        ..SessionConfig::default()
    };
    hub.resume = (!args.no_resume).then(|| {
        let mut resume = ResumeConfig::default();
        resume.window = args.resume_window;
        resume
    });
    config.max_event_client_bytes = args.max_event_client_bytes;
    config.max_event_clients = args.max_event_clients;
    config.audit_redact_inputs = args.audit_redact_inputs;
    config.audit_checkpoint_every = args.audit_checkpoint_every;
    config.lease = args.lease;
    config.cluster_listen = args.cluster_listen;
    config.cluster_advertise = args.cluster_advertise;
    config.drain = args.drain;
    config.audit_checkpoint_file = args.audit_checkpoint_file;
    config.metrics_public = args.metrics_public;
    let format =
        if args.notify_format == "slack" { gateway::NotifyFormat::Slack } else { gateway::NotifyFormat::Generic };
    config.notify = args.notify_webhooks.iter().map(|url| gateway::Webhook::new(url.clone(), format)).collect();
    config.notify_decisions = args.notify_decisions;
    config.notify_checkpoints = args.notify_checkpoints;
    config.public_url = args.public_url;
    config.allowed_hosts = args.allowed_hosts;
    let client_secret = match &args.oidc_client_secret_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("--oidc-client-secret-file {}: {e}", path.display()))?;
            Some(text.trim().to_owned()).filter(|s| !s.is_empty())
        }
        None => None,
    };
    config.oidc = args.oidc_issuer.map(|issuer| gateway::OidcConfig {
        groups_claim: args.oidc_groups_claim,
        ca_file: args.oidc_ca_file,
        people: args.oidc_roles,
        client_id: args.oidc_client_id,
        client_secret,
        scopes: args.oidc_scopes,
        cli_client_id: args.oidc_cli_client_id,
        ..gateway::OidcConfig::new(issuer)
    });
    if store.is_some() {
        let place = match at {
            StoreAt::Dir(dir) => dir.join(crate::store::sqlite::DB_FILE).display().to_string(),
            StoreAt::Postgres { .. } => at.describe().trim_start_matches("the store at ").to_owned(),
        };
        announce.push(format!("  store: {place} (rules and the audit log)"));
    }
    let signal = shutdown_signal()?;
    let public_url = config.public_url.clone();
    let server = GatewayServer::bind_with_store(config, store).await.map_err(|e| e.to_string())?;
    let local = server.local_addr().map_err(|e| e.to_string())?;
    say(format_args!("uplink gateway: listening on {}://{local}", scheme.0));
    say(format_args!("  sleds connect to {}", sled_url(scheme.1, local, public_url.as_deref())));
    if let Some(internal) = server.cluster_addr() {
        say(format_args!(
            "  the cluster's other nodes reach this one at {internal} (internal; keep it off the load balancer)"
        ));
    }
    // Tokens are printed only when generated here, so the operator can use them; never logged.
    for line in &announce {
        say(line);
    }
    let watch =
        loaded.map(|loaded| tokio::spawn(watch::watch(source, loaded, state_dir.to_owned(), server.reloader())));
    let ran = server.run(signal).await;
    if let Some(watch) = watch {
        watch.abort();
    }
    ran.map_err(|e| e.to_string())?;
    tracing::info!("gateway stopped");
    Ok(())
}

/// A line on standard output, which nobody may be reading any more: the gateway serves on without it.
fn say(line: impl std::fmt::Display) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// The first start without credentials: a sled token and an admin token, generated, kept as hashes at
/// `place`, and written once in plain text to `state_dir/tokens` (owner only) and to the output.
fn first_start(state_dir: &Path, place: &file::Place, announce: &mut Vec<String>) -> Result<(), String> {
    let sled =
        file::add(place, NewToken::Sled { label: Some("default".into()), projects: vec!["*".into()], expires: None })?;
    let admin = file::add(place, NewToken::Admin { name: "admin".into(), role: Role::Admin })?;
    let tokens = state_dir.join("tokens");
    file::write_private(&tokens, &format!("sled {sled}\nadmin {admin}\n"))?;
    announce.push(format!("  sled token (generated):  {sled}"));
    announce.push(format!("  admin token (generated): {admin}"));
    announce.push(format!("  (kept as hashes; the tokens are also in {}, readable by you only)", tokens.display()));
    Ok(())
}

/// The URL sleds should use: on a wildcard address (`0.0.0.0`, `::`), not that address (no sled can connect
/// to it) but the public URL's host, or a placeholder for this machine's name.
fn sled_url(ws_scheme: &str, local: std::net::SocketAddr, public_url: Option<&str>) -> String {
    if !local.ip().is_unspecified() {
        return format!("{ws_scheme}://{local}/api/sled-uplink");
    }
    let public = public_url.and_then(|u| u.parse::<hyper::Uri>().ok());
    match public.as_ref().and_then(|u| u.authority().map(|a| (u.scheme_str() == Some("https"), a.as_str().to_owned())))
    {
        Some((tls, authority)) => format!("{}://{authority}/api/sled-uplink", if tls { "wss" } else { "ws" }),
        None => format!(
            "{ws_scheme}://THIS-HOST:{}/api/sled-uplink (this machine's name or address: it listens on every interface)",
            local.port()
        ),
    }
}

#[cfg(test)]
mod sled_url_tests {
    use super::sled_url;

    #[test]
    fn a_wildcard_address_is_never_the_one_sleds_are_told() {
        let any: std::net::SocketAddr = "0.0.0.0:8700".parse().unwrap_or_else(|_| unreachable!());
        let here: std::net::SocketAddr = "127.0.0.1:8700".parse().unwrap_or_else(|_| unreachable!());
        assert_eq!(sled_url("ws", here, None), "ws://127.0.0.1:8700/api/sled-uplink");
        assert_eq!(sled_url("ws", any, Some("https://gw.example")), "wss://gw.example/api/sled-uplink");
        assert_eq!(sled_url("ws", any, Some("http://gw.example:8700/")), "ws://gw.example:8700/api/sled-uplink");
        let placeholder = sled_url("wss", any, None);
        assert!(placeholder.starts_with("wss://THIS-HOST:8700/api/sled-uplink"), "{placeholder}");
        assert!(!placeholder.contains("0.0.0.0"));
    }
}
