//! The redis-server a bench talks to, pinned away from the bench process.

use cachelayer_testkit::RedisServer;

/// The bench process is meant to run under `taskset -c 0`; its redis-server goes to core 1
/// so client and server never share a core. The machine's online CPUs decide, not this
/// process's affinity mask (which `taskset` narrows to one core).
pub(crate) fn server() -> RedisServer {
    let builder = RedisServer::builder();
    if online_cpus() > 1 {
        builder.pin_to_cpu(1)
    } else {
        builder
    }
    .start()
}

/// Online CPUs from `/sys/devices/system/cpu/online` ("0-1", "0,2-3"); 1 when unreadable.
pub(crate) fn online_cpus() -> usize {
    let Ok(list) = std::fs::read_to_string("/sys/devices/system/cpu/online") else {
        return 1;
    };
    list.trim()
        .split(',')
        .map(|range| match range.split_once('-') {
            Some((from, to)) => match (from.parse::<usize>(), to.parse::<usize>()) {
                (Ok(from), Ok(to)) if to >= from => to - from + 1,
                _ => 0,
            },
            None => usize::from(range.parse::<usize>().is_ok()),
        })
        .sum::<usize>()
        .max(1)
}
