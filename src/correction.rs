//! Corrections (`Đính chính:`): the version of an article that people were told, and what
//! changed since, word by word. Pure: it compares texts.

use serde::{Deserialize, Serialize};
use similar::{Algorithm, ChangeTag, DiffOp, TextDiff, capture_diff_slices};

use crate::article::Article;

/// What a mail told of an article: the parts a correction compares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    pub title: String,
    /// The event's time as people read it.
    #[serde(default)]
    pub when: Option<String>,
    #[serde(default)]
    pub place: Option<String>,
    pub paragraphs: Vec<String>,
}

impl Version {
    pub fn of(article: &Article) -> Version {
        Version {
            title: article.title.clone(),
            when: article.event.as_ref().map(crate::calendar::describe),
            place: article.place.clone(),
            paragraphs: article.paragraphs.clone(),
        }
    }

    /// The parts compared, each labelled: title, time, place, then the paragraphs.
    fn blocks(&self) -> Vec<(&'static str, &str)> {
        let mut out = vec![("Tiêu đề", self.title.as_str())];
        if let Some(when) = &self.when {
            out.push(("Thời gian", when));
        }
        if let Some(place) = &self.place {
            out.push(("Địa điểm", place));
        }
        out.extend(self.paragraphs.iter().map(|p| ("", p.as_str())));
        out
    }
}

/// A piece of a changed part: kept, removed or added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Piece {
    /// `same`, `removed` or `added`.
    pub kind: &'static str,
    pub text: String,
}

/// One changed part (the title, the time, the place or a paragraph), word by word.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Changed {
    /// `Tiêu đề`, `Thời gian`, `Địa điểm`, or empty for a paragraph.
    pub label: &'static str,
    pub pieces: Vec<Piece>,
}

/// The parts that differ between `before` and `after`, in the order of `after`: a replaced
/// part word by word, a removed or added part whole.
pub fn changes(before: &Version, after: &Version) -> Vec<Changed> {
    let old = before.blocks();
    let new = after.blocks();
    let old_keys: Vec<(&str, &str)> = old.clone();
    let new_keys: Vec<(&str, &str)> = new.clone();
    let mut out = Vec::new();
    let whole = |label, kind, text: &str| Changed {
        label,
        pieces: vec![Piece {
            kind,
            text: text.to_owned(),
        }],
    };
    for op in capture_diff_slices(Algorithm::Myers, &old_keys, &new_keys) {
        match op {
            DiffOp::Equal { .. } => {}
            DiffOp::Delete {
                old_index, old_len, ..
            } => {
                for (label, text) in &old[old_index..old_index + old_len] {
                    out.push(whole(label, "removed", text));
                }
            }
            DiffOp::Insert {
                new_index, new_len, ..
            } => {
                for (label, text) in &new[new_index..new_index + new_len] {
                    out.push(whole(label, "added", text));
                }
            }
            DiffOp::Replace {
                old_index,
                old_len,
                new_index,
                new_len,
            } => {
                let olds = &old[old_index..old_index + old_len];
                let news = &new[new_index..new_index + new_len];
                for i in 0..old_len.max(new_len) {
                    match (olds.get(i), news.get(i)) {
                        (Some((ol, ot)), Some((nl, nt))) if ol == nl => out.push(Changed {
                            label: nl,
                            pieces: words(ot, nt),
                        }),
                        (Some((ol, ot)), Some((nl, nt))) => {
                            out.push(whole(ol, "removed", ot));
                            out.push(whole(nl, "added", nt));
                        }
                        (Some((ol, ot)), None) => out.push(whole(ol, "removed", ot)),
                        (None, Some((nl, nt))) => out.push(whole(nl, "added", nt)),
                        (None, None) => {}
                    }
                }
            }
        }
    }
    out
}

/// A word-level difference, runs of the same kind joined. Where several words changed, the
/// words removed come as one run and the words added as the next, not word by word in turn
/// ("Nhà văn hóa" → "Hội trường" is not "Nhà→Hội văn→trường hóa"): the spaces between changed
/// words join the change rather than split it.
fn words(old: &str, new: &str) -> Vec<Piece> {
    let diff = TextDiff::from_words(old, new);
    let changes: Vec<(ChangeTag, &str)> = diff
        .iter_all_changes()
        .map(|c| (c.tag(), c.value()))
        .collect();
    let mut pieces: Vec<Piece> = Vec::new();
    let push = |pieces: &mut Vec<Piece>, kind: &'static str, text: &str| match pieces.last_mut() {
        Some(last) if last.kind == kind => last.text.push_str(text),
        _ => pieces.push(Piece {
            kind,
            text: text.to_owned(),
        }),
    };
    let (mut removed, mut added) = (String::new(), String::new());
    // The spaces a change starts or ends with stay outside it: a word inserted between two
    // others keeps a space on each side ("sau {+đã được sửa+} của", not "sau {+…+}của").
    let flush = |pieces: &mut Vec<Piece>, removed: &mut String, added: &mut String| {
        let parts: Vec<&str> = [removed.as_str(), added.as_str()]
            .into_iter()
            .filter(|t| !t.trim().is_empty())
            .collect();
        let lead = parts
            .iter()
            .map(|t| &t[..t.len() - t.trim_start().len()])
            .min_by_key(|w| w.len());
        let trail = parts
            .iter()
            .map(|t| &t[t.trim_end().len()..])
            .min_by_key(|w| w.len());
        if let Some(lead) = lead.filter(|w| !w.is_empty()) {
            push(pieces, "same", lead);
        }
        for (kind, text) in [("removed", &*removed), ("added", &*added)] {
            let trimmed = text.trim();
            if !trimmed.is_empty() {
                push(pieces, kind, trimmed);
            }
        }
        if let Some(trail) = trail.filter(|w| !w.is_empty()) {
            push(pieces, "same", trail);
        }
        removed.clear();
        added.clear();
    };
    for (i, &(tag, value)) in changes.iter().enumerate() {
        match tag {
            ChangeTag::Delete => removed.push_str(value),
            ChangeTag::Insert => added.push_str(value),
            ChangeTag::Equal => {
                let in_change = !removed.is_empty() || !added.is_empty();
                let more_change = changes[i + 1..]
                    .iter()
                    .find(|(t, v)| !(*t == ChangeTag::Equal && v.trim().is_empty()))
                    .is_some_and(|(t, _)| *t != ChangeTag::Equal);
                if in_change && value.trim().is_empty() && more_change {
                    removed.push_str(value);
                    added.push_str(value);
                } else {
                    flush(&mut pieces, &mut removed, &mut added);
                    push(&mut pieces, "same", value);
                }
            }
        }
    }
    flush(&mut pieces, &mut removed, &mut added);
    pieces
}

