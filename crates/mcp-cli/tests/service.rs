//! The interop test service of `mcp serve` (docs/protocol.md section 10), called over
//! loopback as a user would: with the real client, and frame by frame where the test is
//! about the wire (CANCEL, CONTINUATION).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use mcp_cli::service::{self, Service};
use mcp_client::{
    CallOptions, Client, ErrorCode, FormatId, RawPush, RawRequest, RawResponse, RawSubscription,
};
use mcp_codec::{Cancel, Decoded, Envelope, Flags, FrameDecoder, Metadata, Ping, Request};
use mcp_server::ServerConfig;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

/// A service on a free loopback port whose ticker stays out of the way.
async fn start() -> Service {
    start_with(ServerConfig::default()).await
}

async fn start_with(config: ServerConfig) -> Service {
    service::start_with_config(
        ([127, 0, 0, 1], 0).into(),
        Duration::from_secs(3600),
        config,
    )
    .await
    .expect("the service starts")
}

async fn client(service: &Service) -> Client {
    Client::builder(service.local_addr().to_string())
        .connect()
        .await
        .expect("the client connects")
}

async fn call(client: &Client, method: &str, format: FormatId, body: &[u8]) -> RawResponse {
    client
        .call_raw(RawRequest::new(method, format, body.to_vec()))
        .await
        .unwrap_or_else(|e| panic!("{method} {:?}: {e}", String::from_utf8_lossy(body)))
}

/// The ERROR code a call is answered with.
async fn code_of(client: &Client, method: &str, format: FormatId, body: &[u8]) -> ErrorCode {
    let request =
        RawRequest::new(method, format, body.to_vec()).with_options(CallOptions::new().no_retry());
    match client.call_raw(request).await {
        Ok(r) => panic!(
            "{method} {:?} answered {:?}",
            String::from_utf8_lossy(body),
            r.body()
        ),
        Err(e) => e
            .code()
            .unwrap_or_else(|| panic!("{method}: not an ERROR answer: {e}")),
    }
}

