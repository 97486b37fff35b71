//! One article file in the council's layout: category, title, `Ngày đăng` line, paragraphs,
//! optional signature.
//!
//! [`parse`] works on text and knows nothing of files; `scan::from_file` reads and calls it.

use std::fmt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, TimeZone};
use chrono_tz::Tz;
use std::borrow::Cow;

use unicode_normalization::{IsNormalized, UnicodeNormalization, is_nfc_quick};

/// The marker of the publication line.
pub const DATE_MARKER: &str = "Ngày đăng";
/// The form the clerk is told to use when a date line is wrong.
const DATE_FORM: &str = "\"Ngày đăng 14/02/2020 | 08:16\" (ngày/tháng/năm | giờ:phút)";
/// A signature is a last paragraph of one line no longer than this, in capitals.
const SIGNATURE_MAX_CHARS: usize = 80;
/// Characters kept in a plain-text excerpt.
pub const EXCERPT_CHARS: usize = 280;

/// A parsed article. The id is given by the caller (it comes from the file's path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Article {
    /// Path in the store without `.txt`, `/`-separated: the guid and the page URL.
    pub id: String,
    /// The category line, as written (NFC, trimmed).
    pub category: String,
    pub title: String,
    /// Publication time with the council's offset.
    pub published: DateTime<FixedOffset>,
    /// Body paragraphs, without the signature.
    pub paragraphs: Vec<String>,
    /// The signature line, when the article ends with one.
    pub author: Option<String>,
    /// When the event the article announces takes place (`Thời gian:`), in council time.
    pub event: Option<When>,
    /// Where it takes place (`Địa điểm:`).
    pub place: Option<String>,
    /// Why the article was corrected (`Đính chính:`).
    pub correction: Option<String>,
}

/// The time of an event, in the council's local time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum When {
    /// From a time of day, to a later one (same day or another) when given.
    Timed {
        start: NaiveDateTime,
        end: Option<NaiveDateTime>,
    },
    /// Whole days, `first` to `last` included.
    AllDay { first: NaiveDate, last: NaiveDate },
}

/// The marker of an event's time.
pub const EVENT_MARKER: &str = "Thời gian";
/// The marker of an event's place.
pub const PLACE_MARKER: &str = "Địa điểm";
/// The marker of a correction's reason.
pub const CORRECTION_MARKER: &str = "Đính chính";
/// The forms the clerk is told to use when an event's time is wrong.
const EVENT_FORM: &str = "\"Thời gian: 16/01/2025 | 08:00\" (ngày/tháng/năm | giờ:phút), \
     có thể thêm giờ kết thúc \" - 11:30\" (cùng ngày) hoặc \" - 17/01/2025 | 11:30\"; \
     sự kiện cả ngày thì ghi \"Thời gian: 16/01/2025\", có thể thêm \" - 18/01/2025\"";

/// A problem in an article's text, at a line counted from 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    pub line: usize,
    pub message: String,
}

impl LineError {
    pub fn new(line: usize, message: impl Into<String>) -> Self {
        LineError {
            line,
            message: message.into(),
        }
    }
}

/// A broken article file: `path:line: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{}: {}", path.display(), line, message)]
pub struct ArticleError {
    pub path: PathBuf,
    pub line: usize,
    pub message: String,
}

impl ArticleError {
    pub fn at(path: &Path, error: LineError) -> Self {
        ArticleError {
            path: path.to_owned(),
            line: error.line,
            message: error.message,
        }
    }
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.line, self.message)
    }
}

/// Parses raw file bytes: checks for NUL bytes and UTF-8, drops a BOM, then [`parse`].
pub fn parse_bytes(id: &str, bytes: &[u8], tz: Tz) -> Result<Article, LineError> {
    if bytes.starts_with(&[0xFF, 0xFE]) || bytes.starts_with(&[0xFE, 0xFF]) {
        return Err(LineError::new(
            1,
            "tệp được lưu bằng bảng mã UTF-16 (Notepad gọi là \"Unicode\"); hãy lưu lại tệp \
             với bảng mã UTF-8 (trong Notepad: Lưu thành, mục Mã hóa, chọn UTF-8)",
        ));
    }
    if let Some(pos) = memchr::memchr(0, bytes) {
        return Err(LineError::new(
            line_at(bytes, pos),
            "tệp có byte NUL: đây là tệp nhị phân (ví dụ tệp Word hay PDF), không phải văn bản \
             bài viết; hãy lưu bài viết thành tệp .txt (văn bản thuần, mã UTF-8)",
        ));
    }
    // Checked with SIMD: byte by byte, checking mostly Vietnamese text took 4% of a build's
    // time.
    let text = simdutf8::compat::from_utf8(bytes).map_err(|e| {
        let pos = e.valid_up_to();
        LineError::new(
            line_at(bytes, pos),
            format!(
                "tệp không phải văn bản mã UTF-8 (gặp byte 0x{:02X}); hãy lưu lại tệp với \
                 bảng mã UTF-8 (có thể tệp đang dùng bảng mã cũ như Windows-1258 hay TCVN3)",
                bytes[pos]
            ),
        )
    })?;
    parse(id, text, tz)
}

fn line_at(bytes: &[u8], pos: usize) -> usize {
    bytes[..pos].iter().filter(|&&b| b == b'\n').count() + 1
}

