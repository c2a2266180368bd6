-- Library writes as single statements. Each write used to be BEGIN, three statements and COMMIT:
-- five round trips, each a socket write and read through the asyncio bridge, which made up half
-- of a worker's CPU per write. As functions, a write is one statement in its own implicit
-- transaction: one round trip, same rules. The user's head row is still locked first (writers of
-- one user run one after another, across processes too), so sequence numbers stay gapless and
-- the review conflict rule has no race.

-- Lock the user's head row (creating it on the first write) and check the drama.
-- An unknown user fails the head row's foreign key (23503); an unknown drama raises P0002.
CREATE OR REPLACE FUNCTION dv_lock_user(p_user BIGINT, p_url TEXT) RETURNS VOID
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO user_event_heads (user_id, last_seq) VALUES (p_user, 0)
    ON CONFLICT (user_id) DO UPDATE SET last_seq = user_event_heads.last_seq;
    IF NOT EXISTS (SELECT 1 FROM dramas WHERE url = p_url) THEN
        RAISE EXCEPTION USING ERRCODE = 'P0002', MESSAGE = 'Drama not found: ' || p_url;
    END IF;
END $$;

-- Append an event with the user's next seq; the caller holds the head row's lock.
CREATE OR REPLACE FUNCTION dv_append_event(
    p_user BIGINT, p_name TEXT, p_payload TEXT, p_now BIGINT
) RETURNS BIGINT
LANGUAGE plpgsql AS $$
DECLARE
    v_seq BIGINT;
BEGIN
    UPDATE user_event_heads SET last_seq = last_seq + 1 WHERE user_id = p_user
    RETURNING last_seq INTO v_seq;
    INSERT INTO user_events (user_id, seq, name, payload, created_at)
    VALUES (p_user, v_seq, p_name, p_payload, p_now);
    RETURN v_seq;
END $$;

-- The event's seq, or NULL when nothing changed (no event, as the original server).
CREATE OR REPLACE FUNCTION dv_set_favorite(
    p_user BIGINT, p_url TEXT, p_favorite BOOLEAN, p_payload TEXT, p_now BIGINT
) RETURNS BIGINT
LANGUAGE plpgsql AS $$
DECLARE
    v_changed INTEGER;
BEGIN
    PERFORM dv_lock_user(p_user, p_url);
    IF p_favorite THEN
        INSERT INTO user_favorites (user_id, drama_url) VALUES (p_user, p_url)
        ON CONFLICT DO NOTHING;
    ELSE
        DELETE FROM user_favorites WHERE user_id = p_user AND drama_url = p_url;
    END IF;
    GET DIAGNOSTICS v_changed = ROW_COUNT;
    IF v_changed = 0 THEN
        RETURN NULL;
    END IF;
    RETURN dv_append_event(p_user, 'favorite_updated', p_payload, p_now);
END $$;

-- An empty status deletes (an event only if a row went); any other set is always announced.
CREATE OR REPLACE FUNCTION dv_set_status(
    p_user BIGINT, p_url TEXT, p_status TEXT, p_episode INTEGER, p_payload TEXT, p_now BIGINT
) RETURNS BIGINT
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM dv_lock_user(p_user, p_url);
    IF p_status = '' THEN
        DELETE FROM user_statuses WHERE user_id = p_user AND drama_url = p_url;
        IF NOT FOUND THEN
            RETURN NULL;
        END IF;
    ELSE
        INSERT INTO user_statuses (user_id, drama_url, status, current_episode)
        VALUES (p_user, p_url, p_status, p_episode)
        ON CONFLICT (user_id, drama_url) DO UPDATE
        SET status = excluded.status, current_episode = excluded.current_episode;
    END IF;
    RETURN dv_append_event(p_user, 'status_updated', p_payload, p_now);
END $$;

-- Save or delete one episode review. o_seq is NULL when nothing changed; o_conflict_* are set
-- (and nothing is written) when the stored review is newer than the client's and not forced.
CREATE OR REPLACE FUNCTION dv_save_review(
    p_user BIGINT, p_url TEXT, p_episode INTEGER, p_text TEXT, p_delete BOOLEAN,
    p_client_updated DOUBLE PRECISION, p_force BOOLEAN, p_now BIGINT,
    OUT o_seq BIGINT, OUT o_updated BIGINT, OUT o_conflict_text TEXT,
    OUT o_conflict_updated BIGINT
)
LANGUAGE plpgsql AS $$
DECLARE
    v_updated BIGINT;
    v_text TEXT;
BEGIN
    PERFORM dv_lock_user(p_user, p_url);
    IF p_delete THEN
        DELETE FROM user_episode_reviews
        WHERE user_id = p_user AND drama_url = p_url AND episode_number = p_episode;
        IF FOUND THEN
            o_seq := dv_append_event(
                p_user, 'episode_review_updated',
                json_build_object('dramaUrl', p_url, 'episodeNumber', p_episode, 'review', NULL)::TEXT,
                p_now
            );
        END IF;
        RETURN;
    END IF;
    SELECT updated_at, review_text INTO v_updated, v_text FROM user_episode_reviews
    WHERE user_id = p_user AND drama_url = p_url AND episode_number = p_episode;
    IF v_updated IS NOT NULL AND NOT p_force AND v_updated > p_client_updated THEN
        o_conflict_text := v_text;
        o_conflict_updated := v_updated;
        RETURN;
    END IF;
    -- Never move a review's clock backwards, even if the server clock does.
    o_updated := CASE WHEN v_updated IS NULL THEN p_now ELSE GREATEST(p_now, v_updated + 1) END;
    INSERT INTO user_episode_reviews (user_id, drama_url, episode_number, review_text, updated_at)
    VALUES (p_user, p_url, p_episode, p_text, o_updated)
    ON CONFLICT (user_id, drama_url, episode_number) DO UPDATE
    SET review_text = excluded.review_text, updated_at = excluded.updated_at;
    o_seq := dv_append_event(
        p_user, 'episode_review_updated',
        json_build_object(
            'dramaUrl', p_url, 'episodeNumber', p_episode,
            'review', json_build_object('text', p_text, 'updatedAt', o_updated)
        )::TEXT,
        p_now
    );
END $$;
