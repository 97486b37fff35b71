//! Cleaning the lines of articles as a start reads them: NFC (checked from the bytes for
//! Vietnamese text), control and invisible characters out, trimmed. Prints the time a byte,
//! best of 5 rounds.
//!
//!     cargo bench --bench article [-- LINES]
//!
//! Lines are made as `benches/gen_store.py` makes its paragraphs: council words in
//! Vietnamese, one-byte and multi-byte characters mixed every few bytes.

use std::time::{Duration, Instant};

const WORDS: &str = "hội nghị kỳ họp thường trực đại biểu cử tri phường quận nghị quyết giám \
    sát khảo sát ngân sách đầu tư công chương trình phối hợp công tác kinh tế xã hội an ninh \
    quốc phòng tuyên truyền đô thị môi trường vỉa hè rác thải giáo dục y tế văn hóa thể thao \
    lãnh đạo ủy ban mặt trận tổ quốc nhân dân chính quyền kiến nghị giải quyết kết quả nhiệm \
    vụ năm quý tháng triển khai thực hiện đánh giá tổng kết báo cáo thông báo kế hoạch tổ chức";

fn main() {
    let lines: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(400_000);
    let words: Vec<&str> = WORDS.split_whitespace().collect();
    // A small linear congruential generator: the same lines at every run.
    let mut seed: u64 = 42;
    let mut next = move |n: usize| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) as usize % n
    };
    let text: Vec<String> = (0..lines)
        .map(|_| {
            let n = 8 + next(40);
            let mut line = (0..n)
                .map(|_| words[next(words.len())])
                .collect::<Vec<_>>()
                .join(" ");
            line.push('.');
            line
        })
        .collect();
    let bytes: usize = text.iter().map(String::len).sum();
    let mut best = Duration::MAX;
    let mut kept = 0;
    for _ in 0..5 {
        let t = Instant::now();
        kept = text
            .iter()
            .map(|l| bantin::article::clean(l).len())
            .sum::<usize>();
        best = best.min(t.elapsed());
    }
    assert_eq!(
        kept, bytes,
        "the lines are clean NFC already: kept as they are"
    );
    println!(
        "clean: {lines} lines, {:.1} MB: {:.1} ms, {:.2} ns a byte (best of 5)",
        bytes as f64 / 1e6,
        best.as_secs_f64() * 1e3,
        best.as_nanos() as f64 / bytes as f64
    );
}
