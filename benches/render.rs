//! What a build costs without its files: every stage of `bantin build` run on one thread
//! into memory, nothing written, with the CPU time (user + system) each takes and the bytes
//! it produces. Best of the rounds.
//!
//!     cargo bench --bench render -- CONFIG [ROUNDS]
//!
//! CONFIG names the store, feeds and templates as for `bantin build` (`benches/report.sh`
//! writes one for its 10,000-article store, `build-now.toml`). The sum of the stages is the
//! CPU a build cannot do without, whatever it does about files; divided by the cores, the
//! least wall time they can give it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bantin::config::Config;
use bantin::library::Library;
use bantin::nav::{Doc, Model};
use bantin::publish::Publisher;

/// User plus system time of this process so far.
fn cpu() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: getrusage fills the struct it is given; RUSAGE_SELF is always valid.
    let usage = unsafe {
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()), 0);
        usage.assume_init()
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Runs `stage`, returns what it gives and the CPU it took.
fn timed<T>(stage: impl FnOnce() -> T) -> (T, Duration) {
    let before = cpu();
    let out = stage();
    (out, cpu() - before)
}

/// One round: each stage's name, CPU time and bytes.
type Round = Vec<(&'static str, Duration, usize)>;

fn round(publisher: &Publisher) -> Round {
    let now = bantin::clock::Clock::system().now_fixed();
    let mut stages = Vec::new();
    let (files, t) = timed(|| publisher.reader.walk().expect("the store can be walked"));
    stages.push(("walk the store", t, 0));
    let bodies = std::sync::Mutex::new(HashMap::new());
    let ((entries, errors), t) = timed(|| {
        publisher.reader.read_all(&files, |found, article| {
            bodies
                .lock()
                .expect("bodies")
                .insert(found.id.clone(), Arc::new(article));
        })
    });
    assert!(errors.is_empty(), "broken articles: {errors:?}");
    let bodies = bodies.into_inner().expect("bodies");
    let read: usize = files.iter().map(|f| f.stamp.len as usize).sum();
    stages.push(("read and parse the articles", t, read));
    let (library, t) = timed(|| Library::from_entries(entries));
    let (model, t2) = timed(|| Model::new(&library, now, &publisher.feeds));
    stages.push(("the library and its lists", t + t2, 0));

    let (bytes, t) = timed(|| {
        let feeds = publisher.render_feeds(&publisher.feeds, &library, now, &model);
        let index = publisher.render_index(&library, &model).expect("home page");
        let calendar = publisher.render_calendar(&library, now);
        let feed_bytes: usize = feeds
            .iter()
            .flat_map(|f| f.bodies.iter().map(String::len))
            .sum();
        feed_bytes + index.len() + calendar.0.len()
    });
    stages.push(("feeds, home page and calendar", t, bytes));

    let (bytes, t) = timed(|| {
        let mut bytes = 0;
        for entry in &model.all {
            let nav = publisher.article_nav(&model, entry);
            let article = &bodies[&*entry.id];
            let html = publisher
                .pages()
                .article(article, entry.updated, &nav)
                .expect("article page");
            bytes += html.len();
            if let Some(ics) = publisher.article_calendar(entry, article) {
                bytes += ics.len();
            }
        }
        bytes
    });
    stages.push(("article pages", t, bytes));

    let (archives, lists): (Vec<Doc>, Vec<Doc>) = model
        .docs()
        .into_iter()
        .map(|(doc, _)| doc)
        .partition(|doc| matches!(doc, Doc::FeedArchive { .. }));
    for (name, docs) in [("lists of articles", lists), ("feed archives", archives)] {
        let (bytes, t) = timed(|| {
            docs.iter()
                .filter_map(|doc| publisher.render_doc(&model, doc))
                .map(|r| r.expect("document").len())
                .sum()
        });
        stages.push((name, t, bytes));
    }
    stages
}

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let config = args
        .next()
        .expect("usage: cargo bench --bench render -- CONFIG [ROUNDS]");
    let rounds: usize = args.next().map_or(5, |r| r.parse().expect("ROUNDS"));
    let config = Config::from_file(std::path::Path::new(&config)).expect("configuration");
    let publisher = Publisher::from_config(&config).expect("feeds and templates");
    // One thread: each stage's CPU time is its own, not shared out by rayon.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("a pool");
    let rounds: Vec<Round> = (0..rounds)
        .map(|_| pool.install(|| round(&publisher)))
        .collect();
    // The first round is the one a `bantin build` pays: nothing warmed up yet.
    let sums: Vec<String> = rounds
        .iter()
        .map(|r| {
            let sum: Duration = r.iter().map(|s| s.1).sum();
            format!("{:.1}", sum.as_secs_f64() * 1e3)
        })
        .collect();
    println!("rounds, ms: {}", sums.join(" "));
    let mut total = Duration::ZERO;
    let mut total_bytes = 0;
    for (i, (name, _, bytes)) in rounds[0].iter().enumerate() {
        let best = rounds.iter().map(|r| r[i].1).min().expect("rounds");
        total += best;
        if !name.starts_with("read") {
            total_bytes += bytes;
        }
        println!(
            "{name:<32} {:>8.1} ms  {:>7.1} MB",
            best.as_secs_f64() * 1e3,
            *bytes as f64 / 1e6
        );
    }
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    println!(
        "{:<32} {:>8.1} ms  {:>7.1} MB produced; on {cores} cores at best {:.1} ms",
        "all, one thread",
        total.as_secs_f64() * 1e3,
        total_bytes as f64 / 1e6,
        total.as_secs_f64() * 1e3 / cores as f64
    );
}
