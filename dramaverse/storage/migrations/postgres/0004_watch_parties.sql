-- Watch parties, as in the SQLite backend. player_statuses backs the compatibility endpoints
-- /api/player/status: each row is one reported player status (the whole JSON object as text,
-- byte for byte), kept only for its user and room's newest few and only until it expires
-- (docs/player-status.md). room_snapshots holds the last snapshot of every live room, so rooms
-- survive a restart or a move to another process.
CREATE TABLE player_statuses (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    room_code TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
-- A room's recent statuses (GET by room), and the age cut-off of the pruner.
CREATE INDEX player_statuses_room ON player_statuses (room_code, created_at);
-- One user's statuses in one room, newest last (GET by user, and keeping only the newest few).
CREATE INDEX player_statuses_user_room ON player_statuses (user_id, room_code, id);
CREATE TABLE room_snapshots (
    room_code TEXT PRIMARY KEY,
    snapshot TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
-- Restoring recently active rooms, and pruning long-untouched ones.
CREATE INDEX room_snapshots_updated_at ON room_snapshots (updated_at);
