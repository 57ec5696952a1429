-- The right edge of the stored tree below its stored level: the roots of the complete
-- subtrees of fewer than 16 leaves that end the leaves merkle_state.size covers, preceded
-- by that size (8 bytes, big-endian; then 32 bytes per root, largest first). Appends extend
-- the tree from it, so an event row deleted or damaged among the newest leaves does not
-- stop the log from growing (the integrity check names the damage). NULL until written:
-- the edge is then hashed from the leaves.
ALTER TABLE merkle_state ADD COLUMN edge BLOB;
