//! CPU placement of worker processes: an unpinned worker may run on every CPU
//! the server process may use, even though the server thread that spawned it
//! is pinned to `main_cpu`; a pinned one gets exactly its pin.

mod support;

use mpserver::affinity::current_cpus;
use mpserver::{CpuAffinity, ProcessServlet, Server};
use support::{Double, wait_for};

/// `Cpus_allowed_list` of a process, expanded ("0-2,4" → [0, 1, 2, 4]).
fn allowed(pid: u32) -> Vec<usize> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim();
    let mut cpus = Vec::new();
    for part in list.split(',') {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.parse::<usize>().unwrap()..=b.parse().unwrap()),
            None => cpus.push(part.parse().unwrap()),
        }
    }
    cpus
}

#[test]
fn unpinned_workers_get_every_cpu_of_the_server_not_main_cpu() {
    let all = current_cpus();
    if all.len() < 2 {
        eprintln!("only one CPU available: nothing to tell apart");
        return;
    }
    let last = *all.last().unwrap();
    let server = Server::builder(ProcessServlet::new(Double).cpus([
        CpuAffinity::any(),
        CpuAffinity::any(),
        last.into(),
    ]))
    .main_cpu(all[0])
    .start()
    .unwrap();
    assert_eq!(server.call(1).unwrap(), 2);
    let check = |pids: &[u32]| {
        let mut got: Vec<Vec<usize>> = pids.iter().map(|p| allowed(*p)).collect();
        got.sort();
        let mut want = vec![all.clone(), all.clone(), vec![last]];
        want.sort();
        assert_eq!(got, want, "workers' CPUs (main_cpu = {})", all[0]);
    };
    let pids = server.worker_pids();
    assert_eq!(pids.len(), 3);
    check(&pids);
    // A worker restarted after a crash is placed the same way.
    for pid in &pids {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    }
    wait_for(|| {
        let now = server.worker_pids();
        let info = serde_json::to_value(server.debug_info()).unwrap();
        let workers = info["servlets"]["workers"].as_array().unwrap().clone();
        now.len() == 3
            && now.iter().all(|p| !pids.contains(p))
            && workers.iter().all(|w| w["alive"] == true)
    });
    check(&server.worker_pids());
}