/// The changes as plain text: `[-removed-]{+added+}`, one part a paragraph.
pub fn as_text(changes: &[Changed]) -> String {
    let mut out = String::new();
    for c in changes {
        if !out.is_empty() {
            out.push_str("\n\n");
        }
        if !c.label.is_empty() {
            out.push_str(c.label);
            out.push_str(": ");
        }
        for p in &c.pieces {
            match p.kind {
                "removed" => {
                    out.push_str("[-");
                    out.push_str(&p.text);
                    out.push_str("-]");
                }
                "added" => {
                    out.push_str("{+");
                    out.push_str(&p.text);
                    out.push_str("+}");
                }
                _ => out.push_str(&p.text),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(when: &str, paragraphs: &[&str]) -> Version {
        Version {
            title: "Kỳ họp thứ mười".into(),
            when: Some(when.into()),
            place: Some("Hội trường tầng 3".into()),
            paragraphs: paragraphs.iter().map(|p| p.to_string()).collect(),
        }
    }

    #[test]
    fn words_added_or_removed_keep_their_spaces_outside_the_change() {
        let text = |old: &str, new: &str| {
            let pieces = words(old, new);
            as_text(&[Changed { label: "", pieces }])
        };
        assert_eq!(
            text(
                "Đoạn đầu và đoạn sau của bài.",
                "Đoạn đầu và đoạn sau đã được sửa của bài."
            ),
            "Đoạn đầu và đoạn sau {+đã được sửa+} của bài."
        );
        assert_eq!(text("Hết bài.", "Hết bài. Thêm."), "Hết bài. {+Thêm.+}");
        assert_eq!(text("Mở đầu. Hết bài.", "Hết bài."), "[-Mở đầu.-] Hết bài.");
        assert_eq!(text("một hai ba", "một ba"), "một [-hai-] ba");
        assert_eq!(
            text("Khai mạc lúc 8 giờ sáng.", "Khai mạc lúc 14 giờ chiều."),
            "Khai mạc lúc [-8-]{+14+} giờ [-sáng.-]{+chiều.+}"
        );
    }

    #[test]
    fn only_what_changed_is_shown_word_by_word() {
        let before = version(
            "08:00, Thứ Năm 16/01/2025",
            &["Đoạn một không đổi.", "Khai mạc lúc 8 giờ sáng."],
        );
        let after = version(
            "14:00, Thứ Sáu 17/01/2025",
            &[
                "Đoạn một không đổi.",
                "Khai mạc lúc 14 giờ chiều.",
                "Đoạn mới.",
            ],
        );
        let c = changes(&before, &after);
        assert_eq!(
            as_text(&c),
            "Thời gian: [-08:00,-]{+14:00,+} Thứ [-Năm 16/01/2025-]{+Sáu 17/01/2025+}\n\n\
             Khai mạc lúc [-8-]{+14+} giờ [-sáng.-]{+chiều.+}\n\n\
             {+Đoạn mới.+}"
        );
        assert_eq!(c[0].label, "Thời gian");
        assert!(changes(&before, &before).is_empty());
    }

    #[test]
    fn several_words_changed_read_as_one_removed_run_then_one_added() {
        let mut before = version("08:00, Thứ Bảy 06/12/2025", &["A."]);
        before.place = Some("Nhà văn hóa tổ dân phố 15, phường Nghĩa Đô".into());
        let mut after = version("08:00, Chủ nhật 07/12/2025", &["A."]);
        after.place = Some("Hội trường UBND phường Nghĩa Đô".into());
        assert_eq!(
            as_text(&changes(&before, &after)),
            "Thời gian: 08:00, [-Thứ Bảy 06/12/2025-]{+Chủ nhật 07/12/2025+}\n\n\
             Địa điểm: [-Nhà văn hóa tổ dân phố 15,-]{+Hội trường UBND+} phường Nghĩa Đô"
        );
    }

    #[test]
    fn a_removed_place_is_shown_removed() {
        let before = version("08:00", &["A."]);
        let mut after = before.clone();
        after.place = None;
        assert_eq!(
            as_text(&changes(&before, &after)),
            "Địa điểm: [-Hội trường tầng 3-]"
        );
    }
}
