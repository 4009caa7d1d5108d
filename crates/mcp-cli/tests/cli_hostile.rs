//! A hostile server's text never reaches the terminal raw: ERROR messages, GOAWAY reasons
//! and bodies holding newlines and escape sequences are printed escaped, each error on one
//! line. The server is a scripted peer (`mcp-test-support`); `mcp` runs as a user runs it.

mod support;

use mcp_codec::OwnedEnvelope;
use mcp_test_support::{Peer, Received, TestListener, error, goaway, response};
use support::{Run, run};

/// Text that, printed raw, would end the line, forge a line of `mcp`, clear the screen,
/// ring the bell, return the carriage and reverse the rest of the line.
const HOSTILE: &str = "denied\nmcp: all good\r\u{1b}[2J\u{7}\u{202e}gnissim";

/// How it must look once escaped.
const ESCAPED: &str = r"denied\nmcp: all good\r\u{1b}[2J\u{7}\u{202e}gnissim";

/// Panics if `out` holds a character a terminal would act on (newlines apart).
#[track_caller]
fn assert_no_raw_controls(out: &Run) {
    for (name, text) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
        assert!(
            !text.contains(['\r', '\u{1b}', '\u{7}', '\u{202e}']),
            "raw control characters on {name}\n{out:?}"
        );
    }
    // The forged line stays inside the real one, escaped.
    let forged = |text: &str| text.lines().any(|l| l.starts_with("mcp: all good"));
    assert!(!forged(&out.stderr) && !forged(&out.stdout), "{out}");
}

/// Runs `mcp ARGS` (with `{addr}` replaced by the peer's address) while `script` plays the
/// server's part on the first connection.
async fn against<F, Fut>(args: &[&str], script: F) -> Run
where
    F: FnOnce(Peer) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TestListener::bind().await;
    let addr = listener.addr().to_string();
    let args: Vec<String> = args.iter().map(|a| a.replace("{addr}", &addr)).collect();
    let child = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&args)
    });
    let peer = listener.accept().await;
    let server = tokio::spawn(script(peer));
    let out = child.await.expect("the mcp runner");
    server.await.expect("the scripted server");
    out
}

/// Answers every request with `frame(id)` until the client closes.
async fn answer_all(mut peer: Peer, frame: impl Fn(u32) -> Vec<u8>) {
    loop {
        match peer.recv().await {
            Received::Envelope(OwnedEnvelope::Request(r)) => {
                if peer.try_send_raw(&frame(r.id)).await.is_err() {
                    return;
                }
            }
            Received::Envelope(OwnedEnvelope::Ping(p)) => {
                let pong = mcp_test_support::encode(mcp_codec::Envelope::Pong(mcp_codec::Pong {
                    nonce: p.nonce,
                }));
                let _ = peer.try_send_raw(&pong).await;
            }
            Received::Envelope(_) => {}
            Received::Closed => return,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_prints_an_error_message_escaped_on_one_line() {
    let out = against(&["call", "{addr}", "echo", "--raw", "x"], |peer| {
        answer_all(peer, |id| error(id, 1404, HOSTILE))
    })
    .await;
    out.assert_code(1);
    out.one_error_line(&["ERROR 1404", ESCAPED]);
    assert_no_raw_controls(&out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_prints_a_connection_error_escaped_on_one_line() {
    let out = against(
        &["call", "{addr}", "echo", "--raw", "x"],
        |mut peer| async move {
            let _ = peer.recv_request().await;
            peer.send_raw(&error(0, 1, HOSTILE)).await;
        },
    )
    .await;
    out.assert_code(1);
    out.one_error_line(&[ESCAPED]);
    assert_no_raw_controls(&out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_prints_a_body_with_its_controls_escaped() {
    let out = against(&["call", "{addr}", "echo", "--raw", "x"], |peer| {
        answer_all(peer, |id| {
            response(id, "line 1\nline 2\r\u{1b}[2J\u{7}".as_bytes())
        })
    })
    .await;
    out.assert_code(0);
    // The body's own line break stays; what would act on the terminal is escaped.
    assert_eq!(out.stdout, "line 1\nline 2\\r\\u{1b}[2J\\u{7}\n", "{out}");
    assert_no_raw_controls(&out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_prints_a_goaway_reason_escaped_on_one_line() {
    let out = against(
        &["ping", "{addr}", "-c", "3", "-i", "10ms"],
        |mut peer| async move {
            peer.answer_pings = false;
            let _ = peer.recv_ping().await;
            peer.send_raw(&goaway(0, 0, HOSTILE)).await;
            // Dropping the peer closes the connection.
        },
    )
    .await;
    out.assert_code(1);
    out.one_error_line(&["after GOAWAY 0", ESCAPED]);
    assert_no_raw_controls(&out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_prints_a_connection_error_escaped_on_one_line() {
    let out = against(
        &["ping", "{addr}", "-c", "3", "-i", "10ms"],
        |mut peer| async move {
            peer.answer_pings = false;
            let _ = peer.recv_ping().await;
            peer.send_raw(&error(0, 1, HOSTILE)).await;
        },
    )
    .await;
    out.assert_code(1);
    out.one_error_line(&["ERROR 1 (MALFORMED)", ESCAPED]);
    assert_no_raw_controls(&out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_names_the_error_and_quotes_it_escaped() {
    let out = against(
        &[
            "bench",
            "{addr}",
            "--duration",
            "300ms",
            "--warmup",
            "0s",
            "--concurrency",
            "2",
        ],
        |peer| answer_all(peer, |id| error(id, 1404, HOSTILE)),
    )
    .await;
    // No call succeeded: a failed run.
    out.assert_code(1);
    let errors = out
        .stdout
        .lines()
        .find(|l| l.starts_with("errors: "))
        .unwrap_or_else(|| panic!("no errors line\n{out}"));
    assert!(errors.contains("remote ERROR 1404: "), "{out}");
    let first = out
        .stdout
        .lines()
        .find(|l| l.starts_with("first error: "))
        .unwrap_or_else(|| panic!("no first error line\n{out}"));
    assert!(first.contains(ESCAPED), "{out}");
    assert_no_raw_controls(&out);
}

#[test]
fn decode_prints_peer_text_escaped_on_its_line() {
    let mut capture = error(1, 1404, HOSTILE);
    capture.extend(goaway(1, 0, HOSTILE));
    capture.extend(response(1, "a\nb\r\u{202e}".as_bytes()));
    // A body with ESC is binary to `decode`: shown in hex.
    capture.extend(response(2, "\u{1b}[2J".as_bytes()));
    let out = support::run_with_stdin(&["decode"], &capture);
    out.assert_code(0);
    // Four frames of two or three lines; nothing the peer sent made a line of its own.
    assert_eq!(out.stdout.lines().count(), 10, "{out}");
    assert_eq!(out.stdout.matches(ESCAPED).count(), 2, "{out}");
    out.assert_stdout_has(r"body 7 bytes: a\nb\r\u{202e}");
    out.assert_stdout_has("body 4 bytes: 1b 5b 32 4a");
    assert_no_raw_controls(&out);
}
