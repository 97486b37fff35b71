//! A running `bantin run` for tests: started on 127.0.0.1:0, its log collected.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Site, wait_for};

/// How long a test waits for the daemon to notice something.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub struct Daemon {
    pub child: Child,
    pub addr: SocketAddr,
    /// The private metrics listener, when the config has one.
    pub metrics_addr: Option<SocketAddr>,
    log: Arc<Mutex<String>>,
}

impl Daemon {
    /// Starts `bantin run` for `site` (whose config must listen on port 0) and waits until it
    /// serves.
    pub fn start(site: &Site) -> Daemon {
        Daemon::start_with(site, &[])
    }

    pub fn start_with(site: &Site, env: &[(&str, &str)]) -> Daemon {
        let mut cmd = site.command(&["run"]);
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start bantin run");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let (mtx, mrx) = std::sync::mpsc::channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(addr) = line.split("listening on http://").nth(1) {
                        let _ = tx.send(addr.trim().parse::<SocketAddr>().unwrap());
                    }
                    if let Some(addr) = line.split("metrics on http://").nth(1) {
                        let addr = addr.trim().trim_end_matches("/metrics");
                        let _ = mtx.send(addr.parse::<SocketAddr>().unwrap());
                    }
                    let mut log = log.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
            });
        }
        let addr = match rx.recv_timeout(PATIENCE) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!("daemon did not start:\n{}", log.lock().unwrap());
            }
        };
        // Logged before "listening", so it is there by now when configured.
        let metrics_addr = mrx.try_recv().ok();
        Daemon {
            child,
            addr,
            metrics_addr,
            log,
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log holds `needle`.
    pub fn wait_log(&self, needle: &str) {
        wait_for(&format!("log line {needle:?}"), PATIENCE, || {
            self.log().contains(needle)
        });
    }

    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit (polled), returning its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let mut status = None;
        wait_for("the daemon to exit", timeout, || {
            status = self.child.try_wait().unwrap();
            status.is_some()
        });
        status.unwrap()
    }

    /// The metrics text, from the private listener.
    pub fn metrics(&self) -> String {
        let addr = self.metrics_addr.expect("a metrics_listen in the config");
        super::http::get(addr, "/metrics").text()
    }

    pub fn get(&self, path: &str) -> super::http::Response {
        super::http::get(self.addr, path)
    }

    /// Polls `path` until its body satisfies `condition`; returns that response.
    pub fn get_until(
        &self,
        path: &str,
        what: &str,
        condition: impl Fn(&super::http::Response) -> bool,
    ) -> super::http::Response {
        let mut last = None;
        wait_for(what, PATIENCE, || {
            let r = self.get(path);
            let ok = condition(&r);
            last = Some(r);
            ok
        });
        last.unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- daemon log ---\n{}--- end of daemon log ---",
                self.log()
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
