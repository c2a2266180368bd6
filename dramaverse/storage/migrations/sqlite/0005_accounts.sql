-- Accounts, roles and sessions (docs/auth.md). Users gain roles, a registration time and a token
-- cut-off: a token issued before tokens_valid_after (ms) is refused, which is how tokens that
-- carry no session id (issued before this migration) are revoked. Rows that existed before this
-- migration keep created_at NULL: when they registered was never recorded.
ALTER TABLE users ADD COLUMN is_admin INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN is_banned INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN created_at INTEGER;
ALTER TABLE users ADD COLUMN tokens_valid_after INTEGER NOT NULL DEFAULT 0;
-- Loading the cut-offs still in force at start reads only the users that have one.
CREATE INDEX IF NOT EXISTS users_tokens_valid_after ON users (tokens_valid_after)
    WHERE tokens_valid_after > 0;
CREATE INDEX IF NOT EXISTS users_created_at ON users (created_at) WHERE created_at IS NOT NULL;
-- One row per login or registration. id is random and unguessable; expires_at is when the
-- newest token of the session expires; ended_at is set once (logout, ended from another
-- device, a password change or ban ending it) and never cleared.
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    ended_at INTEGER,
    address TEXT NOT NULL,
    device TEXT NOT NULL,
    user_agent TEXT NOT NULL
) WITHOUT ROWID;
-- A user's sessions, newest first.
CREATE INDEX IF NOT EXISTS sessions_user ON sessions (user_id, created_at);
-- Revocations still in force (ended within a token lifetime), and pruning.
CREATE INDEX IF NOT EXISTS sessions_ended_at ON sessions (ended_at) WHERE ended_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS sessions_expires_at ON sessions (expires_at);
