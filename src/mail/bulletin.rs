//! Every digest that is sent, published as a page (`bulletins/{daily|weekly}/{date}.html`)
//! and listed on `bulletins/index.html`. No personal data: the pages list articles only.

use std::path::PathBuf;
use std::sync::Arc;

use chrono::NaiveDate;
use minijinja::context;
use serde::Serialize;

use super::message::{bulletin_heading, bulletin_path, group_by_category};
use crate::article::Article;
use crate::site::{SharedSite, SharedTemplates};
use crate::store::Bulletin;
use crate::subscriber::Schedule;

/// Writes the bulletin pages into `output.dir`.
#[derive(Clone)]
pub struct BulletinPages {
    pub templates: SharedTemplates,
    pub site: SharedSite,
    /// `output.dir`.
    pub out: PathBuf,
}

/// The page of one bulletin, relative to `output.dir`.
pub fn page_of(b: &Bulletin) -> Option<String> {
    let date = NaiveDate::parse_from_str(&b.date, "%Y-%m-%d").ok()?;
    Some(bulletin_path(b.schedule, date))
}

impl BulletinPages {
    /// Writes the page of `b`, listing `articles` (those still readable, newest first).
    pub fn write(&self, b: &Bulletin, articles: &[Arc<Article>]) -> Result<(), String> {
        let Some(rel) = page_of(b) else {
            return Err(format!("bulletin date '{}' is not YYYY-MM-DD", b.date));
        };
        let date = NaiveDate::parse_from_str(&b.date, "%Y-%m-%d").map_err(|e| e.to_string())?;
        let site = self.site.read().expect("site").clone();
        let templates = crate::site::current(&self.templates);
        let groups = group_by_category(&site, articles);
        let html = templates
            .render(
                "web/bulletin.html",
                context! {
                    heading => bulletin_heading(b.schedule, date),
                    count => articles.len(),
                    groups => minijinja::Value::from(minijinja::value::Serde(groups)),
                },
            )
            .map_err(|e| e.to_string())?;
        let path = self.out.join(&rel);
        crate::output::write_atomic(&path, html.as_bytes())
            .map(|_| ())
            .map_err(|e| format!("{}: cannot write: {e}", path.display()))
    }

    /// Writes `bulletins/index.html`: every bulletin, newest first, daily then weekly.
    pub fn write_index(&self, all: &[Bulletin]) -> Result<(), String> {
        #[derive(Serialize)]
        struct Listed {
            heading: String,
            url: String,
            count: usize,
        }
        #[derive(Serialize)]
        struct Group {
            label: &'static str,
            bulletins: Vec<Listed>,
        }
        let site = self.site.read().expect("site").clone();
        let mut schedules = Vec::new();
        for (schedule, label) in [
            (Schedule::Daily, "Bản tin hằng ngày"),
            (Schedule::Weekly, "Bản tin hằng tuần"),
        ] {
            let mut bulletins: Vec<Listed> = all
                .iter()
                .filter(|b| b.schedule == schedule)
                .filter_map(|b| {
                    let date = NaiveDate::parse_from_str(&b.date, "%Y-%m-%d").ok()?;
                    Some(Listed {
                        heading: bulletin_heading(schedule, date),
                        url: format!("{}/{}", site.base_url, bulletin_path(schedule, date)),
                        count: b.articles.len(),
                    })
                })
                .collect();
            bulletins.reverse();
            if !bulletins.is_empty() {
                schedules.push(Group { label, bulletins });
            }
        }
        let templates = crate::site::current(&self.templates);
        let html = templates
            .render(
                "web/bulletins.html",
                context! { schedules => minijinja::Value::from(minijinja::value::Serde(schedules)) },
            )
            .map_err(|e| e.to_string())?;
        let path = self.out.join("bulletins/index.html");
        crate::output::write_atomic(&path, html.as_bytes())
            .map(|_| ())
            .map_err(|e| format!("{}: cannot write: {e}", path.display()))
    }
}