/// Parses an article's text. Lines are counted from 1 in the text as given.
pub fn parse(id: &str, text: &str, tz: Tz) -> Result<Article, LineError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    // (line number, cleaned line): NFC, no CR, no characters XML cannot carry, trimmed.
    let mut lines = text
        .split('\n')
        .enumerate()
        .map(|(i, raw)| (i + 1, clean(raw)))
        .peekable();

    if text.trim().is_empty() {
        return Err(LineError::new(
            1,
            format!(
                "tệp trống; một bài viết bắt đầu bằng dòng chuyên mục, tiếp theo là \
                 dòng tiêu đề và dòng {DATE_FORM}"
            ),
        ));
    }

    let (category_line, category) = next_nonblank(&mut lines).expect("text is not blank");
    if category.starts_with(DATE_MARKER) {
        return Err(LineError::new(
            category_line,
            "thiếu dòng chuyên mục (ví dụ \"TIN TỨC - SỰ KIỆN TIÊU BIỂU\") và dòng tiêu đề: \
             hai dòng này phải đứng trước dòng \"Ngày đăng\"",
        ));
    }
    let Some((title_line, title)) = next_nonblank(&mut lines) else {
        return Err(LineError::new(
            category_line + 1,
            format!(
                "thiếu tiêu đề: sau dòng chuyên mục cần có dòng tiêu đề, \
                 rồi đến dòng {DATE_FORM}"
            ),
        ));
    };
    if title.starts_with(DATE_MARKER) {
        return Err(LineError::new(
            title_line,
            "thiếu tiêu đề trước dòng \"Ngày đăng\": dòng đầu tiên là chuyên mục, \
             dòng tiếp theo là tiêu đề",
        ));
    }
    let Some((date_line, date)) = next_nonblank(&mut lines) else {
        return Err(LineError::new(
            title_line + 1,
            format!("sau tiêu đề cần có dòng {DATE_FORM}"),
        ));
    };
    let naive = parse_date_line(&date).map_err(|m| LineError::new(date_line, m))?;
    let published = localize(naive, tz).map_err(|m| LineError::new(date_line, m))?;
    let header = read_header(&mut lines, tz)?;

    let mut paragraphs: Vec<String> = Vec::new();
    let mut current: Vec<String> = Vec::new();
    for (_, line) in lines {
        if line.is_empty() {
            if !current.is_empty() {
                paragraphs.push(current.join(" "));
                current.clear();
            }
        } else {
            current.push(line);
        }
    }
    if !current.is_empty() {
        paragraphs.push(current.join(" "));
    }
    let author = match paragraphs.last() {
        Some(last) if paragraphs.len() > 1 && is_signature(last) => paragraphs.pop(),
        _ => None,
    };
    if paragraphs.is_empty() {
        return Err(LineError::new(
            date_line + 1,
            "bài viết chưa có nội dung sau dòng \"Ngày đăng\"; hãy thêm các đoạn văn, \
             mỗi đoạn cách nhau một dòng trống",
        ));
    }
    Ok(Article {
        id: id.to_owned(),
        category,
        title,
        published,
        paragraphs,
        author,
        event: header.event,
        place: header.place,
        correction: header.correction,
    })
}

/// The optional lines directly under the date line.
#[derive(Default)]
struct Header {
    event: Option<When>,
    place: Option<String>,
    correction: Option<String>,
}

/// Reads `Thời gian:`, `Địa điểm:` and `Đính chính:` lines, in any order, up to the first
/// blank line or other text (which starts the body).
fn read_header(
    lines: &mut std::iter::Peekable<impl Iterator<Item = (usize, String)>>,
    tz: Tz,
) -> Result<Header, LineError> {
    let mut header = Header::default();
    while let Some((n, line)) = lines.peek() {
        let n = *n;
        let (marker, value) = if let Some(v) = field(line, EVENT_MARKER) {
            (EVENT_MARKER, v)
        } else if let Some(v) = field(line, PLACE_MARKER) {
            (PLACE_MARKER, v)
        } else if let Some(v) = field(line, CORRECTION_MARKER) {
            (CORRECTION_MARKER, v)
        } else {
            break;
        };
        let value = value.to_owned();
        lines.next();
        let twice = || {
            LineError::new(
                n,
                format!(
                    "dòng \"{marker}:\" bị lặp lại; mỗi bài viết chỉ có một dòng này: \
                     hãy giữ lại dòng đúng và xóa dòng kia"
                ),
            )
        };
        let empty = |what: &str| {
            LineError::new(
                n,
                format!(
                    "dòng \"{marker}:\" còn trống; hãy ghi {what} sau dấu hai chấm, \
                     hoặc xóa dòng này"
                ),
            )
        };
        match marker {
            EVENT_MARKER => {
                if header.event.is_some() {
                    return Err(twice());
                }
                header.event = Some(parse_when(&value, tz).map_err(|m| LineError::new(n, m))?);
            }
            PLACE_MARKER => {
                if header.place.is_some() {
                    return Err(twice());
                }
                if value.is_empty() {
                    return Err(empty("địa điểm diễn ra sự kiện"));
                }
                header.place = Some(value);
            }
            _ => {
                if header.correction.is_some() {
                    return Err(twice());
                }
                if value.is_empty() {
                    return Err(empty("lý do đính chính"));
                }
                header.correction = Some(value);
            }
        }
    }
    Ok(header)
}

/// The problems of `text` after `first` (the one [`parse`] found), as far as they can be
/// told apart: a wrong `Thời gian:`, `Địa điểm:` or `Đính chính:` line stands alone, so the
/// article is read again without it, up to `most` problems in all. A problem elsewhere (the
/// date, the title) ends the list: what follows it would be read wrongly.
pub fn more_problems(text: &str, first: &LineError, tz: Tz, most: usize) -> Vec<LineError> {
    let is_field = |line: &str| {
        [EVENT_MARKER, PLACE_MARKER, CORRECTION_MARKER]
            .iter()
            .any(|m| starts_with_marker(line, m))
    };
    // The lines kept, by their number in the file.
    let mut kept: Vec<(usize, &str)> = text
        .split('\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .collect();
    let mut out = Vec::new();
    let mut at = first.line;
    while out.len() + 1 < most {
        let Some(index) = kept.iter().position(|(n, _)| *n == at) else {
            break;
        };
        if !is_field(kept[index].1) {
            break;
        }
        kept.remove(index);
        let again: Vec<&str> = kept.iter().map(|(_, l)| *l).collect();
        let Err(e) = parse("", &again.join("\n"), tz) else {
            break;
        };
        let Some(&(line, text)) = kept.get(e.line.saturating_sub(1)) else {
            break;
        };
        if !is_field(text) {
            break;
        }
        out.push(LineError::new(line, e.message));
        at = line;
    }
    out
}

/// Whether `line` starts with `marker` (`CORRECTION_MARKER`…) and a colon, the marker in
/// any case, with or without its diacritics, as under the date line.
pub fn starts_with_marker(line: &str, marker: &str) -> bool {
    field(line.trim_start(), marker).is_some()
}

/// The value of `line` when it is `marker`, optional spaces, a colon and the value. The
/// marker may be typed in any case and without its diacritics (`Dinh chinh:`, `THOI GIAN:`,
/// on a keyboard without a Vietnamese input method): meant so, under the date line.
fn field<'l>(line: &'l str, marker: &str) -> Option<&'l str> {
    let rest = match line.strip_prefix(marker) {
        Some(rest) => rest,
        None => {
            let n = marker.chars().count();
            let end = line.char_indices().nth(n).map_or(line.len(), |(at, _)| at);
            let typed = &line[..end];
            let same = typed.chars().count() == n
                && typed
                    .chars()
                    .zip(marker.chars())
                    .all(|(a, b)| crate::search::fold_char(a) == crate::search::fold_char(b));
            if !same {
                return None;
            }
            &line[end..]
        }
    };
    Some(rest.trim_start().strip_prefix(':')?.trim())
}

