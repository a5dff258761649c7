//! A function's logs: the recent lines in memory for `logs` and `--follow`,
//! and an NDJSON file in the state directory so they survive a restart.

use std::collections::VecDeque;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::Mutex;

use graphene_core::api::LogMessage;
use tokio::sync::broadcast;

const KEEP: usize = 2000;
/// The file is rotated (to `.1`) once it grows past this.
const MAX_FILE: u64 = 8 << 20;

pub struct LogBook {
    name: String,
    namespace: String,
    /// The NDJSON file; none when lines go to this process's stdout (a
    /// container's log) instead.
    path: Option<PathBuf>,
    recent: Mutex<VecDeque<LogMessage>>,
    live: broadcast::Sender<LogMessage>,
    /// The open log file and how much it holds; opened on first write.
    file: Mutex<Option<(std::fs::File, u64)>>,
}

impl LogBook {
    /// Opens the log of a function, loading what the file already holds.
    pub fn open(dir: PathBuf, namespace: &str, name: &str) -> Self {
        Self::new(
            Some(dir.join(format!("{namespace}.{name}.log"))),
            namespace,
            name,
        )
    }

    /// A log whose lines are printed to stdout as they come (and kept in
    /// memory), for a container runtime to collect.
    pub fn stdout(namespace: &str, name: &str) -> Self {
        Self::new(None, namespace, name)
    }

    fn new(path: Option<PathBuf>, namespace: &str, name: &str) -> Self {
        let mut recent = VecDeque::new();
        if let Some(Ok(f)) = path.as_ref().map(std::fs::File::open) {
            for line in std::io::BufReader::new(f).lines().map_while(Result::ok) {
                if let Ok(m) = serde_json::from_str::<LogMessage>(&line) {
                    if recent.len() == KEEP {
                        recent.pop_front();
                    }
                    recent.push_back(m);
                }
            }
        }
        let (live, _) = broadcast::channel(1024);
        Self {
            name: name.to_string(),
            namespace: namespace.to_string(),
            path,
            recent: Mutex::new(recent),
            live,
            file: Mutex::new(None),
        }
    }

    pub fn write(&self, instance: &str, text: &str) {
        let msg = LogMessage {
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            instance: instance.to_string(),
            timestamp: graphene_core::time::now_rfc3339(),
            text: text.to_string(),
        };
        let mut recent = self.recent.lock().expect("log lock");
        match &self.path {
            Some(path) => {
                if let Ok(line) = serde_json::to_string(&msg) {
                    self.append(path, &line);
                }
            }
            None => {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{text}");
            }
        }
        if recent.len() == KEEP {
            recent.pop_front();
        }
        recent.push_back(msg.clone());
        let _ = self.live.send(msg);
    }

    /// Appends a line to the file (kept open), rotating it past its size.
    fn append(&self, path: &std::path::Path, line: &str) {
        let mut file = self.file.lock().expect("log file lock");
        if file.as_ref().is_some_and(|(_, size)| *size > MAX_FILE) {
            *file = None;
            let _ = std::fs::rename(path, path.with_extension("log.1"));
        }
        if file.is_none() {
            let opened = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path);
            if let Ok(f) = opened {
                let size = f.metadata().map(|m| m.len()).unwrap_or(0);
                *file = Some((f, size));
            }
        }
        if let Some((f, size)) = file.as_mut() {
            if writeln!(f, "{line}").is_ok() {
                *size += line.len() as u64 + 1;
            }
        }
    }

    /// The last `tail` lines (all kept lines if `None`), and a live feed when
    /// following. Subscribing under the lock means no line falls between.
    pub fn read(
        &self,
        tail: Option<usize>,
        follow: bool,
    ) -> (Vec<LogMessage>, Option<broadcast::Receiver<LogMessage>>) {
        let recent = self.recent.lock().expect("log lock");
        let skip = tail.map(|t| recent.len().saturating_sub(t)).unwrap_or(0);
        let backlog = recent.iter().skip(skip).cloned().collect();
        (backlog, follow.then(|| self.live.subscribe()))
    }

    /// The lines kept, then new ones when following, as the provider
    /// contract's stream. A follower that falls far behind skips lines
    /// rather than holding the writer up.
    pub fn stream(
        &self,
        q: graphene_core::provider::LogQuery,
    ) -> graphene_core::provider::LogStream {
        use futures_util::StreamExt;
        let (backlog, live) = self.read(q.tail, q.follow);
        let head = futures_util::stream::iter(backlog);
        match live {
            None => head.boxed(),
            Some(rx) => head
                .chain(futures_util::stream::unfold(rx, |mut rx| async move {
                    loop {
                        match rx.recv().await {
                            Ok(m) => return Some((m, rx)),
                            Err(broadcast::error::RecvError::Lagged(_)) => continue,
                            Err(broadcast::error::RecvError::Closed) => return None,
                        }
                    }
                }))
                .boxed(),
        }
    }

    #[cfg(test)]
    pub fn last_lines(&self, n: usize) -> Vec<String> {
        self.read(Some(n), false)
            .0
            .into_iter()
            .map(|m| m.text)
            .collect()
    }

    pub fn delete(&self) {
        self.file.lock().expect("log file lock").take();
        if let Some(path) = &self.path {
            let _ = std::fs::remove_file(path);
            let _ = std::fs::remove_file(path.with_extension("log.1"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_tail_and_survives_reopen() {
        let dir = std::env::temp_dir().join(format!("graphene-logs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let book = LogBook::open(dir.clone(), "ns", "f");
        let (_, live) = book.read(None, true);
        let mut live = live.unwrap();
        for i in 0..5 {
            book.write("r1", &format!("line {i}"));
        }
        assert_eq!(live.try_recv().unwrap().text, "line 0");
        let (tail, _) = book.read(Some(2), false);
        assert_eq!(
            tail.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(),
            ["line 3", "line 4"]
        );
        let again = LogBook::open(dir.clone(), "ns", "f");
        assert_eq!(again.last_lines(1), ["line 4"]);
        again.delete();
        std::fs::remove_dir_all(dir).unwrap();
    }
}
