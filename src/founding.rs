//! The founding-member programme's figures (contract section 5), shared by the store, the
//! metrics and `status` without tying them to each other.

/// The founding-member programme as the database sees it (contract section 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct FoundingStats {
    /// The sequence's MAXVALUE.
    pub capacity: i64,
    /// The highest number the sequence has handed out (0 before the first).
    pub position: i64,
    /// Tenants holding a number.
    pub assigned: i64,
    /// Reclaimed numbers waiting for a tenant.
    pub pooled: i64,
    /// Numbers whose tenant was deleted: never handed out again.
    pub retired: i64,
}

impl FoundingStats {
    // Clamped at 0: a figure that went negative (a number written by hand past the position,
    // a capacity lowered behind our back) would only mislead the dashboards and alerts.
    pub fn remaining(&self) -> i64 {
        (self.capacity - self.position + self.pooled).max(0)
    }

    /// Drawn by transactions that have not committed: in flight, or dead and not yet
    /// reclaimed (contract section 5).
    pub fn burned(&self) -> i64 {
        (self.position - self.assigned - self.pooled - self.retired).max(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_arithmetic() {
        let s = FoundingStats {
            capacity: 100,
            position: 10,
            assigned: 6,
            pooled: 1,
            retired: 1,
        };
        assert_eq!((s.remaining(), s.burned()), (91, 2));
        let odd = FoundingStats {
            capacity: 5,
            position: 6,
            assigned: 7,
            pooled: 0,
            retired: 0,
        };
        assert_eq!((odd.remaining(), odd.burned()), (0, 0), "never negative");
    }
}