/// Reads an event's time: `D/M/YYYY | H:MM [- H:MM | - D/M/YYYY | H:MM]` or
/// `D/M/YYYY [- D/M/YYYY]`.
fn parse_when(value: &str, tz: Tz) -> Result<When, String> {
    let bad = || {
        format!(
            "không đọc được thời gian của sự kiện \"{}\"; cần viết {EVENT_FORM}",
            shorten(value)
        )
    };
    // A dash typed by a word processor is a dash.
    let value = &value.replace(['–', '—'], "-");
    let (from, to) = match value.split_once(" - ").or_else(|| value.split_once('-')) {
        Some((a, b)) => (a.trim(), Some(b.trim())),
        None => (value.trim(), None),
    };
    if from.is_empty() || to.is_some_and(str::is_empty) {
        return Err(bad());
    }
    let point = |text: &str| -> Result<(NaiveDate, Option<NaiveTime>), String> {
        match text.split_once('|') {
            Some((d, t)) => Ok((read_date(d.trim(), &bad)?, Some(read_time(t.trim())?))),
            None => Ok((read_date(text, &bad)?, None)),
        }
    };
    let (day, time) = point(from)?;
    let when = match (time, to) {
        (None, None) => When::AllDay {
            first: day,
            last: day,
        },
        (None, Some(to)) => {
            let (last, t) = point(to)?;
            if t.is_some() {
                return Err(format!(
                    "sự kiện bắt đầu cả ngày (không ghi giờ) nhưng lúc kết thúc lại có giờ; \
                     hãy ghi giờ cho cả hai, hoặc bỏ giờ ở cả hai: {EVENT_FORM}"
                ));
            }
            When::AllDay { first: day, last }
        }
        (Some(t), None) => When::Timed {
            start: day.and_time(t),
            end: None,
        },
        (Some(t), Some(to)) => {
            let end = if to.contains('/') {
                let (d, et) = point(to)?;
                let Some(et) = et else {
                    return Err(format!(
                        "sự kiện bắt đầu có giờ nhưng lúc kết thúc chỉ có ngày; \
                         hãy ghi cả giờ kết thúc: {EVENT_FORM}"
                    ));
                };
                d.and_time(et)
            } else {
                day.and_time(read_time(to)?)
            };
            When::Timed {
                start: day.and_time(t),
                end: Some(end),
            }
        }
    };
    match when {
        When::Timed { start, end } => {
            for t in std::iter::once(start).chain(end) {
                localize(t, tz)?;
            }
            if let Some(end) = end.filter(|e| *e < start) {
                return Err(format!(
                    "sự kiện kết thúc ({}) trước khi bắt đầu ({}); hãy kiểm tra lại giờ",
                    end.format("%H:%M %d/%m/%Y"),
                    start.format("%H:%M %d/%m/%Y")
                ));
            }
        }
        When::AllDay { first, last } => {
            if last < first {
                return Err(format!(
                    "sự kiện kết thúc ({}) trước khi bắt đầu ({}); hãy kiểm tra lại ngày",
                    last.format("%d/%m/%Y"),
                    first.format("%d/%m/%Y")
                ));
            }
        }
    }
    Ok(when)
}

fn next_nonblank(lines: &mut impl Iterator<Item = (usize, String)>) -> Option<(usize, String)> {
    lines.find(|(_, line)| !line.is_empty())
}

/// NFC, without CR, characters that XML 1.0 forbids or other control characters, trimmed.
pub fn clean(raw: &str) -> String {
    let raw = raw.trim_end_matches('\r');
    let unwanted =
        |c: char| c.is_control() || is_invisible(c) || c == '\u{fffe}' || c == '\u{ffff}';
    // Most lines are already clean NFC: check first, copy once.
    let kept: Cow<'_, str> = if has_unwanted(raw) {
        Cow::Owned(
            raw.chars()
                .filter(|&c| c == '\t' || !unwanted(c))
                .map(|c| if c == '\t' { ' ' } else { c })
                .collect(),
        )
    } else {
        Cow::Borrowed(raw)
    };
    if is_surely_nfc(&kept) {
        kept.trim().to_owned()
    } else {
        kept.nfc().collect::<String>().trim().to_owned()
    }
}

/// Characters that show nothing but change what is around them, which a text copied from a
/// web page or a word processor brings along: a zero-width space (splits a word for search),
/// the direction marks, embeddings, overrides and isolates (U+202E shows a title backwards),
/// the word joiner and a byte order mark inside the text. Joiners (U+200C, U+200D) stay:
/// emoji are made with them.
pub fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{200b}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}' | '\u{2066}'..='\u{2069}' | '\u{feff}'
    )
}

