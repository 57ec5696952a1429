-- The audit log's Merkle tree, stored as it grows: node (level, idx) is the root of the
-- complete subtree over leaves idx * 2^level .. (idx + 1) * 2^level - 1, for level >= 1 (the
-- leaves are audit_events.leaf_hash). Written in the transaction that appends the leaves, so
-- any proof is O(log n) reads. merkle_state.size: the leaves the stored nodes cover.
CREATE TABLE merkle_nodes (
    level INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    hash BLOB NOT NULL,
    PRIMARY KEY (level, idx)
) WITHOUT ROWID;
CREATE TABLE merkle_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    size INTEGER NOT NULL
);
INSERT INTO merkle_state (id, size) VALUES (1, 0);
