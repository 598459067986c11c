//! The command line refuses what it does not know, and says what it takes.
//! No server is needed: every case here ends before anything starts.

use std::process::{Command, Output};

fn order_system(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_order-system"))
        .args(args)
        .env_remove("PALISADE_IDENTITY")
        .output()
        .unwrap()
}

/// Exit code 2 and nothing on stdout; what it said on stderr.
fn refused(args: &[&str]) -> String {
    let output = order_system(args);
    let said = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(2), "{args:?}: {said}");
    assert!(output.stdout.is_empty(), "{args:?}");
    said
}

#[test]
fn a_misspelt_flag_is_an_error_not_the_defaults() {
    let said = refused(&["load", "--order", "100"]);
    assert!(said.contains("unexpected argument '--order'"), "{said}");
    assert!(said.contains("--orders"), "suggests the right one: {said}");

    let said = refused(&["--dta", "elsewhere"]);
    assert!(said.contains("unexpected argument '--dta'"), "{said}");
    let said = refused(&["serve", "gateway", "--postgress", "postgres://x"]);
    assert!(said.contains("--postgres"), "{said}");
}

#[test]
fn a_bad_value_is_named_with_its_flag() {
    let said = refused(&["load", "--decline-rate", "1.5"]);
    assert!(said.contains("--decline-rate"), "{said}");
    assert!(said.contains("not a number from 0 to 1"), "{said}");
    let said = refused(&["load", "--concurrency", "0"]);
    assert!(said.contains("--concurrency"), "{said}");
    let said = refused(&["load", "--processor-outage", "601"]);
    assert!(said.contains("--processor-outage"), "{said}");
    let said = refused(&["run", "--listen", "localhost"]);
    assert!(said.contains("--listen"), "{said}");
    let said = refused(&["serve", "billing"]);
    assert!(
        said.contains("no service \"billing\"; one of processor, relay"),
        "{said}"
    );
    let said = refused(&[
        "dead-events",
        "requeue",
        "--service",
        "orders",
        "--id",
        "seven",
    ]);
    assert!(said.contains("--id"), "{said}");
}

#[test]
fn flags_that_exclude_each_other_are_refused_together() {
    let said = refused(&[
        "dead-events",
        "requeue",
        "--service",
        "orders",
        "--id",
        "0190c0de-0000-7000-8000-000000000000",
        "--all",
    ]);
    assert!(said.contains("cannot be used with"), "{said}");
    let said = refused(&[
        "dead-events",
        "list",
        "--service",
        "orders",
        "--data",
        "d",
        "--postgres",
        "postgres://x",
    ]);
    assert!(said.contains("cannot be used with"), "{said}");
    let said = refused(&["token", "--password", "p", "--credentials", "c.json"]);
    assert!(said.contains("cannot be used with"), "{said}");
    // `run`'s flags without a command are `run`'s, not another command's.
    let said = refused(&["--data", "d", "load"]);
    assert!(
        said.contains("'load' cannot be used with '--data <DIR>'"),
        "{said}"
    );
}

#[test]
fn each_command_has_its_help_with_the_variables_it_reads() {
    let help = |args: &[&str]| {
        let output = order_system(args);
        assert!(output.status.success(), "{args:?}");
        String::from_utf8(output.stdout).unwrap()
    };
    let top = help(&["--help"]);
    for command in [
        "run",
        "load",
        "serve",
        "identity",
        "token",
        "dead-events",
        "remove-namespace",
    ] {
        assert!(top.contains(command), "{command}: {top}");
    }
    let serve = help(&["serve", "--help"]);
    for variable in [
        "PALISADE_POSTGRES",
        "PALISADE_NATS",
        "PALISADE_REDIS",
        "PALISADE_PAYMENT",
        "PALISADE_NAMESPACE",
        "PALISADE_IDENTITY",
        "PAYMENT_VAULT_KEY",
        "PALISADE_STOP_GRACE",
    ] {
        assert!(serve.contains(variable), "{variable}: {serve}");
    }
    let load = help(&["help", "load"]);
    for flag in [
        "--gateway",
        "--admin",
        "--credentials",
        "--orders",
        "--concurrency",
        "--decline-rate",
        "--processor-outage",
        "--processor-admin",
        "--progress",
    ] {
        assert!(load.contains(flag), "{flag}: {load}");
    }
    let requeue = help(&["dead-events", "requeue", "--help"]);
    assert!(requeue.contains("--all"), "{requeue}");
}

#[test]
fn a_server_url_from_the_environment_is_not_shown_in_the_help() {
    let output = Command::new(env!("CARGO_BIN_EXE_order-system"))
        .args(["serve", "--help"])
        .env("PALISADE_POSTGRES", "postgres://app:hunter2@db/orders")
        .output()
        .unwrap();
    let help = String::from_utf8(output.stdout).unwrap();
    assert!(help.contains("PALISADE_POSTGRES"), "{help}");
    assert!(!help.contains("hunter2"), "{help}");
}

#[test]
fn the_default_system_is_never_removed_as_a_namespace() {
    let output = Command::new(env!("CARGO_BIN_EXE_order-system"))
        .arg("remove-namespace")
        .env_remove("PALISADE_NAMESPACE")
        // Nothing listens there: the refusal comes before any connection.
        .env("PALISADE_POSTGRES", "postgres://nobody@127.0.0.1:1/none")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{said}");
    assert!(
        said.contains("refusing to remove the default system"),
        "{said}"
    );
}

/// The order system run with `args` against the test servers.
fn on_servers(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_order-system"))
        .args(args)
        .env(
            "PALISADE_POSTGRES",
            palisade_testkit::servers::database_url(),
        )
        .env("PALISADE_NATS", palisade_testkit::servers::nats_url())
        .output()
        .unwrap()
}

/// A rebuild needs the system's stream: in a namespace that never ran,
/// `rebuild-catalog` and `rebuild-history` fail with the stream they could
/// not replay (the schemas made on the way are removed after).
#[test]
fn a_read_model_rebuild_without_a_stream_says_so() {
    let namespace = format!("never{}", fastrand::u32(..));
    for (command, model) in [
        ("rebuild-catalog", "the catalog"),
        ("rebuild-history", "the order history"),
    ] {
        let output = on_servers(&[command, "--namespace", &namespace]);
        let said = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{said}");
        assert!(
            said.contains(&format!(
                "{model}: replaying stream ORDERS_{}",
                namespace.to_ascii_uppercase()
            )),
            "{said}"
        );
    }
    let removed = on_servers(&["remove-namespace", "--namespace", &namespace]);
    assert!(removed.status.success(), "{removed:?}");
}