/// Whether `text` holds a control character (Unicode's Cc: U+0000–U+001F, U+007F–U+009F), an
/// invisible one ([`is_invisible`]), or U+FFFE or U+FFFF, read from its UTF-8 bytes (decoding
/// every character was measurable in a build).
fn has_unwanted(text: &str) -> bool {
    any_at(text.as_bytes(), |x, y, z| {
        (x <= 0x1f)
            | (x == 0x7f)
            // U+0080–U+009F
            | ((x == 0xc2) & (y.wrapping_sub(0x80) < 0x20))
            // U+200B, U+200E, U+200F, U+202A–U+202E; U+2060, U+2066–U+2069
            | ((x == 0xe2)
                & (((y == 0x80)
                    & ((z == 0x8b) | (z == 0x8e) | (z == 0x8f) | (z.wrapping_sub(0xaa) < 5)))
                    | ((y == 0x81) & ((z == 0xa0) | (z.wrapping_sub(0xa6) < 4)))))
            // U+FEFF; U+FFFE, U+FFFF
            | ((x == 0xef) & (((y == 0xbb) & (z == 0xbf)) | ((y == 0xbf) & (z.wrapping_sub(0xbe) < 2))))
    })
}

/// Whether `found` holds for some byte of `bytes` with the two after it (zeros past the
/// end), judged 64 bytes at a time with no branch a byte: Vietnamese text goes from one-byte
/// to multi-byte characters every few bytes, and a branch a byte mispredicted (a third of
/// the speed; these scans were the first cost of a first start on a large store).
#[inline(always)]
fn any_at(bytes: &[u8], found: impl Fn(u8, u8, u8) -> bool) -> bool {
    const BLOCK: usize = 64;
    let mut at = 0;
    while at + BLOCK + 2 <= bytes.len() {
        let window: &[u8; BLOCK + 2] = bytes[at..at + BLOCK + 2]
            .try_into()
            .expect("a window of the block's size");
        let mut any = false;
        for k in 0..BLOCK {
            any |= found(window[k], window[k + 1], window[k + 2]);
        }
        if any {
            return true;
        }
        at += BLOCK;
    }
    let rest = bytes.len() - at;
    let mut tail = [0u8; BLOCK + 4];
    tail[..rest].copy_from_slice(&bytes[at..]);
    (0..rest).any(|k| found(tail[k], tail[k + 1], tail[k + 2]))
}

/// A fast NFC test for Vietnamese text: characters below U+0300, the precomposed letters of
/// Latin Extended Additional and common punctuation are NFC whatever surrounds them (they
/// neither decompose nor combine with what precedes). Anything else asks the full check.
fn is_surely_nfc(text: &str) -> bool {
    all_stable(text) || is_nfc_quick(text.chars()) == IsNormalized::Yes
}

/// Whether every character of `text` is below U+0300, in U+1E00–U+1EFF, U+2010–U+2027 or
/// U+2030–U+205E, read from the UTF-8 bytes (see [`any_at`]).
fn all_stable(text: &str) -> bool {
    !any_at(text.as_bytes(), |x, y, z| !stable_at(x, y, z))
}

/// Whether the byte `x`, followed by `y` and `z`, is part of a stable character (see
/// [`all_stable`]): an ASCII byte, a continuation byte, the lead of U+0080–U+02FF (C2–CB),
/// or the lead of a three-byte character in U+1E00–U+1EFF (E1 B8–BB) or in the punctuation
/// ranges (E2 80 90–A7, E2 80 B0–BF, E2 81 80–9E). Any other lead is not.
#[inline(always)]
fn stable_at(x: u8, y: u8, z: u8) -> bool {
    (x < 0xcc)
        | ((x == 0xe1) & (y.wrapping_sub(0xb8) < 4))
        | ((x == 0xe2)
            & (((y == 0x80) & ((z.wrapping_sub(0x90) < 0x18) | (z.wrapping_sub(0xb0) < 0x10)))
                | ((y == 0x81) & (z.wrapping_sub(0x80) < 0x1f))))
}

fn is_signature(paragraph: &str) -> bool {
    paragraph.chars().count() <= SIGNATURE_MAX_CHARS
        && paragraph.chars().any(char::is_alphabetic)
        && !paragraph.chars().any(char::is_lowercase)
}

/// Reads `Ngày đăng[:] D/M/YYYY [| H:MM]`.
/// Years an article may be dated in.
pub const MIN_YEAR: u32 = 1945;
pub const MAX_YEAR: u32 = 2100;

fn parse_date_line(line: &str) -> Result<NaiveDateTime, String> {
    let Some(rest) = line.strip_prefix(DATE_MARKER) else {
        return Err(format!(
            "sau tiêu đề cần có dòng {DATE_FORM}, nhưng dòng này là \"{}\"",
            shorten(line)
        ));
    };
    let rest = rest.trim_start();
    let rest = rest.strip_prefix(':').unwrap_or(rest).trim();
    let (date_text, time_text) = match rest.split_once('|') {
        Some((d, t)) => (d.trim(), Some(t.trim())),
        None => (rest, None),
    };
    let bad_form = || {
        format!(
            "dòng \"Ngày đăng\" không đúng dạng: cần {DATE_FORM}, \
             còn ở đây là \"{rest}\""
        )
    };
    let date = read_date(date_text, &bad_form)?;
    let time = match time_text {
        None => NaiveTime::MIN,
        Some(t) => read_time(t)?,
    };
    Ok(date.and_time(time))
}

/// Reads `D/M/YYYY`; `bad_form` says how to write the line it is on.
fn read_date(date_text: &str, bad_form: &dyn Fn() -> String) -> Result<NaiveDate, String> {
    let mut parts = date_text.split('/');
    let (Some(d), Some(m), Some(y), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad_form());
    };
    let day = number(d.trim(), 1, 2).ok_or_else(bad_form)?;
    let month = number(m.trim(), 1, 2).ok_or_else(bad_form)?;
    let year = number(y.trim(), 4, 4).ok_or_else(bad_form)?;
    if !(MIN_YEAR..=MAX_YEAR).contains(&year) {
        return Err(format!(
            "năm {year} của ngày \"{date_text}\" nằm ngoài khoảng cho phép: ngày trong \
             bài viết phải có năm từ {MIN_YEAR} đến {MAX_YEAR}"
        ));
    }
    NaiveDate::from_ymd_opt(year as i32, month, day).ok_or_else(|| {
        format!(
            "ngày \"{date_text}\" không có trên lịch (ngày {day}, tháng {month}, năm {year}); \
             hãy ghi theo thứ tự ngày/tháng/năm, ví dụ 14/02/2020"
        )
    })
}

