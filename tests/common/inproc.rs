//! The daemon run inside the test process with a manual clock, so a test moves time
//! (schedules, digest ticks, retries) instead of waiting for it. Everything else is real: the
//! store on disk, sled, HTTP on 127.0.0.1:0, SMTP to the test's server, the admin socket.

use std::net::SocketAddr;
use std::time::Duration;

use bantin::clock::Clock;

use super::{Site, wait_for};

pub struct InProc {
    pub addr: SocketAddr,
    /// The private metrics listener.
    pub metrics_addr: SocketAddr,
    pub clock: Clock,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl InProc {
    /// Starts the daemon of `site` on `clock` and waits until it serves.
    pub fn start(site: &Site, clock: &Clock) -> InProc {
        let config = bantin::config::Config::from_file(&site.config()).expect("config");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        metrics.set_nonblocking(true).unwrap();
        let metrics_addr = metrics.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = {
            let clock = clock.clone();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()?;
                runtime.block_on(async move {
                    let listeners = bantin::daemon::Listeners {
                        http: tokio::net::TcpListener::from_std(listener)?,
                        metrics: Some(tokio::net::TcpListener::from_std(metrics)?),
                    };
                    let reload = std::sync::Arc::new(tokio::sync::Notify::new());
                    bantin::daemon::serve(config, listeners, clock, reload, async {
                        let _ = stopped.await;
                    })
                    .await
                })
            })
        };
        let daemon = InProc {
            addr,
            metrics_addr,
            clock: clock.clone(),
            stop: Some(stop),
            thread: Some(thread),
        };
        wait_for("the daemon to serve", super::daemon::PATIENCE, || {
            daemon.thread.as_ref().is_some_and(|t| !t.is_finished())
                && std::net::TcpStream::connect(addr).is_ok()
                && super::http::get(addr, "/healthz").text() == "ok\n"
        });
        daemon
    }

    pub fn get(&self, path: &str) -> super::http::Response {
        super::http::get(self.addr, path)
    }

    /// The metrics text, from the private listener.
    pub fn metrics(&self) -> String {
        super::http::get(self.metrics_addr, "/metrics").text()
    }

    /// The value of a metric without labels, as the daemon reports it.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let text = self.metrics();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: chrono::Duration) {
        self.clock.advance(by);
    }

    /// Stops the daemon as SIGTERM would and waits for it.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while !thread.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if thread.is_finished() {
                thread
                    .join()
                    .expect("daemon thread")
                    .expect("daemon result");
            }
        }
    }
}

impl Drop for InProc {
    fn drop(&mut self) {
        self.shutdown();
    }
}
