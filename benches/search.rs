//! The search index at 100,000 articles: build time, memory, and query times (p50, p99).
//!
//!     cargo bench --bench search [-- ARTICLES]
//!
//! Articles are generated as `benches/gen_store.py` writes them: titles and paragraphs of
//! council words, so that nearly every query word is in most articles (the hard case: long
//! lists to intersect and rank). Memory is the index's own count of what it holds, and the
//! growth of the process's resident memory while it was built.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bantin::article::Article;
use bantin::library::{Entry, Stamp};
use bantin::search::Index;
use chrono::{DateTime, FixedOffset, TimeZone};

const WORDS: &str = "hội nghị kỳ họp thường trực đại biểu cử tri phường quận nghị quyết giám \
    sát khảo sát ngân sách đầu tư công chương trình phối hợp công tác kinh tế xã hội an ninh \
    quốc phòng tuyên truyền đô thị môi trường vỉa hè rác thải giáo dục y tế văn hóa thể thao \
    lãnh đạo ủy ban mặt trận tổ quốc nhân dân chính quyền kiến nghị giải quyết kết quả nhiệm \
    vụ năm quý tháng triển khai thực hiện đánh giá tổng kết báo cáo thông báo kế hoạch tổ chức";

const CATEGORIES: [&str; 5] = [
    "TIN TỨC - SỰ KIỆN TIÊU BIỂU",
    "KỲ HỌP HĐND",
    "TIẾP XÚC CỬ TRI",
    "THÔNG BÁO",
    "HOẠT ĐỘNG CỦA HĐND",
];

/// The queries timed: with and without diacritics, two to five words, đ typed d, a word
/// that is in no article.
const QUERIES: [&str; 12] = [
    "ky hop",
    "kỳ họp",
    "dai bieu",
    "đại biểu",
    "hội nghị",
    "ngan sach dau tu cong",
    "cử tri phường",
    "giam sat",
    "thong bao",
    "vỉa hè",
    "ubnd",
    "rac thai do thi moi truong",
];

/// A small deterministic generator (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }
}

fn sentence(rng: &mut Rng, words: &[&str], lo: usize, hi: usize) -> String {
    let n = rng.range(lo, hi);
    let mut out: Vec<String> = (0..n)
        .map(|_| words[rng.range(0, words.len() - 1)].to_owned())
        .collect();
    let mut chars = out[0].chars();
    if let Some(first) = chars.next() {
        out[0] = first.to_uppercase().chain(chars).collect();
    }
    out.join(" ")
}

fn article(rng: &mut Rng, words: &[&str], i: usize) -> (Arc<Entry>, Article) {
    let tz = FixedOffset::east_opt(7 * 3600).unwrap();
    let published: DateTime<FixedOffset> = tz
        .with_ymd_and_hms(
            2015 + rng.range(0, 10) as i32,
            rng.range(1, 12) as u32,
            rng.range(1, 28) as u32,
            rng.range(6, 20) as u32,
            rng.range(0, 59) as u32,
            0,
        )
        .unwrap();
    let paragraphs = (0..rng.range(3, 7))
        .map(|_| {
            let sentences: Vec<String> = (0..rng.range(2, 5))
                .map(|_| sentence(rng, words, 10, 25))
                .collect();
            format!("{}.", sentences.join(". "))
        })
        .collect();
    let a = Article {
        id: format!("{}/bai-{i:06}", published.format("%Y/%m")),
        category: CATEGORIES[rng.range(0, 4)].to_owned(),
        title: format!("{} số {i}", sentence(rng, words, 8, 16)),
        published,
        paragraphs,
        author: Some("HĐND QUẬN CẦU GIẤY".into()),
        event: None,
        place: None,
        correction: None,
    };
    let entry = Entry::new(&a, format!("{}.txt", a.id), Stamp::default(), published);
    (Arc::new(entry), a)
}

/// Resident memory of this process, in bytes.
fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let words: Vec<&str> = WORDS.split_whitespace().collect();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let before = rss();
    let started = Instant::now();
    // As the daemon makes it: the lists go to a file in the state folder.
    let dir = std::env::temp_dir();
    let mut index = Index::in_folder(&dir).expect("a file in the temporary folder");
    for i in 0..n {
        let (entry, a) = article(&mut rng, &words, i);
        index.add(entry, &a);
    }
    index.shrink();
    let built = started.elapsed();
    let grown = rss().saturating_sub(before);
    println!(
        "index of {n} articles: built in {:.2} s, holds {:.1} MB in memory and {:.1} MB in \
         its file (process grew {:.1} MB)",
        built.as_secs_f64(),
        index.heap_bytes() as f64 / 1e6,
        index.disk_bytes() as f64 / 1e6,
        grown as f64 / 1e6
    );

    let rounds = 30;
    let mut all = Vec::new();
    println!(
        "{:<28} {:>9} {:>9} {:>9} {:>9}",
        "query", "found", "p50 ms", "p99 ms", "max ms"
    );
    for q in QUERIES {
        let mut times = Vec::with_capacity(rounds);
        let mut found = 0;
        for round in 0..rounds {
            let page = 1 + round % 3;
            let t = Instant::now();
            let r = index.search(q, page).expect("the index's file is readable");
            times.push(t.elapsed());
            found = r.total;
        }
        times.sort();
        println!(
            "{:<28} {:>9} {:>9.2} {:>9.2} {:>9.2}",
            q,
            found,
            percentile(&times, 0.5).as_secs_f64() * 1e3,
            percentile(&times, 0.99).as_secs_f64() * 1e3,
            times.last().unwrap().as_secs_f64() * 1e3
        );
        all.extend(times);
    }
    all.sort();
    println!(
        "all {} queries: p50 {:.2} ms, p99 {:.2} ms (budget 20 ms); index {:.1} MB (budget 150 MB)",
        all.len(),
        percentile(&all, 0.5).as_secs_f64() * 1e3,
        percentile(&all, 0.99).as_secs_f64() * 1e3,
        index.heap_bytes() as f64 / 1e6
    );
}