/// Reads `H:MM`.
fn read_time(t: &str) -> Result<NaiveTime, String> {
    let bad_time = || format!("giờ \"{t}\" không hợp lệ; hãy ghi giờ:phút từ 00:00 đến 23:59");
    let (h, m) = t.split_once(':').ok_or_else(bad_time)?;
    let hour = number(h.trim(), 1, 2).ok_or_else(bad_time)?;
    let minute = number(m.trim(), 2, 2).ok_or_else(bad_time)?;
    NaiveTime::from_hms_opt(hour, minute, 0).ok_or_else(bad_time)
}

fn number(text: &str, min_digits: usize, max_digits: usize) -> Option<u32> {
    let ok =
        (min_digits..=max_digits).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_digit());
    if ok { text.parse().ok() } else { None }
}

fn localize(naive: NaiveDateTime, tz: Tz) -> Result<DateTime<FixedOffset>, String> {
    tz.from_local_datetime(&naive)
        .earliest()
        .map(|t| t.fixed_offset())
        .ok_or_else(|| format!("thời điểm {naive} không có ở múi giờ {tz} (do đổi giờ)"))
}

fn shorten(text: &str) -> String {
    const MAX: usize = 60;
    if text.chars().count() <= MAX {
        text.to_owned()
    } else {
        let mut s: String = text.chars().take(MAX).collect();
        s.push('…');
        s
    }
}

impl Article {
    /// A plain-text excerpt of the body, cut at a word.
    pub fn excerpt(&self) -> String {
        excerpt(&self.paragraphs)
    }
}

/// The first [`EXCERPT_CHARS`] characters of the body, cut at a word, with `…` when cut.
pub fn excerpt(paragraphs: &[String]) -> String {
    let mut out = String::new();
    let mut chars = 0;
    for p in paragraphs {
        if !out.is_empty() {
            out.push(' ');
            chars += 1;
        }
        out.push_str(p);
        chars += p.chars().count();
        if chars > EXCERPT_CHARS {
            break;
        }
    }
    if chars <= EXCERPT_CHARS {
        return out;
    }
    let end = out
        .char_indices()
        .nth(EXCERPT_CHARS)
        .map_or(out.len(), |(at, _)| at);
    let cut = &out[..end];
    let cut = match cut.rfind(' ') {
        Some(pos) if pos > EXCERPT_CHARS / 2 => &cut[..pos],
        _ => cut,
    };
    format!("{}…", cut.trim_end_matches([',', ';', ':', '.', ' ']))
}

/// Whether a file name is one the store ignores: hidden files, editor leftovers, non-`.txt`.
pub fn is_ignored_name(name: &str) -> bool {
    name.starts_with('.')
        || name.ends_with('~')
        || name.ends_with(".swp")
        || name.ends_with(".swx")
        || name == "4913"
        || !name.ends_with(".txt")
}

/// Whether `relative` (a path inside the store) is a draft: a file or a folder whose name
/// starts with `_`. Drafts are checked, never published or mailed.
pub fn is_draft(relative: &Path) -> bool {
    relative.components().any(|c| {
        matches!(c, std::path::Component::Normal(part) if part.to_str().is_some_and(|p| p.starts_with('_')))
    })
}

