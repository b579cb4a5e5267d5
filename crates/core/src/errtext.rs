//! One readable line from an error and its causes.
//!
//! `anyhow`'s `{:#}` joins every cause with ": ", and many errors (ours, tonic's, io's) already
//! print their cause in their own text: the line then repeats itself ("transport error:
//! transport error: …", "… (os error 2): … (os error 2)"). This joins the causes and leaves out
//! every one whose text the line already holds.

/// Joins `messages` (outermost first) with ": ", skipping empty ones and any already contained
/// in what came before.
pub fn chain<I, S>(messages: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut out = String::new();
    for m in messages {
        let m = m.as_ref().trim();
        if m.is_empty() || out.contains(m) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(m);
    }
    out
}

/// [`chain`] over an error and its `source()`s.
pub fn of(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msgs = Vec::new();
    let mut cur = Some(e);
    while let Some(err) = cur {
        msgs.push(err.to_string());
        cur = err.source();
    }
    chain(msgs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_causes_are_said_once() {
        assert_eq!(
            chain([
                "cannot connect to etcd at https://x: transport error",
                "transport error",
                "transport error"
            ]),
            "cannot connect to etcd at https://x: transport error"
        );
        assert_eq!(
            chain([
                "reading /a: No such file or directory (os error 2)",
                "No such file or directory (os error 2)"
            ]),
            "reading /a: No such file or directory (os error 2)"
        );
        assert_eq!(
            chain(["acquiring a subnet lease", "out of subnets"]),
            "acquiring a subnet lease: out of subnets"
        );
    }

    #[test]
    fn walks_sources() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
        assert_eq!(of(&io), "gone");
    }
}
