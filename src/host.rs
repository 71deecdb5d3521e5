//! `shardcast check-host`: what on this host caps the connection target,
//! in plain words, and what to change. Reads rlimits and /proc/sys, probes
//! io_uring with a real `io_uring_setup(2)`, and checks the core map.

use std::fmt::Write as _;

use crate::config::Config;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Fine for the target.
    Ok,
    /// Works, but caps or risks the target; the advice says what to change.
    Warn,
    /// The target or the config cannot be met here.
    Fail,
}

/// One finding.
#[derive(Debug)]
pub struct Finding {
    /// Severity.
    pub level: Level,
    /// What was checked.
    pub what: &'static str,
    /// What was found and what to do.
    pub text: String,
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

fn rlimit(resource: libc::__rlimit_resource_t) -> (u64, u64) {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we pass.
    unsafe { libc::getrlimit(resource, &mut lim) };
    (lim.rlim_cur, lim.rlim_max)
}

fn show(v: u64) -> String {
    if v == libc::RLIM_INFINITY {
        "unlimited".into()
    } else {
        v.to_string()
    }
}

/// Probes io_uring: Ok, or the errno and what it means.
pub fn probe_io_uring() -> Result<(), String> {
    let mut params = [0u8; 120]; // struct io_uring_params
                                 // SAFETY: io_uring_setup(2) with a zeroed params struct of the kernel's
                                 // size; on success we own the returned fd and close it.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 4u32, params.as_mut_ptr()) };
    if fd >= 0 {
        // SAFETY: closing the fd io_uring_setup just gave us.
        unsafe { libc::close(fd as i32) };
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    let why = match err.raw_os_error() {
        Some(libc::ENOSYS) => "the kernel has no io_uring (or a seccomp filter hides it)",
        Some(libc::EPERM) => "io_uring is forbidden: check kernel.io_uring_disabled and container seccomp profiles",
        Some(libc::ENOMEM) => "not enough locked memory for the rings: raise ulimit -l",
        _ => "unexpected error",
    };
    Err(format!("{err} ({why})"))
}

/// Checks this host against `cfg` and a target of `target` connections.
pub fn check(cfg: &Config, target: u64) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut add = |level, what, text: String| out.push(Finding { level, what, text });
    let need_fds = target + 64;

    let (soft, hard) = rlimit(libc::RLIMIT_NOFILE);
    let nr_open: u64 = read("/proc/sys/fs/nr_open").and_then(|v| v.parse().ok()).unwrap_or(0);
    let level = if hard < need_fds {
        Level::Fail
    } else if soft < need_fds {
        Level::Warn
    } else {
        Level::Ok
    };
    let advice = match level {
        Level::Ok => "enough".to_string(),
        Level::Warn => format!("raise the soft limit before starting: ulimit -n {need_fds} (or LimitNOFILE={need_fds})"),
        Level::Fail => format!(
            "this process can hold at most ~{} sockets; raise the hard limit (LimitNOFILE= under systemd, /etc/security/limits.conf) and fs.nr_open (now {nr_open}) to at least {need_fds}",
            hard.saturating_sub(64)
        ),
    };
    add(level, "open files (ulimit -n)", format!("soft {}, hard {}: {advice}", show(soft), show(hard)));

    let file_max: u64 = read("/proc/sys/fs/file-max").and_then(|v| v.parse().ok()).unwrap_or(u64::MAX);
    let level = if file_max < need_fds { Level::Fail } else { Level::Ok };
    add(
        level,
        "fs.file-max",
        format!(
            "{file_max} system-wide open files{}",
            if level == Level::Ok { "" } else { ": raise it (tuning/sysctl-100k.conf)" }
        ),
    );

    let somaxconn: u32 = read("/proc/sys/net/core/somaxconn").and_then(|v| v.parse().ok()).unwrap_or(0);
    let level = if somaxconn < cfg.server.backlog { Level::Warn } else { Level::Ok };
    add(
        level,
        "net.core.somaxconn",
        format!(
            "{somaxconn}; each shard asks for a backlog of {}{}",
            cfg.server.backlog,
            if level == Level::Ok {
                ""
            } else {
                ": the kernel caps it, so a reconnect storm overflows sooner; raise net.core.somaxconn"
            }
        ),
    );

    if let Some(range) = read("/proc/sys/net/ipv4/ip_local_port_range") {
        let v: Vec<u64> = range.split_whitespace().filter_map(|x| x.parse().ok()).collect();
        let ports = v.get(1).zip(v.first()).map_or(0, |(hi, lo)| hi.saturating_sub(*lo) + 1);
        add(Level::Ok, "net.ipv4.ip_local_port_range", format!(
            "{range} ({ports} ports): limits clients and the loadgen per source address, not the server; loadgen spreads over 127.0.0.x sources"
        ));
    }

    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    if let Some(mem) = read("/proc/sys/net/ipv4/tcp_mem") {
        let max_pages: u64 = mem.split_whitespace().nth(2).and_then(|x| x.parse().ok()).unwrap_or(0);
        let max = max_pages * page;
        // An idle connection holds little; a busy one holds socket buffers.
        // Budget 8 KiB per connection of kernel TCP memory.
        let want = target * 8 * 1024;
        let level = if max < want { Level::Warn } else { Level::Ok };
        add(
            level,
            "net.ipv4.tcp_mem",
            format!(
                "max {} MiB of TCP buffers for all sockets; {} connections at ~8 KiB each want {} MiB{}",
                max >> 20,
                target,
                want >> 20,
                if level == Level::Ok { "" } else { ": raise tcp_mem (tuning/sysctl-1m.conf)" }
            ),
        );
    }

    let (ml_soft, _) = rlimit(libc::RLIMIT_MEMLOCK);
    let shards = cfg.shard_cpus().map(|c| c.len()).unwrap_or(1) as u64;
    let need = 512 * 1024 + shards * cfg.shards.io_memory_kib as u64 * 1024;
    let level = if ml_soft != libc::RLIM_INFINITY && ml_soft < need { Level::Fail } else { Level::Ok };
    add(
        level,
        "locked memory (ulimit -l)",
        format!(
            "{} bytes; glommio needs >= {need} for {shards} shards{}",
            show(ml_soft),
            if level == Level::Ok { "" } else { ": raise ulimit -l (LimitMEMLOCK=)" }
        ),
    );

    let disabled = read("/proc/sys/kernel/io_uring_disabled");
    match probe_io_uring() {
        Ok(()) => add(
            Level::Ok,
            "io_uring",
            format!("usable (kernel.io_uring_disabled = {})", disabled.as_deref().unwrap_or("absent")),
        ),
        Err(e) => add(
            Level::Fail,
            "io_uring",
            format!("unusable: {e}; kernel.io_uring_disabled = {}", disabled.as_deref().unwrap_or("absent")),
        ),
    }

    let online = core_affinity::get_core_ids().map(|c| c.len()).unwrap_or(0);
    match cfg.shard_cpus() {
        Ok(cpus) => {
            let level = if cpus.len() < online { Level::Ok } else { Level::Warn };
            add(
                level,
                "core map",
                format!(
                    "{} shards on CPUs {cpus:?} of {online} available{}",
                    cpus.len(),
                    if level == Level::Ok {
                        "; the rest are free for IRQs and the OS"
                    } else {
                        ": every CPU runs a shard; on a tuned host keep one or two for NIC interrupts"
                    }
                ),
            );
        }
        Err(e) => add(Level::Fail, "core map", e.to_string()),
    }
    out
}

/// The findings as text, and whether any is a failure.
pub fn report(findings: &[Finding]) -> (String, bool) {
    let mut s = String::new();
    for f in findings {
        let tag = match f.level {
            Level::Ok => "ok  ",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        };
        let _ = writeln!(s, "{tag} {}: {}", f.what, f.text);
    }
    let failed = findings.iter().any(|f| f.level == Level::Fail);
    (s, failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_modest_target_passes_and_a_huge_one_fails_on_open_files() {
        let cfg = Config::default();
        let (_, hard) = rlimit(libc::RLIMIT_NOFILE);
        let small = check(&cfg, 10);
        let nofile = small.iter().find(|f| f.what.starts_with("open files")).unwrap();
        assert_ne!(nofile.level, Level::Fail, "{}", nofile.text);
        if hard != libc::RLIM_INFINITY && hard < 1 << 40 {
            let huge = check(&cfg, hard + 1000);
            let f = huge.iter().find(|f| f.what.starts_with("open files")).unwrap();
            assert_eq!(f.level, Level::Fail);
            assert!(f.text.contains("raise the hard limit"), "{}", f.text);
            assert!(report(&huge).1);
        }
    }
}