/// The id of the article at `relative` (a path inside the store), or `None` when the path is
/// not an article (ignored name, hidden folder).
pub fn id_for(relative: &Path) -> Option<String> {
    let mut parts = Vec::new();
    let mut components = relative.components().peekable();
    while let Some(component) = components.next() {
        let std::path::Component::Normal(part) = component else {
            return None;
        };
        let part = part.to_str()?;
        if components.peek().is_none() {
            if is_ignored_name(part) {
                return None;
            }
            parts.push(part.strip_suffix(".txt")?.to_owned());
        } else {
            if part.starts_with('.') {
                return None;
            }
            parts.push(part.to_owned());
        }
    }
    let id = parts.join("/");
    if id.is_empty() {
        None
    } else if is_surely_nfc(&id) {
        Some(id)
    } else {
        Some(id.nfc().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_characters_are_told_from_their_bytes_as_from_the_characters() {
        let slow = |t: &str| {
            t.chars().all(|c| {
                c < '\u{300}'
                    || ('\u{1e00}'..='\u{1eff}').contains(&c)
                    || ('\u{2010}'..='\u{2027}').contains(&c)
                    || ('\u{2030}'..='\u{205e}').contains(&c)
            })
        };
        // In the middle, at the start and at the end of a text; in and after a block. The
        // texts around it are stable: the text is as `c` alone is.
        let block = "a".repeat(63);
        let vietnamese = "ạ".repeat(30);
        let around = [
            ("ạ", "đ"),
            ("", ""),
            ("ạ", ""),
            (&block, "xy"),
            (&vietnamese, ""),
            (&format!("{block}{block}"), ""),
        ];
        assert!(around.iter().all(|(a, b)| slow(a) && slow(b)));
        let mut t = String::new();
        for c in (0..0x11_0000).filter_map(char::from_u32) {
            let expected = slow(c.encode_utf8(&mut [0; 4]));
            for (before, after) in &around {
                t.clear();
                t.push_str(before);
                t.push(c);
                t.push_str(after);
                assert_eq!(all_stable(&t), expected, "{:x} in {t:?}", c as u32);
            }
        }
        assert!(all_stable("Kỳ họp thứ 5 – “HĐND” …"));
        assert!(all_stable(""));
    }

    #[test]
    fn unwanted_characters_are_found_as_every_character_is_read() {
        let slow = |t: &str| {
            t.chars()
                .any(|c| c.is_control() || is_invisible(c) || c == '\u{fffe}' || c == '\u{ffff}')
        };
        let samples = [
            "Kỳ họp thứ 5 — “HĐND”",
            "tab\there",
            "nul\u{0}",
            "del\u{7f}",
            "c1 \u{85} next line",
            "\u{9f}",
            "\u{a0} no-break space is kept",
            "\u{fffe}",
            "x\u{ffff}",
            "\u{fffd} replacement is kept",
            "\u{ff3f}\u{efbf}",
            "",
        ];
        for t in samples {
            assert_eq!(has_unwanted(t), slow(t), "{t:?}");
        }
        // Every character of the first two planes, one at a time: inside a text, at its
        // end, in and after a block.
        let block = "a".repeat(63);
        for c in (0..0x2_0000).filter_map(char::from_u32) {
            for t in [
                format!("a{c}b"),
                format!("ạ{c}"),
                format!("{block}{c}xy"),
                format!("{block}{block}{c}"),
            ] {
                assert_eq!(has_unwanted(&t), slow(&t), "{:x} in {t:?}", c as u32);
            }
        }
    }

    const TZ: Tz = chrono_tz::Asia::Ho_Chi_Minh;
    const SEED: &str = include_str!("../articles/000_5a7074c8138324ae.txt");

    fn ok(text: &str) -> Article {
        parse("t", text, TZ).unwrap()
    }

    fn err(text: &str) -> LineError {
        parse("t", text, TZ).unwrap_err()
    }

    const BASIC: &str =
        "TIN TỨC\n\nTiêu đề\nNgày đăng 14/02/2020 | 08:16\n\nĐoạn một.\n\nĐoạn hai.\n";

    #[test]
    fn every_wrong_line_under_the_date_is_told() {
        let text = "THÔNG BÁO\n\nHọp\nNgày đăng 14/02/2020 | 08:16\n\
                    Thời gian: 10:00 – 09:00, 20/02/2020\nĐịa điểm:\nĐính chính:\n\nNội dung.\n";
        let first = parse("x", text, TZ).unwrap_err();
        assert_eq!(first.line, 5, "{first:?}");
        let more = more_problems(text, &first, TZ, 10);
        let lines: Vec<usize> = more.iter().map(|e| e.line).collect();
        assert_eq!(lines, [6, 7], "{more:?}");
        assert!(more[0].message.contains("Địa điểm"), "{more:?}");
        // At most `most` in all, the first included.
        assert_eq!(more_problems(text, &first, TZ, 2).len(), 1);
        // A wrong date ends the list: the lines under it would be read wrongly.
        let text = "THÔNG BÁO\n\nHọp\nNgày đăng 31/02/2020\nĐịa điểm:\n\nNội dung.\n";
        let first = parse("x", text, TZ).unwrap_err();
        assert!(more_problems(text, &first, TZ, 10).is_empty());
    }

    #[test]
    fn seed_article_exactly() {
        let a = parse("000_5a7074c8138324ae", SEED, TZ).unwrap();
        assert_eq!(a.category, "TIN TỨC - SỰ KIỆN TIÊU BIỂU");
        assert_eq!(
            a.title,
            "Thường trực HĐND, UBND, Ủy ban MTTQ Việt Nam quận Cầu Giấy ký kết chương trình \
             phối hợp công tác năm 2020"
        );
        assert_eq!(a.published.to_rfc3339(), "2020-02-14T08:16:00+07:00");
        assert_eq!(a.author.as_deref(), Some("HĐND QUẬN CẦU GIẤY"));
        assert_eq!(a.paragraphs.len(), 6);
        assert!(a.paragraphs[0].starts_with("Chiều 13/02/2020, Thường trực HĐND"));
        assert!(a.paragraphs[5].ends_with("kết quả giải quyết tới người dân./."));
    }

    #[test]
    fn crlf_and_bom() {
        let text = format!("\u{feff}{}", BASIC.replace('\n', "\r\n"));
        let a = ok(&text);
        assert_eq!(a.category, "TIN TỨC");
        assert_eq!(a.title, "Tiêu đề");
        assert_eq!(a.paragraphs, ["Đoạn một.", "Đoạn hai."]);
    }

    #[test]
    fn nfd_title_comes_out_nfc() {
        let nfd: String = "Kỳ họp thứ mười".nfd().collect();
        assert_ne!(nfd, "Kỳ họp thứ mười");
        let a = ok(&BASIC.replace("Tiêu đề", &nfd));
        assert_eq!(a.title, "Kỳ họp thứ mười");
    }

    #[test]
    fn markup_in_title_is_kept_as_text() {
        let title = "Giá <b> & \"ưu đãi\" ]]> tăng";
        let a = ok(&BASIC.replace("Tiêu đề", title));
        assert_eq!(a.title, title);
    }

    #[test]
    fn control_characters_are_dropped() {
        let a = ok(&BASIC.replace("Đoạn một.", "Đoạn\u{1}\u{8} một\u{1b}.\u{ffff}"));
        assert_eq!(a.paragraphs[0], "Đoạn một.");
        // Pasted from a web page: a zero-width space in a word, a right-to-left override.
        let a = ok(&BASIC
            .replace("Tiêu đề", "Ý kiến \u{202e}nhân dân\u{202c}")
            .replace("Đoạn một.", "Đại\u{200b}biểu và\u{feff} cử tri.\u{200d}"));
        assert_eq!(a.title, "Ý kiến nhân dân");
        assert_eq!(a.paragraphs[0], "Đạibiểu và cử tri.\u{200d}");
    }

    #[test]
    fn missing_time_is_midnight() {
        let a = ok(&BASIC.replace(" | 08:16", ""));
        assert_eq!(a.published.to_rfc3339(), "2020-02-14T00:00:00+07:00");
    }

    #[test]
    fn lenient_date_forms() {
        for line in [
            "Ngày đăng: 4/2/2020 | 8:05",
            "Ngày đăng 04/02/2020 |08:05",
            "Ngày đăng  4/02/2020|08:05",
        ] {
            let a = ok(&BASIC.replace("Ngày đăng 14/02/2020 | 08:16", line));
            assert_eq!(
                a.published.to_rfc3339(),
                "2020-02-04T08:05:00+07:00",
                "{line}"
            );
        }
    }

    #[test]
    fn signature_only_when_capitals() {
        let a = ok(&BASIC.replace("Đoạn hai.", "BAN BIÊN TẬP"));
        assert_eq!(a.author.as_deref(), Some("BAN BIÊN TẬP"));
        assert_eq!(a.paragraphs, ["Đoạn một."]);
        assert_eq!(ok(BASIC).author, None);
    }

    #[test]
    fn paragraph_lines_are_joined() {
        let a = ok(&BASIC.replace("Đoạn một.", "Dòng một\nDòng hai"));
        assert_eq!(a.paragraphs[0], "Dòng một Dòng hai");
    }

    #[test]
    fn empty_file() {
        let e = err("");
        assert_eq!(e.line, 1);
        assert!(e.message.contains("tệp trống"), "{}", e.message);
        assert_eq!(err(" \n\n").line, 1);
    }

    #[test]
    fn no_date_line() {
        let e = err("TIN TỨC\n\nTiêu đề\n\nĐoạn một.\n");
        assert_eq!(e.line, 5);
        assert!(
            e.message
                .contains("cần có dòng \"Ngày đăng 14/02/2020 | 08:16\""),
            "{}",
            e.message
        );
    }

    #[test]
    fn years_out_of_range_are_errors_on_their_line() {
        for date in ["01/01/0001", "14/02/1900", "01/01/2101", "31/12/9999"] {
            let e = err(&format!("TIN\n\nTiêu đề\nNgày đăng {date}\n\nĐoạn.\n"));
            assert_eq!(e.line, 4, "{date}");
            assert!(
                e.message.contains("nằm ngoài khoảng cho phép"),
                "{date}: {}",
                e.message
            );
        }
    }

    #[test]
    fn impossible_dates() {
        let e = err(&BASIC.replace("14/02/2020", "31/02/2020"));
        assert_eq!(e.line, 4);
        assert!(
            e.message.contains("\"31/02/2020\" không có trên lịch"),
            "{}",
            e.message
        );
        let e = err(&BASIC.replace("08:16", "25:61"));
        assert_eq!(e.line, 4);
        assert!(
            e.message.contains("giờ \"25:61\" không hợp lệ"),
            "{}",
            e.message
        );
        let e = err(&BASIC.replace("14/02/2020", "14-02-2020"));
        assert!(e.message.contains("không đúng dạng"), "{}", e.message);
    }

    #[test]
    fn header_only_is_an_error() {
        let e = err("TIN TỨC\nTiêu đề\nNgày đăng 14/02/2020\n");
        assert_eq!(e.line, 4);
        assert!(e.message.contains("chưa có nội dung"), "{}", e.message);
    }

    #[test]
    fn nul_bytes_and_bad_utf8() {
        let e = parse_bytes("t", b"TIN\nTitle\n\0", TZ).unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.message.contains("byte NUL"), "{}", e.message);
        let e = parse_bytes("t", b"TIN\nTi\xe0u\n", TZ).unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains("UTF-8"), "{}", e.message);
    }

    #[test]
    fn nfc_fast_path_agrees_with_the_full_check() {
        for text in [
            "Ngày đăng “Kỳ họp” – 2020",
            "A\u{301}",
            "e\u{302}\u{301}",
            "\u{2126}",
            "ạ\u{300}",
        ] {
            let expected: String = text.nfc().collect();
            assert_eq!(clean(text), expected, "{text:?}");
        }
    }

    fn with_header(lines: &str) -> String {
        BASIC.replace(
            "Ngày đăng 14/02/2020 | 08:16\n",
            &format!("Ngày đăng 14/02/2020 | 08:16\n{lines}\n"),
        )
    }

    fn when(line: &str) -> When {
        ok(&with_header(line)).event.unwrap()
    }

    fn at(text: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M").unwrap()
    }

    fn day(text: &str) -> NaiveDate {
        NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap()
    }

    #[test]
    fn markers_typed_without_diacritics_or_in_another_case_are_markers() {
        let a = ok(&with_header(
            "Dinh chinh: doi gio khai mac\nTHOI GIAN: 16/12/2026 | 08:00\nđịa điểm: Trụ sở",
        ));
        assert_eq!(a.correction.as_deref(), Some("doi gio khai mac"));
        assert!(a.event.is_some());
        assert_eq!(a.place.as_deref(), Some("Trụ sở"));
        // Without the colon it is text: a sentence may start with these words.
        let b = ok(&with_header("Đính chính sửa giờ"));
        assert_eq!(b.correction, None);
        assert!(b.paragraphs[0].starts_with("Đính chính sửa giờ"));
    }

    #[test]
    fn event_time_forms() {
        let cases = [
            (
                "Thời gian: 16/01/2025 | 08:00",
                When::Timed {
                    start: at("2025-01-16 08:00"),
                    end: None,
                },
            ),
            (
                "Thời gian: 16/01/2025 | 08:00 - 11:30",
                When::Timed {
                    start: at("2025-01-16 08:00"),
                    end: Some(at("2025-01-16 11:30")),
                },
            ),
            (
                "Thời gian: 16/01/2025 | 08:00 - 17/01/2025 | 11:30",
                When::Timed {
                    start: at("2025-01-16 08:00"),
                    end: Some(at("2025-01-17 11:30")),
                },
            ),
            (
                "Thời gian: 16/01/2025",
                When::AllDay {
                    first: day("2025-01-16"),
                    last: day("2025-01-16"),
                },
            ),
            (
                "Thời gian: 16/01/2025 - 18/01/2025",
                When::AllDay {
                    first: day("2025-01-16"),
                    last: day("2025-01-18"),
                },
            ),
            // The same leniency as the date line: one digit, no space after the colon, no
            // spaces around the bar or the dash, a typographic dash.
            (
                "Thời gian:6/1/2025|8:00-11:30",
                When::Timed {
                    start: at("2025-01-06 08:00"),
                    end: Some(at("2025-01-06 11:30")),
                },
            ),
            (
                "Thời gian : 6/1/2025 – 7/1/2025",
                When::AllDay {
                    first: day("2025-01-06"),
                    last: day("2025-01-07"),
                },
            ),
        ];
        for (line, expected) in cases {
            assert_eq!(when(line), expected, "{line}");
        }
    }

    #[test]
    fn place_and_correction_in_any_order() {
        let a = ok(&with_header(
            "Đính chính: đổi giờ họp\nĐịa điểm:Trụ sở tiếp công dân quận, số 36 đường Cầu Giấy\n\
             Thời gian: 16/01/2025 | 08:00 - 11:30",
        ));
        assert_eq!(a.correction.as_deref(), Some("đổi giờ họp"));
        assert_eq!(
            a.place.as_deref(),
            Some("Trụ sở tiếp công dân quận, số 36 đường Cầu Giấy")
        );
        assert!(a.event.is_some());
        assert_eq!(a.paragraphs, ["Đoạn một.", "Đoạn hai."]);
        // Without the lines, the article is as before.
        let plain = ok(BASIC);
        assert_eq!(
            (plain.event, plain.place, plain.correction),
            (None, None, None)
        );
    }

    #[test]
    fn a_body_line_that_only_mentions_a_marker_is_body() {
        let a = ok(&BASIC.replace(
            "Ngày đăng 14/02/2020 | 08:16\n\n",
            "Ngày đăng 14/02/2020 | 08:16\nThời gian qua, HĐND đã giám sát.\n\n",
        ));
        assert_eq!(a.event, None);
        assert_eq!(a.paragraphs[0], "Thời gian qua, HĐND đã giám sát.");
    }

    #[test]
    fn broken_header_lines_are_errors_on_their_line() {
        let cases = [
            (
                "Thời gian: 16-01-2025",
                "không đọc được thời gian của sự kiện",
            ),
            (
                "Thời gian: mai",
                "cần viết \"Thời gian: 16/01/2025 | 08:00\"",
            ),
            ("Thời gian: 31/02/2025", "không có trên lịch"),
            (
                "Thời gian: 16/01/2025 | 25:00",
                "giờ \"25:00\" không hợp lệ",
            ),
            (
                "Thời gian: 16/01/2025 | 08:00 - 07:00",
                "kết thúc (07:00 16/01/2025) trước khi bắt đầu",
            ),
            (
                "Thời gian: 18/01/2025 - 16/01/2025",
                "kết thúc (16/01/2025) trước khi bắt đầu",
            ),
            (
                "Thời gian: 16/01/2025 - 17/01/2025 | 10:00",
                "hãy ghi giờ cho cả hai, hoặc bỏ giờ ở cả hai",
            ),
            (
                "Thời gian: 16/01/2025 | 08:00 - 17/01/2025",
                "hãy ghi cả giờ kết thúc",
            ),
            (
                "Thời gian: 16/01/2025 -",
                "không đọc được thời gian của sự kiện",
            ),
            ("Thời gian:", "không đọc được thời gian của sự kiện"),
            ("Địa điểm:", "dòng \"Địa điểm:\" còn trống"),
            ("Đính chính:  ", "hãy ghi lý do đính chính"),
            ("Địa điểm: A\nĐịa điểm: B", "dòng \"Địa điểm:\" bị lặp lại"),
        ];
        for (lines, expected) in cases {
            let e = err(&with_header(lines));
            let line = 5 + lines.matches('\n').count();
            assert_eq!(e.line, line, "{lines}: {}", e.message);
            assert!(e.message.contains(expected), "{lines}: {}", e.message);
        }
    }

    #[test]
    fn drafts_are_names_that_start_with_an_underscore() {
        assert!(is_draft(Path::new("_nhap.txt")));
        assert!(is_draft(Path::new("2026/_chua-xong/bai.txt")));
        assert!(!is_draft(Path::new("2026/bai_moi.txt")));
        assert!(!is_draft(Path::new("bai.txt")));
    }

    #[test]
    fn ids_and_ignored_names() {
        assert_eq!(
            id_for(Path::new("2020/02/ky-ket.txt")).as_deref(),
            Some("2020/02/ky-ket")
        );
        assert_eq!(id_for(Path::new("a.txt")).as_deref(), Some("a"));
        for ignored in [
            ".hidden.txt",
            "a.txt~",
            ".a.txt.swp",
            ".#a.txt",
            "4913",
            "a.md",
            ".git/x.txt",
            "a/.b/c.txt",
        ] {
            assert_eq!(id_for(Path::new(ignored)), None, "{ignored}");
        }
    }

    #[test]
    fn excerpt_is_cut_at_a_word() {
        let long = vec!["từ ".repeat(200)];
        let e = excerpt(&long);
        assert!(e.ends_with('…'));
        assert!(e.chars().count() <= EXCERPT_CHARS + 1);
        assert_eq!(excerpt(&["Ngắn.".to_string()]), "Ngắn.");
        let sentences = vec![
            format!("{}.", "từ ".repeat(139).trim()),
            "Câu sau.".repeat(20),
        ];
        assert!(
            !excerpt(&sentences).contains(".…"),
            "no dot before the ellipsis"
        );
        // Two paragraphs joined by a space that make exactly the limit stay whole; one
        // character more and the text is cut.
        let half = EXCERPT_CHARS / 2;
        let whole = vec!["ạ".repeat(half), "ệ".repeat(EXCERPT_CHARS - half - 1)];
        assert_eq!(excerpt(&whole), whole.join(" "));
        let over = vec!["ạ".repeat(half), "ệ".repeat(EXCERPT_CHARS - half)];
        assert_eq!(excerpt(&over), format!("{}…", "ạ".repeat(half)));
    }
}
