//! Progress for long commands: a line on a terminal, nothing when stderr is piped.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// How often the progress line is redrawn.
const TICK: Duration = Duration::from_millis(200);

/// A counter shown as `label: done/total` on stderr while it runs, when stderr is a terminal.
pub struct Progress {
    pub count: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    pub fn start(label: &'static str, total: Option<usize>) -> Progress {
        let count = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::io::stderr().is_terminal().then(|| {
            let (count, stop) = (count.clone(), stop.clone());
            std::thread::spawn(move || {
                let started = std::time::Instant::now();
                let mut shown = false;
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    let n = count.load(Ordering::Relaxed);
                    let line = match total {
                        Some(t) => format!("\r{label}: {n}/{t}"),
                        None if n == 0 => format!("\r{label}… {:.0?}", started.elapsed()),
                        None => format!("\r{label}: {n}"),
                    };
                    let _ = std::io::stderr().write_all(line.as_bytes());
                    shown = true;
                }
                if shown {
                    let _ = std::io::stderr().write_all(b"\r\x1b[K");
                }
            })
        });
        Progress {
            count,
            stop,
            thread,
        }
    }

    pub fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
