//! bantin: feeds and email bulletins for the People's Council of Cầu Giấy district.
//!
//! # Layout
//!
//! The core is pure: it is handed `now` and data, and returns data.
//!
//! - [`article`]: one article file parsed (category, title, `Ngày đăng`, paragraphs, signature).
//! - [`library`]: every article of the store, newest first, by id and category; what changed.
//! - [`feed`]: feed definitions, and RSS 2.0, Atom 1.0 and JSON Feed 1.1 rendering.
//! - [`site`]: templates and the contexts of the web pages.
//!
//! The adapters touch the disk, the network and the clock:
//!
//! - [`config`]: the configuration file, `bantin.toml`.
//! - [`scan`]: walking and reading the store on every core.
//! - [`output`]: atomic writes to `output.dir`.
//! - [`publish`]: rendering and writing feeds and pages, for `build` and the daemon.
//! - [`check`]: `bantin check`.
//! - [`watch`]: file events, debounced, plus periodic rescans.
//! - [`http`]: the HTTP server.
//! - [`metrics`]: counters for `/metrics`.
//! - [`daemon`]: `bantin run`, wiring it all, shutdown and systemd notification.
//! - [`progress`]: progress on a terminal for long commands.

pub mod article;
pub mod check;
pub mod config;
pub mod daemon;
pub mod feed;
pub mod http;
pub mod library;
pub mod metrics;
pub mod output;
pub mod progress;
pub mod publish;
pub mod scan;
pub mod site;
pub mod watch;
