-- A counter bumped by every catalog import that changes something, so running servers notice
-- and reload the catalog. Imports lock this row first, which also serialises them.
CREATE TABLE meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL);
INSERT INTO meta (key, value) VALUES ('catalog_revision', 0);
