//! The example as a user runs it: a real tonic server and client on
//! loopback, every call served in its own trace although the server's
//! limit refuses some of them at first. Enough calls that the refusals
//! would have opened the client's breaker (its window is 20 calls) were
//! they counted as failures: the twelfth call failed "circuit open".

#[test]
fn every_call_is_served_in_its_own_trace_through_the_limit() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tonic-service"))
        .arg("24")
        .output()
        .unwrap();
    let printed = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(lines.len(), 24, "{printed}");
    for (n, line) in lines.iter().enumerate() {
        assert!(
            line.starts_with(&format!("call {}: Serving", n + 1)),
            "{line}"
        );
        assert!(line.ends_with("in the same trace: true"), "{line}");
    }
}
