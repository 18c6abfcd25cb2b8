//! Where cells go. The initial plan cuts the world into vertical stripes (by
//! X), one contiguous stripe per shard, so that shard borders are few and
//! straight and most hand-offs stay inside a shard.

use tessera_proto::{CellId, ShardId};

/// Assigns every cell to one of `shards`, in contiguous X stripes of as
/// equal a size as the columns allow.
pub fn stripes(cells: &[CellId], shards: &[ShardId]) -> Vec<(CellId, ShardId)> {
    if shards.is_empty() {
        return Vec::new();
    }
    let mut columns: Vec<i32> = cells.iter().map(|c| c.x).collect();
    columns.sort_unstable();
    columns.dedup();
    let per = columns.len().div_ceil(shards.len()).max(1);
    let mut plan: Vec<(CellId, ShardId)> = cells
        .iter()
        .map(|c| {
            let col = columns.binary_search(&c.x).unwrap_or(0);
            let idx = (col / per).min(shards.len() - 1);
            (*c, shards[idx].clone())
        })
        .collect();
    plan.sort_by_key(|(c, _)| *c);
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_shards_split_four_columns_in_half() {
        let cells: Vec<_> = (-2..2)
            .flat_map(|x| (-2..2).map(move |z| CellId::new(x, z)))
            .collect();
        let shards = vec![ShardId::new("shard-1"), ShardId::new("shard-2")];
        let plan = stripes(&cells, &shards);
        assert_eq!(plan.len(), 16);
        for (c, s) in plan {
            let expect = if c.x < 0 { "shard-1" } else { "shard-2" };
            assert_eq!(s.0, expect, "{c}");
        }
    }

    #[test]
    fn more_shards_than_columns_uses_the_first_ones() {
        let cells = vec![CellId::new(0, 0), CellId::new(0, 1)];
        let shards: Vec<_> = (0..3).map(|i| ShardId::new(format!("s{i}"))).collect();
        let plan = stripes(&cells, &shards);
        assert!(plan.iter().all(|(_, s)| s.0 == "s0"));
        assert!(stripes(&cells, &[]).is_empty());
    }
}
