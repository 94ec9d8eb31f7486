//! `abgate up`: starts the stack as three processes, answers through the router,
//! restarts a killed arm, and stops cleanly on SIGTERM leaving no child behind.

mod support;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

/// Processes whose command line mentions `needle`: (pid, parent pid, command line).
fn processes_mentioning(needle: &str) -> Vec<(i32, i32, String)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if !cmdline.contains(needle) {
            continue;
        }
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // pid (comm) state ppid ...
        let ppid = stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or("");
        if state != "Z" {
            out.push((pid, ppid, cmdline));
        }
    }
    out
}

fn write_stack_config(dir: &Path) -> (u16, u16, u16) {
    let (router, best, candidate) = (free_port(), free_port(), free_port());
    for (arm, port) in [("best_model", best), ("candidate_model", candidate)] {
        std::fs::write(
            dir.join(format!("{arm}.toml")),
            format!(
                "variant = \"{arm}\"\nlisten = \"127.0.0.1:{port}\"\nmodel_dir = \"{}\"\nshutdown_grace_ms = 3000\n",
                repo().join("models").join(arm).display()
            ),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    }
    let best_url = format!("http://127.0.0.1:{best}");
    let candidate_url = format!("http://127.0.0.1:{candidate}");
    let text = router_toml(
        &[
            ("best_model", &best_url, 90.0),
            ("candidate_model", &candidate_url, 10.0),
        ],
        "",
        "",
    )
    .replace("127.0.0.1:0", &format!("127.0.0.1:{router}"));
    std::fs::write(dir.join("router.toml"), text).unwrap_or_else(|e| panic!("{e}"));
    (router, best, candidate)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_starts_the_stack_restarts_a_killed_arm_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (router_port, _, _) = write_stack_config(dir.path());
    let marker = dir.path().display().to_string();
    let mut up = Command::new(abgate())
        .args(["up", "--config-dir"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let up_pid = i32::try_from(up.id()).unwrap_or_default();
    let router_url = format!("http://127.0.0.1:{router_port}");
    wait_ok(&format!("{router_url}/api/health"), Duration::from_secs(60)).await;

    let c = client();
    let r = c
        .post_json(
            &format!("{router_url}/predict"),
            &[("x-user-id", "user-1")],
            predict_body(),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-variant"), Some("best_model"));

    let children: Vec<_> = processes_mentioning(&marker)
        .into_iter()
        .filter(|(_, ppid, _)| *ppid == up_pid)
        .collect();
    assert_eq!(children.len(), 3, "{children:?}");
    let (best_pid, _, _) = children
        .iter()
        .find(|(_, _, cmd)| cmd.contains("best_model.toml"))
        .cloned()
        .unwrap_or_else(|| panic!("no best_model child in {children:?}"));

    kill(Pid::from_raw(best_pid), Signal::SIGKILL).unwrap_or_else(|e| panic!("{e}"));
    eventually(
        "best_model is restarted with a new pid",
        Duration::from_secs(30),
        || {
            let marker = marker.clone();
            async move {
                processes_mentioning(&marker)
                    .iter()
                    .any(|(pid, ppid, cmd)| {
                        *ppid == up_pid && *pid != best_pid && cmd.contains("best_model.toml")
                    })
            }
        },
    )
    .await;
    eventually(
        "best_model serves again through the router",
        Duration::from_secs(30),
        || {
            let (c, url) = (c.clone(), format!("{router_url}/predict"));
            async move {
                c.post_json(&url, &[("x-user-id", "user-1")], predict_body())
                    .await
                    .map(|r| {
                        r.status == 200
                            && r.header("x-variant") == Some("best_model")
                            && r.header("x-assigned-variant").is_none()
                    })
                    .unwrap_or(false)
            }
        },
    )
    .await;

    kill(Pid::from_raw(up_pid), Signal::SIGTERM).unwrap_or_else(|e| panic!("{e}"));
    let deadline = Instant::now() + Duration::from_secs(40);
    let status = loop {
        if let Some(status) = up.try_wait().unwrap_or_else(|e| panic!("{e}")) {
            break status;
        }
        assert!(Instant::now() < deadline, "up did not exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "up exited with {status}");
    let left = processes_mentioning(&marker);
    assert!(left.is_empty(), "orphans left behind: {left:?}");
}
