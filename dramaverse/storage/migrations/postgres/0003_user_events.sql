-- The durable per-user event log behind live sync and resume. A library write locks the user's
-- head row first (so writers of one user run one after another, also across processes), then
-- appends its event numbered last_seq + 1 in the same transaction. The head row survives
-- pruning, so sequence numbers never restart or repeat, and a rolled-back write gives its number
-- back with everything else, so they never skip.
CREATE TABLE user_event_heads (
    user_id BIGINT PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    last_seq BIGINT NOT NULL
);
CREATE TABLE user_events (
    user_id BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    seq BIGINT NOT NULL,
    name TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, seq)
);
CREATE INDEX user_events_created_at ON user_events (created_at);
