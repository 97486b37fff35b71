//! bantin: feeds and email bulletins for the People's Council of Cầu Giấy district.
//!
//! # Layout
//!
//! The core is pure: it is handed `now` and data, and returns data.
//!
//! - [`article`]: one article file parsed (category, title, `Ngày đăng`, paragraphs, signature).
//! - [`library`]: every article of the store, newest first, by id and category; what changed.
//! - [`feed`]: feed definitions, and RSS 2.0, Atom 1.0 and JSON Feed 1.1 rendering.
//! - [`calendar`]: events as iCalendar (RFC 5545).
//! - [`correction`]: what a correction changed, word by word.
//! - [`subscriber`]: who wants which news, how often, and where they stand.
//! - [`site`]: templates and the contexts of the web pages.
//! - [`plan`]: what a change republishes; who gets what: alert recipients, digest contents,
//!   retry delays, digest ticks.
//!
//! The adapters touch the disk, the network and the clock:
//!
//! - [`clock`]: the one source of "now": the system clock, or a manual one in tests.
//! - [`config`]: the configuration file, `bantin.toml`.
//! - [`scan`]: walking and reading the store on every core; the article cache that publishing
//!   and mail share.
//! - [`store`]: the state in sled (subscribers, deliveries); the only module that imports sled.
//! - [`token`]: signed tokens for confirmation and unsubscribe links.
//! - [`output`]: atomic writes to `output.dir`.
//! - [`manifest`]: what each page was rendered from, so unchanged pages are skipped.
//! - [`publish`]: loading feed definitions and templates; rendering and writing feeds and
//!   pages, for `build` and the daemon.
//! - [`nav`]: how the site's lists are cut into pages, months and categories, and what each
//!   page shows (its fingerprint, so that only what changed is written again).
//! - [`render`]: category and month pages, feed pages, OPML, RFC 5005 archive documents.
//! - [`search`]: the search index that ignores diacritics.
//! - [`check`]: `bantin check`.
//! - [`admin`]: `subscribers` and `status`, in the CLI or behind the daemon's admin socket.
//! - [`watch`]: file events, debounced, plus periodic rescans.
//! - [`mail`]: `outbox` (who is owed what), `message` (a delivery rendered into a message),
//!   `transport` (SMTP pool, files, sendmail), `worker` (sending, retries, group commit).
//! - [`health`]: liveness of the daemon's parts, for the systemd watchdog.
//! - [`http`]: the HTTP server.
//! - [`subscribe`]: the subscribe, confirm and unsubscribe routes.
//! - [`find`]: the search page.
//! - [`websub`]: telling a WebSub hub which feeds changed.
//! - [`metrics`]: the Prometheus registry behind `/metrics`.
//! - [`daemon`]: `bantin run`: wiring and shutdown (`mod`), the engine thread that
//!   republishes (`engine`), the background tasks (`tasks`).
//! - [`progress`]: progress on a terminal for long commands.

pub mod admin;
pub mod article;
pub mod calendar;
pub mod check;
pub mod clock;
pub mod config;
pub mod correction;
pub mod daemon;
pub mod feed;
pub mod find;
pub mod health;
pub mod http;
pub mod journal;
pub mod library;
pub mod mail;
pub mod manifest;
pub mod metrics;
pub mod nav;
pub mod output;
pub mod plan;
pub mod progress;
pub mod publish;
pub mod render;
pub mod scan;
pub mod search;
pub mod site;
pub mod store;
pub mod subscribe;
pub mod subscriber;
pub mod token;
pub mod watch;
pub mod websub;
