-- The original server's tables, with the same names and columns, so an existing dramas.db made
-- by it can be adopted (its rows, including bcrypt $2a$ password hashes, keep working).
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    username TEXT UNIQUE,
    password TEXT
);
CREATE TABLE IF NOT EXISTS dramas (url TEXT PRIMARY KEY, title TEXT, data TEXT);
CREATE TABLE IF NOT EXISTS user_favorites (
    user_id INTEGER,
    drama_url TEXT,
    PRIMARY KEY (user_id, drama_url),
    FOREIGN KEY (user_id) REFERENCES users(id) ON DELETE CASCADE,
    FOREIGN KEY (drama_url) REFERENCES dramas(url) ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS user_statuses (
    user_id INTEGER,
    drama_url TEXT,
    status TEXT,
    currentEpisode INTEGER,
    PRIMARY KEY (user_id, drama_url),
    FOREIGN KEY (user_id) REFERENCES users(id) ON DELETE CASCADE,
    FOREIGN KEY (drama_url) REFERENCES dramas(url) ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS user_episode_reviews (
    user_id INTEGER,
    drama_url TEXT,
    episode_number INTEGER,
    review_text TEXT,
    updated_at INTEGER,
    PRIMARY KEY (user_id, drama_url, episode_number),
    FOREIGN KEY (user_id) REFERENCES users(id) ON DELETE CASCADE,
    FOREIGN KEY (drama_url) REFERENCES dramas(url) ON DELETE CASCADE
);
