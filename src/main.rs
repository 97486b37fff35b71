//! The `bantin` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;

use anyhow::Context;
use clap::{Parser, Subcommand};

use bantin::admin::Request;
use bantin::config::Config;
use bantin::progress::Progress;
use bantin::publish::Publisher;

/// Feeds and mail bulletins of a People's Council (Hội đồng nhân dân, HĐND).
///
/// bantin watches a folder of plain-text articles, publishes RSS, Atom and JSON feeds,
/// calendars and a small web site, and mails the news to the citizens who subscribe.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Configuration file (default: $BANTIN_CONFIG, else ./bantin.toml, else built-in defaults).
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The daemon: watch the store, publish, serve.
    Run,
    /// Write every feed and page once and exit.
    Build {
        /// Output folder (default: output.dir of the configuration).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Validate the configuration, feeds, templates and every article (kiểm tra bài viết).
    ///
    /// Kiểm tra cấu hình, các tệp khai báo nguồn tin, mẫu trang và mọi bài viết; mỗi lỗi
    /// được in trên một dòng "tệp:dòng: lỗi và cách sửa".
    Check,
    /// Manage mail subscribers.
    #[command(subcommand)]
    Subscribers(SubscribersCommand),
    /// Articles, subscribers by state, outbox by state, last digests; or the delivery
    /// report of one article or bulletin.
    Status {
        /// Print JSON instead of text (for scripts and monitoring).
        #[arg(long)]
        json: bool,
        /// The delivery report of one article (its id, e.g. 2025/01/ky-hop).
        #[arg(long, value_name = "ID", conflicts_with = "bulletin")]
        article: Option<String>,
        /// The delivery report of one bulletin: `daily|weekly` and its date (YYYY-MM-DD).
        #[arg(long, num_args = 2, value_names = ["daily|weekly", "DATE"])]
        bulletin: Option<Vec<String>>,
    },
    /// Bounces, complaints and unsubscribe mails.
    #[command(subcommand)]
    Inbox(InboxCommand),
    /// Backup and restore of the whole state, as JSON Lines.
    #[command(subcommand)]
    State(StateCommand),
    /// Manual pages and shell completions, from this command line's own definition.
    #[command(subcommand)]
    Generate(GenerateCommand),
}

#[derive(Subcommand)]
enum GenerateCommand {
    /// Write bantin(1) and one page per subcommand (bantin-run(1), …) into DIR.
    Man { dir: PathBuf },
    /// Print the completion script of SHELL.
    Completions { shell: clap_complete::Shell },
}