/// Waits (bounded) until `check` holds of the service's counters.
async fn until(service: &Service, what: &str, check: impl Fn(service::ServiceStats) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check(service.stats()) {
        assert!(Instant::now() < deadline, "{what}: {:?}", service.stats());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn echo_answers_the_body_in_its_format() {
    let service = start().await;
    let client = client(&service).await;
    let back = call(&client, "echo", FormatId::new(200), b"\x00\x01anything").await;
    assert_eq!(&back.body()[..], b"\x00\x01anything");
    assert_eq!(back.format(), FormatId::new(200));
    client.close().await;
}

#[tokio::test]
async fn sleep_answers_the_same_body_after_that_long() {
    let service = start().await;
    let client = client(&service).await;
    let start = Instant::now();
    let back = call(&client, "sleep", FormatId::RAW, b"150").await;
    assert!(
        start.elapsed() >= Duration::from_millis(150),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(&back.body()[..], b"150");
    // A JSON number is ASCII decimal too, and comes back in JSON.
    let back = call(&client, "sleep", FormatId::JSON, b"0").await;
    assert_eq!(
        (&back.body()[..], back.format()),
        (&b"0"[..], FormatId::JSON)
    );
    let stats = service.stats();
    assert_eq!(
        (stats.sleeps_finished, stats.sleeps_stopped),
        (2, 0),
        "{stats:?}"
    );
    for bad in [
        &b"60001"[..],
        b"-1",
        b"1.5",
        b"soon",
        b"",
        b"99999999999999999999999",
    ] {
        assert_eq!(
            code_of(&client, "sleep", FormatId::RAW, bad).await,
            ErrorCode::MALFORMED,
            "{bad:?}"
        );
    }
    client.close().await;
}

#[tokio::test]
async fn sleep_past_the_callers_deadline_is_stopped() {
    let service = start().await;
    let client = client(&service).await;
    let request = RawRequest::new("sleep", FormatId::RAW, &b"5000"[..])
        .with_options(CallOptions::new().timeout(Duration::from_millis(200)));
    let start = Instant::now();
    let err = client
        .call_raw(request)
        .await
        .expect_err("the call times out");
    assert!(
        err.is_timeout() || err.code() == Some(ErrorCode::DEADLINE_EXCEEDED),
        "{err}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    // The server stopped the wait (CANCEL or its own deadline, whichever came first)
    // long before the 5 s were up, and never finished it.
    until(&service, "the sleep is stopped", |s| s.sleeps_stopped == 1).await;
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(service.stats().sleeps_finished, 0);
    client.close().await;
}

#[tokio::test]
async fn cancel_stops_a_sleep_and_nothing_is_sent_for_it() {
    let service = start().await;
    let mut peer = RawPeer::connect(service.local_addr()).await;
    peer.request(1, "sleep", 0, b"800").await;
    until(&service, "the sleep starts", |s| s.sleeps_started == 1).await;
    peer.send(Envelope::Cancel(Cancel { id: 1 })).await;
    until(&service, "the sleep is stopped", |s| s.sleeps_stopped == 1).await;
    // Past the time the sleep would have ended, the only frame is the PONG of our PING.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    peer.send(Envelope::Ping(Ping { nonce: [7; 8] })).await;
    assert_eq!(peer.next().await, Seen::Pong([7; 8]));
    assert_eq!(peer.quiet(Duration::from_millis(200)).await, None);
    assert_eq!(service.stats().sleeps_finished, 0);
}

#[tokio::test]
async fn fail_answers_the_code_asked_for() {
    let service = start().await;
    let client = client(&service).await;
    for code in [1u16, 2, 3, 4, 7, 8, 999, 1000, 1404, 65535] {
        let body = code.to_string();
        assert_eq!(
            code_of(&client, "fail", FormatId::RAW, body.as_bytes()).await,
            ErrorCode(code)
        );
    }
    for bad in [&b"0"[..], b"65536", b"-3", b"x", b""] {
        assert_eq!(
            code_of(&client, "fail", FormatId::RAW, bad).await,
            ErrorCode::MALFORMED,
            "{bad:?}"
        );
    }
    client.close().await;
}

#[tokio::test]
async fn big_answers_the_pattern_up_to_the_maximum_message_size() {
    let mut config = ServerConfig::default();
    config.max_message_len = 1 << 20;
    let service = start_with(config).await;
    let client = client(&service).await;
    for n in [0usize, 1, 251, 252, 65_534, 65_535, 200_000, 1 << 20] {
        let back = call(&client, "big", FormatId::RAW, n.to_string().as_bytes()).await;
        assert_eq!(back.body().len(), n);
        assert_eq!(back.format(), FormatId::RAW);
        assert!(
            back.body()
                .iter()
                .enumerate()
                .all(|(i, &b)| b == (i % 251) as u8),
            "{n}: the pattern is wrong"
        );
    }
    let past = ((1 << 20) + 1).to_string();
    assert_eq!(
        code_of(&client, "big", FormatId::RAW, past.as_bytes()).await,
        ErrorCode::TOO_LARGE
    );
    assert_eq!(
        code_of(&client, "big", FormatId::RAW, b"99999999999999999999999").await,
        ErrorCode::TOO_LARGE
    );
    assert_eq!(
        code_of(&client, "big", FormatId::JSON, b"10").await,
        ErrorCode::UNSUPPORTED_FORMAT
    );
    assert_eq!(
        code_of(&client, "big", FormatId::RAW, b"ten").await,
        ErrorCode::MALFORMED
    );
    client.close().await;
}

#[tokio::test]
async fn big_is_split_into_continuation_frames() {
    let service = start().await;
    let mut peer = RawPeer::connect(service.local_addr()).await;
    peer.request(9, "big", 0, b"200000").await;
    let Seen::Response {
        id: 9,
        more: true,
        len: head,
    } = peer.next().await
    else {
        panic!("expected a RESPONSE head frame with MORE");
    };
    let mut total = head;
    let mut chunks = 0;
    loop {
        match peer.next().await {
            Seen::Continuation { more, len } => {
                assert!(len >= 1);
                total += len;
                chunks += 1;
                if !more {
                    break;
                }
            }
            other => panic!("expected CONTINUATION, got {other:?}"),
        }
    }
    assert_eq!(total, 200_000);
    assert!(chunks >= 3, "{chunks} CONTINUATION frames");
}

async fn next(sub: &mut RawSubscription) -> RawPush {
    timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("a push in time")
        .expect("the subscription goes on")
}

/// docs/protocol.md section 10: a NOTIFY on topic `echo` comes back to the connection that
/// sent it, and to it alone, with the same body and format byte.
#[tokio::test]
async fn a_notify_on_echo_comes_back_to_its_sender_only() {
    let service = start().await;
    let mut sender = RawPeer::connect(service.local_addr()).await;
    let mut other = RawPeer::connect(service.local_addr()).await;
    // The other connection listens on `echo` too: a loop-back is no publish.
    other.request(1, "$subscribe", 0, b"echo").await;
    assert!(matches!(other.next().await, Seen::Response { id: 1, .. }));
    sender
        .send(Envelope::Notify(mcp_codec::Notify {
            flags: Flags::NONE,
            format: 200,
            topic: "echo",
            meta: Metadata::EMPTY,
            body: b"loop",
        }))
        .await;
    assert_eq!(
        sender.next().await,
        Seen::Notify {
            topic: "echo".into(),
            format: 200,
            body: b"loop".to_vec()
        }
    );
    assert_eq!(other.quiet(Duration::from_millis(200)).await, None);
}

#[tokio::test]
async fn publish_pushes_to_subscribers_and_counts_them() {
    let service = start().await;
    let subscriber = client(&service).await;
    let publisher = client(&service).await;
    let mut news = subscriber.subscribe_raw("news").await.expect("subscribed");
    let mut all = subscriber
        .subscribe_raw("news.*")
        .await
        .expect("subscribed");

    let publish = |value: serde_json::Value| {
        let publisher = publisher.clone();
        async move {
            let back = call(
                &publisher,
                "publish",
                FormatId::JSON,
                value.to_string().as_bytes(),
            )
            .await;
            serde_json::from_slice::<serde_json::Value>(back.body()).expect("a JSON answer")
        }
    };

    // A string body goes as its UTF-8 bytes in format 0.
    let answer = publish(json!({"topic": "news", "body": "hello"})).await;
    assert_eq!(answer, json!({"delivered": 1}));
    let push = next(&mut news).await;
    assert_eq!((push.topic(), push.format()), ("news", FormatId::RAW));
    assert_eq!(&push.body()[..], b"hello");

    // Any other JSON goes compact in format 1; the `prefix*` subscription matches.
    let answer = publish(json!({"topic": "news.sport", "body": {"score": [1, 2]}})).await;
    assert_eq!(answer, json!({"delivered": 1}));
    let push = next(&mut all).await;
    assert_eq!(
        (push.topic(), push.format()),
        ("news.sport", FormatId::JSON)
    );
    assert_eq!(&push.body()[..], br#"{"score":[1,2]}"#);

    // "format" overrides the format byte.
    let answer = publish(json!({"topic": "news", "body": "\u{1}\u{2}", "format": 200})).await;
    assert_eq!(answer, json!({"delivered": 1}));
    let push = next(&mut news).await;
    assert_eq!(
        (&push.body()[..], push.format()),
        (&[1u8, 2][..], FormatId::new(200))
    );

    // Nobody subscribed: delivered to none.
    let answer = publish(json!({"topic": "weather", "body": null})).await;
    assert_eq!(answer, json!({"delivered": 0}));

    for bad in [
        json!({"body": "x"}),
        json!({"topic": 3, "body": "x"}),
        json!({"topic": "news"}),
        json!({"topic": "news", "body": "x", "format": 256}),
        json!({"topic": "news", "body": "x", "format": -1}),
        json!({"topic": "news", "body": "x", "extra": 1}),
        json!({"topic": "", "body": "x"}),
        json!({"topic": "$health", "body": "SERVING"}),
        json!({"topic": "t".repeat(256), "body": "x"}),
        json!(["news", "x"]),
    ] {
        assert_eq!(
            code_of(
                &publisher,
                "publish",
                FormatId::JSON,
                bad.to_string().as_bytes()
            )
            .await,
            ErrorCode::MALFORMED,
            "{bad}"
        );
    }
    assert_eq!(
        code_of(&publisher, "publish", FormatId::JSON, b"{not json").await,
        ErrorCode::MALFORMED
    );
    assert_eq!(
        code_of(&publisher, "publish", FormatId::PROTOBUF, b"\x0a\x01x").await,
        ErrorCode::UNSUPPORTED_FORMAT
    );
    publisher.close().await;
    subscriber.close().await;
}

/// A frame as the tests look at it.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Response {
        id: u32,
        more: bool,
        len: usize,
    },
    Continuation {
        more: bool,
        len: usize,
    },
    Error {
        id: u32,
        code: u16,
    },
    Pong([u8; 8]),
    Notify {
        topic: String,
        format: u8,
        body: Vec<u8>,
    },
    Other(String),
}

/// A client written frame by frame.
struct RawPeer {
    stream: TcpStream,
    buf: BytesMut,
    decoder: FrameDecoder,
}

impl RawPeer {
    async fn connect(addr: SocketAddr) -> RawPeer {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        RawPeer {
            stream,
            buf: BytesMut::new(),
            decoder: FrameDecoder::new(),
        }
    }

    async fn send(&mut self, envelope: Envelope<'_>) {
        let bytes = mcp_test_support::encode(envelope);
        self.stream.write_all(&bytes).await.expect("write");
    }

    async fn request(&mut self, id: u32, method: &str, format: u8, body: &[u8]) {
        self.send(Envelope::Request(Request {
            id,
            flags: Flags::NONE,
            format,
            method,
            meta: Metadata::EMPTY,
            body,
        }))
        .await;
    }

    /// The next frame; fails the test if none comes within 10 s.
    async fn next(&mut self) -> Seen {
        self.quiet(Duration::from_secs(10))
            .await
            .expect("a frame in time")
    }

    /// The next frame if one comes within `limit`.
    async fn quiet(&mut self, limit: Duration) -> Option<Seen> {
        let deadline = Instant::now() + limit;
        loop {
            match self.decoder.decode(&self.buf).expect("valid frames") {
                Decoded::Frame { frame, len } => {
                    let seen = match Envelope::parse(frame).expect("a valid payload") {
                        Envelope::Response(r) => Seen::Response {
                            id: r.id,
                            more: r.flags.more(),
                            len: r.body.len(),
                        },
                        Envelope::Continuation(c) => Seen::Continuation {
                            more: c.flags.more(),
                            len: c.chunk.len(),
                        },
                        Envelope::Error(e) => Seen::Error {
                            id: e.id,
                            code: e.code.0,
                        },
                        Envelope::Pong(p) => Seen::Pong(p.nonce),
                        Envelope::Notify(n) => Seen::Notify {
                            topic: n.topic.to_owned(),
                            format: n.format,
                            body: n.body.to_vec(),
                        },
                        other => Seen::Other(format!("{other:?}")),
                    };
                    let _ = self.buf.split_to(len);
                    return Some(seen);
                }
                Decoded::Skip { len } => {
                    let _ = self.buf.split_to(len);
                }
                Decoded::NeedMore { .. } => {
                    let read =
                        tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf));
                    match read.await {
                        Err(_) => return None,
                        Ok(Ok(0)) => return Some(Seen::Other("closed".into())),
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return Some(Seen::Other(format!("read error: {e}"))),
                    }
                }
            }
        }
    }
}
