//! The one way to allocate a buffer whose size a user controls: fallible, so an impossible size is an
//! `Error::Alloc` (Python `AllocationError`, a `MemoryError`) instead of an abort. A large request (at
//! least `CHECK_FROM` bytes) is first weighed against the memory actually available — `MemAvailable`
//! from /proc/meminfo, a cgroup limit if one is set, and `NANOFRONTIER_MEMORY_LIMIT` — and refused if it
//! does not fit: Linux overcommits, so such a buffer would otherwise be granted and the process killed
//! by the OOM killer once it is touched. Not here: buffers sized by data that already exists.

use std::mem::size_of;

use crate::error::{Error, Result};

/// Requests from this size on are checked against the available memory. One reading (/proc/meminfo and
/// the cgroup files) measured 70–80 µs on a loaded VM, about 1% of faulting in 64 MiB, so it is not cached:
/// a cached value would miss memory that other processes took or freed meanwhile.
pub const CHECK_FROM: u128 = 64 << 20;

/// `n` copies of `value`.
pub fn try_vec<T: Clone>(op: &'static str, n: usize, value: T) -> Result<Vec<T>> {
    let mut v = try_with_capacity(op, n)?;
    v.resize(n, value);
    Ok(v)
}

/// An empty vector with room for `n` elements.
pub fn try_with_capacity<T>(op: &'static str, n: usize) -> Result<Vec<T>> {
    let bytes = n as u128 * size_of::<T>() as u128;
    check_fits(op, bytes)?;
    let mut v: Vec<T> = Vec::new();
    v.try_reserve_exact(n).map_err(|_| Error::alloc_bytes(op, bytes, None))?;
    Ok(v)
}

/// `n` zeros as f32, from the allocator's zeroed path: large buffers come pre-zeroed from the OS
/// (no serial memset).
pub fn alloc_zeros(op: &'static str, n: usize) -> Result<Vec<f32>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let bytes = n as u128 * 4;
    check_fits(op, bytes)?;
    let err = || Error::alloc_bytes(op, bytes, None);
    let layout = std::alloc::Layout::array::<f32>(n).map_err(|_| err())?;
    // SAFETY: layout has non-zero size; a null return is handled; the buffer was allocated by the global
    // allocator with exactly this layout (capacity n of f32), and all-zero bits are valid f32 values.
    unsafe {
        let ptr = std::alloc::alloc_zeroed(layout) as *mut f32;
        if ptr.is_null() {
            return Err(err());
        }
        Ok(Vec::from_raw_parts(ptr, n, n))
    }
}

/// An empty f32 vector with room for `n` elements.
pub fn alloc_with_capacity(op: &'static str, n: usize) -> Result<Vec<f32>> {
    try_with_capacity(op, n)
}

/// `Err(Alloc)` if `bytes` can never be allocated (more than `isize::MAX`), or is large and more than
/// the memory available now.
fn check_fits(op: &'static str, bytes: u128) -> Result<()> {
    if bytes > isize::MAX as u128 {
        return Err(Error::alloc_bytes(op, bytes, available_memory()));
    }
    if bytes >= CHECK_FROM {
        if let Some(avail) = available_memory() {
            if bytes > avail as u128 {
                return Err(Error::alloc_bytes(op, bytes, Some(avail)));
            }
        }
    }
    Ok(())
}

/// Bytes this process can still use: the least of `MemAvailable`, a cgroup limit minus the cgroup's
/// working set, and `NANOFRONTIER_MEMORY_LIMIT` minus this process's resident memory. None if none of
/// them can be read (not Linux): then only the allocator's own refusal applies.
pub fn available_memory() -> Option<u64> {
    [mem_available(), cgroup_available(), env_limit_available()].into_iter().flatten().min()
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// A `key  value kB` / `key value` line of /proc/meminfo or a cgroup's memory.stat.
fn field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next()?.trim_end_matches(':') == key).then(|| it.next()?.parse::<u64>().ok()).flatten()
    })
}

fn mem_available() -> Option<u64> {
    field(&read("/proc/meminfo")?, "MemAvailable").map(|kb| kb.saturating_mul(1024))
}