#[derive(Subcommand)]
enum StateCommand {
    /// Write every record of the state to FILE (works while the daemon runs).
    Export {
        /// The file to write (readable by its owner only: it holds every address).
        file: PathBuf,
    },
    /// Read an export into a new, empty state (the daemon stopped).
    Import {
        /// The file an export wrote.
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum InboxCommand {
    /// Read messages given by hand (a bounce forwarded by the relay's admin) as the daemon
    /// reads its inbox: each acts once.
    Process {
        /// The messages, each a whole mail as received (.eml).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum SubscribersCommand {
    /// Add (or update) a subscriber.
    Add {
        /// The subscriber's address.
        email: String,
        /// When mail goes out: an alert per new article, or a daily or weekly digest.
        #[arg(long, default_value = "immediate", value_parser = ["immediate", "daily", "weekly"])]
        schedule: String,
        /// Categories, comma-separated (default: every category).
        #[arg(long, default_value = "", hide_default_value = true)]
        categories: String,
        /// Active at once, without a confirmation mail.
        #[arg(long)]
        confirmed: bool,
    },
    /// Remove a subscriber.
    Remove {
        /// The subscriber's address.
        email: String,
    },
    /// List subscribers.
    List {
        /// Print JSON instead of tab-separated lines.
        #[arg(long)]
        json: bool,
    },
    /// Write every subscriber as CSV to standard output.
    Export,
    /// Import subscribers from CSV (header `email,schedule,categories`, categories joined by `;`).
    Import {
        /// The CSV file (UTF-8; `,` or `;` between fields).
        file: PathBuf,
        /// Active at once; otherwise each address gets a confirmation mail.
        #[arg(long)]
        confirmed: bool,
    },
}

fn main() -> ExitCode {
    // glibc gives each thread that allocates its own arena (up to 8 per core), and sled's
    // many small allocations from the runtime's threads left the daemon's memory at three
    // times what it used (171 MiB against 55 MiB over 200,000 mails in benches/state.py):
    // two arenas keep it near what is in use. Before any thread starts.
    // Blocks of 128 KiB and more always come from their own mappings (glibc's default, which
    // it otherwise raises after the first such block is freed): the search index's word
    // lists then grow in place (mremap) instead of being copied within the heap, where the
    // old copies stayed resident. At 100,000 articles the peak while it is built fell from
    // 267-271 MiB to 247 MiB, the build's time unchanged.
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets allocator parameters; no allocation is in flight.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
    let cli = Cli::parse();
    // Whatever bantin creates is private (the state, the outbox, the admin socket) unless
    // made public on purpose (the site: see `output`). A build writes nothing but the site:
    // its files are created public, where setting the mode of each took 11,580 more system
    // calls for 10,000 articles. Before any thread starts.
    bantin::output::set_umask(if matches!(cli.command, Command::Build { .. }) {
        0o022
    } else {
        0o077
    });
    init_logging();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Manual pages or a completion script, from the command line's own definition, so they
/// never fall out of step with it.
fn generate(what: GenerateCommand) -> anyhow::Result<()> {
    use clap::CommandFactory;
    let command = Cli::command();
    match what {
        GenerateCommand::Man { dir } => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create '{}'", dir.display()))?;
            clap_mangen::generate_to(command, &dir).with_context(|| {
                format!("cannot write the manual pages into '{}'", dir.display())
            })?;
        }
        GenerateCommand::Completions { shell } => {
            let mut command = command;
            clap_complete::generate(shell, &mut command, "bantin", &mut std::io::stdout());
        }
    }
    Ok(())
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("BANTIN_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    // Under systemd, journald adds its own timestamps and does not render colours.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().with_ansi(false).init();
    } else {
        builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Command::Generate(what) = cli.command {
        generate(what)?;
        return Ok(ExitCode::SUCCESS);
    }
    let config = Config::locate(cli.config.as_deref())?;
    if config.source.is_none() {
        eprintln!(
            "note: no configuration file (looked at --config, ${}, ./{}): running on built-in \
             defaults, with paths relative to {}",
            bantin::config::ENV_VAR,
            bantin::config::DEFAULT_FILE,
            std::env::current_dir()
                .map(|d| d.display().to_string())
                .unwrap_or_else(|_| ".".into())
        );
    }
    match cli.command {
        Command::Generate(_) => unreachable!("answered before the configuration is read"),
        Command::Run => {
            bantin::daemon::run(config)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check => check(&config),
        Command::Build { out } => build(config, out),
        Command::Status {
            json,
            article,
            bulletin,
        } => {
            let request = match (article, bulletin) {
                (Some(id), _) => Request::ArticleReport { id, json },
                (None, Some(b)) => Request::BulletinReport {
                    schedule: b[0].clone(),
                    date: b[1].clone(),
                    json,
                },
                (None, None) => Request::Status { json },
            };
            admin(&config, request)
        }
        Command::State(StateCommand::Export { file }) => {
            let reply = admin_reply(&config, Request::StateExport)?;
            if reply.code != 0 {
                eprint!("{}", reply.stderr);
                return Ok(ExitCode::from(reply.code.clamp(0, 255) as u8));
            }
            // Every subscriber's address is in it: for the daemon's user only.
            bantin::output::write_atomic_private(&file, reply.stdout.as_bytes())
                .with_context(|| format!("cannot write '{}'", file.display()))?;
            eprintln!(
                "exported {} records to {}",
                reply.stdout.lines().count(),
                file.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::State(StateCommand::Import { file }) => {
            if bantin::admin::ask_daemon(&config.state.dir, &Request::Status { json: true })
                .is_some()
            {
                anyhow::bail!(
                    "the daemon runs on this state: stop it first ('systemctl stop bantin')"
                );
            }
            let input = std::fs::File::open(&file)
                .with_context(|| format!("cannot read '{}'", file.display()))?;
            bantin::output::create_private_dir(&config.state.dir).with_context(|| {
                format!("cannot create state.dir '{}'", config.state.dir.display())
            })?;
            let store = bantin::store::Store::open(&config.state.dir)?;
            let (n, own) = store.import(std::io::BufReader::new(input))?;
            eprintln!(
                "imported {n} records into {} ({} read; the {own} that named the exported \
                 state itself, its id and schema, are this state's own)",
                config.state.dir.display(),
                n + own
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Inbox(InboxCommand::Process { files }) => {
            use base64::Engine as _;
            let mut mails = Vec::new();
            for file in &files {
                let raw = std::fs::read(file)
                    .with_context(|| format!("cannot read '{}'", file.display()))?;
                mails.push((
                    file.display().to_string(),
                    base64::engine::general_purpose::STANDARD.encode(raw),
                ));
            }
            admin(&config, Request::Inbox { mails })
        }
        Command::Subscribers(cmd) => {
            let request = match cmd {
                SubscribersCommand::Add {
                    email,
                    schedule,
                    categories,
                    confirmed,
                } => Request::Add {
                    email,
                    schedule,
                    categories: categories
                        .split(',')
                        .map(str::trim)
                        .filter(|c| !c.is_empty())
                        .map(String::from)
                        .collect(),
                    confirmed,
                },
                SubscribersCommand::Remove { email } => Request::Remove { email },
                SubscribersCommand::List { json } => Request::List { json },
                SubscribersCommand::Export => Request::Export,
                SubscribersCommand::Import { file, confirmed } => {
                    let csv = std::fs::read_to_string(&file)
                        .with_context(|| format!("cannot read '{}'", file.display()))?;
                    Request::Import { csv, confirmed }
                }
            };
            admin(&config, request)
        }
    }
}

/// Runs a `subscribers` or `status` command: through the daemon's socket when it runs (it
/// holds the database), else on the database directly. The output is the same.
fn admin(config: &Config, request: Request) -> anyhow::Result<ExitCode> {
    let long = matches!(request, Request::Import { .. } | Request::Export);
    let progress = long.then(|| Progress::start("working", None));
    // (The daemon does the work behind its socket: the line shows the time elapsed.)
    let reply = admin_reply(config, request)?;
    if let Some(p) = progress {
        p.finish();
    }
    print!("{}", reply.stdout);
    eprint!("{}", reply.stderr);
    Ok(ExitCode::from(reply.code.clamp(0, 255) as u8))
}

fn admin_reply(config: &Config, request: Request) -> anyhow::Result<bantin::admin::Reply> {
    Ok(
        match bantin::admin::ask_daemon(&config.state.dir, &request) {
            Some(reply) => reply.context("the daemon's admin socket did not answer")?,
            // Reading must not create a state where there is none (a command run in the
            // wrong folder would otherwise make an empty one and report zero subscribers).
            None if request.is_read_only()
                && !config.state.dir.join("db").exists()
                && !config.state.dir.join(bantin::store::MARKER).exists() =>
            {
                bantin::admin::Reply {
                    code: 1,
                    stdout: String::new(),
                    stderr: format!(
                        "error: no state in '{}': nothing has been subscribed there yet, or \
                         this is not the right configuration (pass --config PATH)\n",
                        config.state.dir.display()
                    ),
                }
            }
            None => {
                bantin::output::create_private_dir(&config.state.dir).with_context(|| {
                    format!("cannot create state.dir '{}'", config.state.dir.display())
                })?;
                let store = bantin::store::Store::open(&config.state.dir).map_err(|e| {
                    anyhow::anyhow!(
                        "{e}; if a daemon runs, its admin socket '{}' is not reachable",
                        config.state.dir.join(bantin::admin::SOCKET).display()
                    )
                })?;
                let ctx = bantin::admin::Context {
                    store: &store,
                    clock: &bantin::clock::Clock::system(),
                    tz: config.timezone().unwrap_or(chrono_tz::UTC),
                    pause: None,
                    daemon: false,
                    categories: &|| bantin::publish::read_known_categories(config),
                    signer: bantin::token::Signer::load(
                        &config.state.dir,
                        config.mail.token_secret_file.as_deref(),
                    )
                    .ok(),
                    return_path: &config.mail.return_path,
                    relay_utf8: None,
                    store_dir: &config.store.dir,
                    broken: None,
                    on_queued: &|| {},
                    planned: &|_| 0,
                };
                bantin::admin::execute(&ctx, request)
            }
        },
    )
}

/// Subscribers whose categories match nothing, when there is state to look at.
fn orphans(config: &Config) -> Vec<bantin::admin::Orphan> {
    if !config.state.dir.join("db").exists() {
        return Vec::new();
    }
    let Ok(reply) = admin_reply(config, Request::Status { json: true }) else {
        return Vec::new();
    };
    serde_json::from_str::<serde_json::Value>(&reply.stdout)
        .ok()
        .and_then(|v| serde_json::from_value(v["unknown_categories"].clone()).ok())
        .unwrap_or_default()
}

fn check(config: &Config) -> anyhow::Result<ExitCode> {
    let progress = Progress::start("đang kiểm tra bài viết", None);
    let report = bantin::check::run(config, &progress.count);
    progress.finish();
    for p in &report.problems {
        println!("{p}");
    }
    for d in &report.drafts {
        // The `_` that makes it a draft: on the file's name, or on a folder's.
        let relative = std::path::Path::new(d)
            .strip_prefix(&config.store.dir)
            .unwrap_or(std::path::Path::new(d));
        let parts: Vec<String> = relative
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        let marked = parts.iter().position(|p| p.starts_with('_'));
        let whose = match marked {
            Some(i) if i + 1 < parts.len() => format!("tên thư mục \"{}\"", parts[i]),
            _ => "tên tệp".to_string(),
        };
        eprintln!("{d}: bản nháp, chưa được đăng (muốn đăng thì bỏ dấu \"_\" ở đầu {whose})");
    }
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    for o in orphans(config) {
        eprintln!("warning: {}", bantin::admin::orphan_line(&o));
    }
    let drafts = match report.drafts.len() {
        0 => String::new(),
        n => format!(" ({n} bản nháp)"),
    };
    if report.problems.is_empty() {
        eprintln!(
            "đã kiểm tra {} bài viết{drafts}: không có lỗi nào",
            report.articles
        );
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "đã kiểm tra {} bài viết{drafts}: có {} lỗi cần sửa (xem các dòng ở trên)",
            report.articles,
            report.problems.len()
        );
        Ok(ExitCode::from(1))
    }
}

fn build(mut config: Config, out: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    if let Some(out) = out {
        config.output.dir = out;
    }
    let publisher = Publisher::from_config(&config)
        .map_err(|problems| anyhow::anyhow!("cannot build:\n{}", problems.join("\n")))?;
    let files = publisher
        .reader
        .walk()
        .with_context(|| format!("cannot read the store '{}'", config.store.dir.display()))?;
    let progress = Progress::start("building", Some(files.len()));
    let now = bantin::clock::Clock::system().now_fixed();
    let started = std::time::Instant::now();
    let result = publisher.build_from(files, now, &progress.count, |_| {});
    let done = progress.count.load(Ordering::Relaxed);
    progress.finish();
    let built = result
        .with_context(|| format!("cannot write the site to '{}'", config.output.dir.display()))?;
    let report = &built.report;
    for e in &report.errors {
        eprintln!("{e}");
    }
    for e in &report.write_errors {
        eprintln!("error: {e}");
    }
    eprintln!(
        "built {} feeds ({} files, calendars included) and {} pages ({} unchanged) from {done} files in {:.2?}: \
         {} published, {} scheduled, {} broken, {} old files removed",
        report.feeds,
        report.feeds * bantin::publish::FORMATS.len(),
        report.pages_written,
        report.pages_unchanged,
        started.elapsed(),
        report.published,
        report.scheduled,
        report.errors.len(),
        report.files_removed,
    );
    let code = if report.write_errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    };
    // The process ends here: the system takes its memory back at once, where freeing the
    // library and the feeds piece by piece took 10 ms of a build of 10,000 articles.
    std::mem::forget(built);
    std::mem::forget(publisher);
    Ok(code)
}
