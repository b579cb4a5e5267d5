//! A watch response read as what it is, one JSON event per line, with a buffer that gives its
//! memory back. kube-rs's own reader keeps the buffer of the longest line for the life of the
//! watch (up to five minutes, then the next watch grows it again): one peer Node at the API
//! server's size limit kept ~2 MiB of flanneld resident. Here a line longer than
//! [`KEEP_CAPACITY`] is parsed, then its buffer is freed; a line longer than [`MAX_LINE`]
//! (more than any API server sends) ends the watch.

use http_body_util::BodyExt;
use kube::core::WatchEvent;
use serde::de::DeserializeOwned;

/// Buffer capacity kept between events (a real Node is ~10 KiB).
pub const KEEP_CAPACITY: usize = 64 * 1024;
/// The longest event accepted: an object at the API server's request limit (3 MiB), in a
/// watch event's envelope.
pub const MAX_LINE: usize = 4 * 1024 * 1024;

/// What ends a watch stream early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineError {
    /// The connection failed.
    Read(String),
    /// An event longer than [`MAX_LINE`].
    TooLong(usize),
    /// A line that is neither an event nor a `Status`.
    Garbled(String),
    /// The server's `Status` instead of an event (an error response).
    Status { code: u16, message: String },
}

impl std::fmt::Display for LineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Read(e) => write!(f, "reading the watch: {e}"),
            Self::TooLong(n) => write!(f, "a watch event longer than {n} bytes"),
            Self::Garbled(e) => write!(f, "not a watch event: {e}"),
            Self::Status { code, message } => write!(f, "{message} ({code})"),
        }
    }
}

/// The events of one watch response.
pub struct WatchLines<B> {
    body: B,
    buf: Vec<u8>,
    /// Where the next line starts in `buf`.
    start: usize,
    done: bool,
}

impl<B> WatchLines<B>
where
    B: http_body::Body + Unpin,
    B::Error: std::fmt::Display,
{
    pub fn new(body: B) -> Self {
        Self {
            body,
            buf: Vec::with_capacity(8 * 1024),
            start: 0,
            done: false,
        }
    }

    /// The next event; `None` when the server ended the watch.
    pub async fn next<T: DeserializeOwned + Clone>(
        &mut self,
    ) -> Option<Result<WatchEvent<T>, LineError>> {
        loop {
            if let Some(pos) = self.buf[self.start..].iter().position(|b| *b == b'\n') {
                let line = &self.buf[self.start..self.start + pos];
                let long = line.len() > KEEP_CAPACITY;
                let parsed = (!line.iter().all(u8::is_ascii_whitespace)).then(|| parse(line));
                self.start += pos + 1;
                if self.start == self.buf.len() {
                    self.buf.clear();
                    self.start = 0;
                }
                if long && self.buf.capacity() > KEEP_CAPACITY {
                    // What follows the long line moves to a small buffer of its own.
                    let rest = self.buf[self.start..].to_vec();
                    self.buf = Vec::with_capacity(rest.len().max(8 * 1024));
                    self.buf.extend_from_slice(&rest);
                    self.start = 0;
                }
                match parsed {
                    Some(p) => return Some(p),
                    None => continue,
                }
            }
            if self.done {
                return None;
            }
            if self.buf.len() - self.start > MAX_LINE {
                self.done = true;
                return Some(Err(LineError::TooLong(MAX_LINE)));
            }
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(mut data) = frame.into_data() {
                        use bytes::Buf;
                        while data.has_remaining() {
                            let chunk = data.chunk();
                            self.buf.extend_from_slice(chunk);
                            let n = chunk.len();
                            data.advance(n);
                        }
                    }
                }
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err(LineError::Read(e.to_string())));
                }
                // A last line without its newline still counts.
                None => {
                    self.done = true;
                    if self.buf.len() > self.start {
                        self.buf.push(b'\n');
                    }
                }
            }
        }
    }
}

/// One line: an event, or the server's `Status` (an error answered in the stream).
fn parse<T: DeserializeOwned + Clone>(line: &[u8]) -> Result<WatchEvent<T>, LineError> {
    match serde_json::from_slice::<WatchEvent<T>>(line) {
        Ok(ev) => Ok(ev),
        Err(e) => match serde_json::from_slice::<kube::core::Status>(line) {
            Ok(s) if s.code > 0 => Err(LineError::Status {
                code: s.code,
                message: s.message,
            }),
            _ => Err(LineError::Garbled(e.to_string())),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body::Frame;
    use http_body_util::StreamBody;

    #[derive(Debug, Clone, serde::Deserialize)]
    struct Obj {
        metadata: kube::core::ObjectMeta,
    }

    fn body(
        chunks: Vec<&'static [u8]>,
    ) -> impl http_body::Body<Error = std::convert::Infallible> + Unpin {
        StreamBody::new(futures::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok(Frame::data(Bytes::from_static(c)))),
        ))
    }

    #[tokio::test]
    async fn events_split_anywhere_are_read_whole() {
        let mut w = WatchLines::new(body(vec![
            b"{\"type\":\"ADDED\",\"object\":{\"metadata\":{\"name\":\"a\"}}}\n{\"type\":\"MOD",
            b"IFIED\",\"object\":{\"metadata\":{\"name\":\"b\"}}}\n\n",
            b"{\"type\":\"DELETED\",\"object\":{\"metadata\":{\"name\":\"c\"}}}",
        ]));
        let mut names = Vec::new();
        while let Some(ev) = w.next::<Obj>().await {
            match ev.unwrap() {
                WatchEvent::Added(o) | WatchEvent::Modified(o) | WatchEvent::Deleted(o) => {
                    names.push(o.metadata.name.unwrap_or_default())
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(names, ["a", "b", "c"]);
    }

    #[tokio::test]
    async fn a_long_event_gives_its_buffer_back() {
        let pad = "x".repeat(1 << 20);
        let big = format!(
            "{{\"type\":\"ADDED\",\"object\":{{\"metadata\":{{\"name\":\"big\",\"annotations\":{{\"p\":\"{pad}\"}}}}}}}}\n{{\"type\":\"ADDED\",\"object\":{{\"metadata\":{{\"name\":\"next\"}}}}}}\n"
        );
        let big: &'static [u8] = Box::leak(big.into_bytes().into_boxed_slice());
        let mut w = WatchLines::new(body(vec![big]));
        assert!(w.next::<Obj>().await.unwrap().is_ok());
        assert!(w.buf.capacity() <= KEEP_CAPACITY, "{}", w.buf.capacity());
        assert!(matches!(
            w.next::<Obj>().await,
            Some(Ok(WatchEvent::Added(_)))
        ));
        assert!(w.next::<Obj>().await.is_none());
    }

    #[tokio::test]
    async fn a_status_line_and_garbage_are_errors() {
        let mut w = WatchLines::new(body(vec![
            b"{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"status\":\"Failure\",\"message\":\"Too large resource version: 9, current: 3\",\"reason\":\"Timeout\",\"code\":504}\nnot json\n",
        ]));
        match w.next::<Obj>().await {
            Some(Err(LineError::Status { code, message })) => {
                assert_eq!(code, 504);
                assert_eq!(message, "Too large resource version: 9, current: 3");
            }
            other => panic!("{:?}", other.map(|r| r.map(|_| ()))),
        }
        assert!(matches!(
            w.next::<Obj>().await,
            Some(Err(LineError::Garbled(_)))
        ));
    }
}