/// cgroup v2 (`memory.max`, `memory.current`) or v1 (`memory.limit_in_bytes`, `memory.usage_in_bytes`)
/// of this process's cgroup. Page cache that the kernel can drop (inactive file pages) does not count
/// as used, as container runtimes report it.
fn cgroup_available() -> Option<u64> {
    let cgroups = read("/proc/self/cgroup")?;
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let (limit, usage, stat, inactive) = if controllers.is_empty() {
            let dir = format!("/sys/fs/cgroup{path}");
            (
                format!("{dir}/memory.max"),
                format!("{dir}/memory.current"),
                format!("{dir}/memory.stat"),
                "inactive_file",
            )
        } else if controllers.split(',').any(|c| c == "memory") {
            let dir = format!("/sys/fs/cgroup/memory{path}");
            (
                format!("{dir}/memory.limit_in_bytes"),
                format!("{dir}/memory.usage_in_bytes"),
                format!("{dir}/memory.stat"),
                "total_inactive_file",
            )
        } else {
            continue;
        };
        // "max" (v2) or a huge number (v1: no limit) parse to nothing useful
        let Some(limit) = read(&limit).and_then(|s| s.trim().parse::<u64>().ok()) else { continue };
        if limit >= 1 << 60 {
            continue;
        }
        let used = read(&usage).and_then(|s| s.trim().parse::<u64>().ok()).unwrap_or(0);
        let reclaimable = read(&stat).and_then(|s| field(&s, inactive)).unwrap_or(0);
        return Some(limit.saturating_sub(used.saturating_sub(reclaimable)));
    }
    None
}

/// `NANOFRONTIER_MEMORY_LIMIT` (bytes, or with a K/M/G suffix): a cap this process puts on itself, like a
/// cgroup limit, minus its resident memory now.
fn env_limit_available() -> Option<u64> {
    let limit = parse_size(&std::env::var("NANOFRONTIER_MEMORY_LIMIT").ok()?)?;
    let statm = read("/proc/self/statm")?;
    let resident_pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(limit.saturating_sub(resident_pages.saturating_mul(4096)))
}

/// "1073741824", "512M", "2G", "64k" → bytes (binary units).
fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, shift) = match s.char_indices().last()? {
        (i, 'k' | 'K') => (&s[..i], 10),
        (i, 'm' | 'M') => (&s[..i], 20),
        (i, 'g' | 'G') => (&s[..i], 30),
        _ => (s, 0),
    };
    num.trim().parse::<u64>().ok()?.checked_mul(1 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_binary_units() {
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("512M"), Some(512 << 20));
        assert_eq!(parse_size(" 2g "), Some(2 << 30));
        assert_eq!(parse_size("64k"), Some(64 << 10));
        assert_eq!(parse_size("lots"), None);
    }

    #[test]
    fn meminfo_fields_are_read() {
        let text = "MemTotal:       24000000 kB\nMemAvailable:   21000000 kB\n";
        assert_eq!(field(text, "MemAvailable"), Some(21_000_000));
        assert_eq!(field(text, "MemFree"), None);
        // on Linux the real reading is there and below the machine's total
        if let (Some(avail), Some(info)) = (mem_available(), read("/proc/meminfo")) {
            assert!(avail <= field(&info, "MemTotal").unwrap() * 1024);
        }
    }

    #[test]
    fn a_request_larger_than_the_memory_available_is_refused_with_both_sizes() {
        let Some(avail) = available_memory() else { return };
        // more than is available, but well inside isize: only the check can refuse it before touching
        let n = (avail / 8 + (1 << 30)) as usize; // i64: 8 bytes each
        let e = try_with_capacity::<i64>("t", n).unwrap_err();
        let Error::Alloc { op: "t", bytes, available: Some(a) } = &e else { panic!("wrong error {e:?}") };
        assert_eq!(*bytes, n as u128 * 8);
        assert!(*a <= avail + (1 << 30), "available {a} vs {avail} read before");
        assert!(e.to_string().contains("of memory is available"), "{e}");
        // small requests are not checked (and succeed)
        assert_eq!(try_vec("t", 1000, 7u8).unwrap().len(), 1000);
    }

    #[test]
    fn impossible_sizes_are_errors_for_any_element_type() {
        assert!(matches!(try_with_capacity::<u64>("t", usize::MAX / 4), Err(Error::Alloc { .. })));
        assert!(matches!(alloc_zeros("t", usize::MAX / 2), Err(Error::Alloc { .. })));
    }
}
