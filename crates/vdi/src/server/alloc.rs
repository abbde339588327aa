//! First-fit allocation of buffers inside a buffer area, with the client's prefix zone in
//! front of each buffer and the data start aligned.

use std::collections::BTreeMap;

/// One area's free and used ranges (offsets within the area).
#[derive(Debug)]
pub(crate) struct AreaAlloc {
    /// start -> end of each free range, coalesced.
    free: BTreeMap<u64, u64>,
    /// data offset -> (block start, block end, data length) of each buffer.
    used: BTreeMap<u64, (u64, u64, u64)>,
}

fn align_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

impl AreaAlloc {
    pub fn new(size: u64) -> AreaAlloc {
        let mut free = BTreeMap::new();
        if size > 0 {
            free.insert(0, size);
        }
        AreaAlloc {
            free,
            used: BTreeMap::new(),
        }
    }

    fn place(&self, prefix: u64, size: u64, align: u64) -> Option<(u64, u64, u64)> {
        self.free.iter().find_map(|(&s, &e)| {
            let data = align_up(s.checked_add(prefix)?, align);
            let end = data.checked_add(size)?;
            (end <= e).then_some((s, e, data))
        })
    }

    /// Allocates `size` data bytes aligned to `align` with `prefix` bytes before them;
    /// returns the data offset.
    pub fn alloc(&mut self, prefix: u64, size: u64, align: u64) -> Option<u64> {
        let (s, e, data) = self.place(prefix, size, align)?;
        let block_start = data - prefix;
        let end = data + size;
        self.free.remove(&s);
        if block_start > s {
            self.free.insert(s, block_start);
        }
        if e > end {
            self.free.insert(end, e);
        }
        self.used.insert(data, (block_start, end, size));
        Some(data)
    }

    /// Frees the buffer whose data starts at `data`; false if there is none.
    pub fn free(&mut self, data: u64) -> bool {
        let Some((mut start, mut end, _)) = self.used.remove(&data) else {
            return false;
        };
        if let Some((&ps, &pe)) = self.free.range(..start).next_back()
            && pe == start
        {
            self.free.remove(&ps);
            start = ps;
        }
        if let Some(&ne) = self.free.get(&end) {
            self.free.remove(&end);
            end = ne;
        }
        self.free.insert(start, end);
        true
    }

    /// Whether `offset` falls inside an allocated buffer's data.
    pub fn is_inside(&self, offset: u64) -> bool {
        self.used
            .range(..=offset)
            .next_back()
            .is_some_and(|(&data, &(_, _, len))| offset < data + len.max(1))
    }

    /// How many more buffers of this shape fit.
    pub fn count_fit(&self, prefix: u64, size: u64, align: u64) -> u64 {
        let mut n = 0;
        for (&s, &e) in &self.free {
            let mut at = s;
            while let Some(data) = at.checked_add(prefix).map(|x| align_up(x, align)) {
                let end = data + size;
                if end > e {
                    break;
                }
                n += 1;
                at = end;
            }
        }
        n
    }

    /// The area size that holds these requests, allocated in order.
    pub fn size_for(prefix: u64, requests: &[(u64, u64, u64)]) -> u64 {
        let mut end = 0u64;
        for &(size, align, count) in requests {
            for _ in 0..count {
                let data = align_up(end + prefix, align);
                end = data + size;
            }
        }
        end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_free_coalesce() {
        let size = AreaAlloc::size_for(100, &[(4096, 4096, 4)]);
        let mut a = AreaAlloc::new(size);
        let offs: Vec<u64> = (0..4).map(|_| a.alloc(100, 4096, 4096).unwrap()).collect();
        for o in &offs {
            assert_eq!(o % 4096, 0);
            assert!(*o >= 100);
        }
        assert!(a.alloc(100, 4096, 4096).is_none());
        assert!(a.is_inside(offs[1] + 10));
        assert!(!a.is_inside(offs[1] - 1));
        for o in &offs {
            assert!(a.free(*o));
        }
        assert!(!a.free(offs[0]));
        assert_eq!(a.free.len(), 1);
        assert_eq!(a.count_fit(100, 4096, 4096), 4);
    }
}
