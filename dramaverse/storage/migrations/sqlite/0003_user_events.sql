-- The durable per-user event log behind live sync and resume. A library write appends its event
-- in the same transaction, numbered from user_event_heads: the head row survives pruning, so
-- sequence numbers never restart or repeat, and writes are serialised so they never skip.
CREATE TABLE IF NOT EXISTS user_event_heads (
    user_id INTEGER PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
    last_seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS user_events (
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    name TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (user_id, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS user_events_created_at ON user_events (created_at);
