//! The latency half of the benchmark's WAN link (netem is not in this kernel): holds every packet of
//! one NFQUEUE queue for a fixed time, then accepts it. Run as `delayer QUEUE_NUM DELAY_MS` in the
//! network namespace whose raw PREROUTING queues the link's packets to QUEUE_NUM; the delay is
//! one-way, so one delayer on each side with half the RTT each. Packets leave in arrival order (the
//! delay is constant), and only their metadata is copied to user space.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use nfq::{Queue, Verdict};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parsed = match &args[..] {
        [num, ms] => num.parse::<u16>().ok().zip(
            ms.parse::<f64>()
                .ok()
                .filter(|ms| (0.0..=10_000.0).contains(ms)),
        ),
        _ => None,
    };
    let Some((num, ms)) = parsed else {
        eprintln!("usage: delayer QUEUE_NUM DELAY_MS   (QUEUE_NUM 0-65535, DELAY_MS 0-10000)");
        std::process::exit(2);
    };
    let delay = Duration::from_secs_f64(ms / 1000.0);
    if let Err(e) = run(num, delay) {
        eprintln!("delayer (queue {num}): {e}");
        std::process::exit(1);
    }
}

fn run(num: u16, delay: Duration) -> std::io::Result<()> {
    // The queue's socket is the one descriptor `Queue::open` adds (nfq does not expose it): it is
    // polled, so that the wait for the next packet ends when the oldest held one is due.
    let before = open_sockets()?;
    let mut queue = Queue::open()?;
    let Some(fd) = open_sockets()?.into_iter().find(|fd| !before.contains(fd)) else {
        return Err(std::io::Error::other(
            "cannot find the socket Queue::open made",
        ));
    };
    queue.bind(num)?;
    queue.set_copy_range(num, 0)?; // metadata only: the verdict needs just the packet id
    queue.set_queue_max_len(num, 65_536)?;
    queue.set_nonblocking(true);
    eprintln!("delayer: queue {num}, holding each packet {delay:?}");
    let mut held: VecDeque<(Instant, nfq::Message)> = VecDeque::new();
    loop {
        let now = Instant::now();
        while held.front().is_some_and(|(due, _)| *due <= now) {
            if let Some((_, mut msg)) = held.pop_front() {
                msg.set_verdict(Verdict::Accept);
                queue.verdict(msg)?;
            }
        }
        let wait = held.front().map(|(due, _)| {
            let d = due.saturating_duration_since(now);
            libc::timespec {
                tv_sec: d.as_secs() as libc::time_t,
                tv_nsec: d.subsec_nanos() as libc::c_long,
            }
        });
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let timeout = wait
            .as_ref()
            .map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: one valid pollfd (the queue's open socket); the timeout, if any, outlives the call.
        if unsafe { libc::ppoll(&mut pfd, 1, timeout, std::ptr::null()) } < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        loop {
            match queue.recv() {
                Ok(msg) => held.push_back((Instant::now() + delay, msg)),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
    }
}

/// The process's open sockets (the listing's own directory descriptor is not one).
fn open_sockets() -> std::io::Result<Vec<i32>> {
    Ok(std::fs::read_dir("/proc/self/fd")?
        .filter_map(|e| {
            let e = e.ok()?;
            std::fs::read_link(e.path())
                .ok()?
                .to_str()?
                .starts_with("socket:")
                .then_some(())?;
            e.file_name().to_str()?.parse().ok()
        })
        .collect())
}
