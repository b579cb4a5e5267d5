//! A watch response from the Kubernetes API (a proxy, a broken or hostile server writes this
//! input), cut into frames anywhere: reading its events never panics and ends, with no more
//! events than lines.
#![no_main]
use bytes::Bytes;
use flannel_subnet::kube::lines::WatchLines;
use flannel_subnet::kube::node::NodeLite;
use http_body::Frame;
use http_body_util::StreamBody;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let step = usize::from(cut).max(1);
    let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = rest
        .chunks(step)
        .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    let mut w = WatchLines::new(StreamBody::new(futures::stream::iter(frames)));
    futures::executor::block_on(async {
        let mut n = 0;
        while let Some(ev) = w.next::<NodeLite>().await {
            let _ = ev;
            n += 1;
            assert!(n <= rest.len() + 1, "more events than lines");
        }
    });
});
