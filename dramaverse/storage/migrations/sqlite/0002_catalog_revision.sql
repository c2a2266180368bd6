-- A counter bumped by every catalog import, so running servers notice and reload the catalog.
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('catalog_revision', 0);
