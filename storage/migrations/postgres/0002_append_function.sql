-- A batch of appends in one statement: the client's cost per batch is three
-- round trips (BEGIN, this, COMMIT) instead of seven (room rows, locks, client_id
-- lookup, seq update and insert each on their own), which was most of what a
-- small batch cost.
--
-- room_names/room_epochs: the batch's distinct rooms, sorted, with an epoch for
-- rows that do not exist yet. The message arrays are aligned, in append order.
-- Returns one row per message, in order: its seq, and for a repeat of a stored
-- client_id (earlier, or earlier in this batch) the first message's user, body
-- and ts with duplicate = true; new messages get ts_in and a null body.
CREATE FUNCTION realtime_append(
    room_names    text[],
    room_epochs   text[],
    rooms_in      text[],
    users_in      text[],
    bodies_in     text[],
    client_ids_in text[],
    ts_in         bigint
) RETURNS TABLE (ord bigint, seq bigint, user_id text, body text, ts bigint, duplicate boolean)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    INSERT INTO rooms AS r (room, last_seq, epoch)
    SELECT n.room, 0, n.epoch FROM unnest(room_names, room_epochs) AS n(room, epoch)
    ORDER BY n.room COLLATE "C"
    ON CONFLICT (room) DO NOTHING;
    -- In one order for every writer, so that batches of several instances that
    -- share rooms wait for each other instead of deadlocking. Held until commit:
    -- nobody else numbers these rooms meanwhile, so what is read below is final.
    PERFORM 1 FROM rooms AS r WHERE r.room = ANY(room_names) ORDER BY r.room FOR UPDATE;
    RETURN QUERY
    WITH input AS (
        SELECT i.room COLLATE "C" AS room, i.user_id COLLATE "C" AS user_id, i.body,
               i.client_id COLLATE "C" AS client_id, i.ord
        FROM unnest(rooms_in, users_in, bodies_in, client_ids_in)
            WITH ORDINALITY AS i(room, user_id, body, client_id, ord)
    ),
    stored AS (
        SELECT i.ord, m.seq, m.user_id, m.body, m.ts
        FROM input AS i
        JOIN messages AS m ON m.room = i.room AND coalesce(m.user_id, '') = coalesce(i.user_id, '')
            AND m.client_id = i.client_id
        WHERE i.client_id IS NOT NULL
    ),
    fresh AS (
        -- Not stored before. Equal keys in this batch: the first is new, the rest
        -- repeat it (a null client_id is a key of its own).
        SELECT i.*, min(i.ord) OVER (
            PARTITION BY i.room, coalesce(i.user_id, ''), i.client_id,
                CASE WHEN i.client_id IS NULL THEN i.ord END
        ) AS first_ord
        FROM input AS i
        WHERE NOT EXISTS (SELECT 1 FROM stored AS s WHERE s.ord = i.ord)
    ),
    numbered AS (
        SELECT f.ord, f.room, f.user_id, f.body, f.client_id,
               r.last_seq + row_number() OVER (PARTITION BY f.room ORDER BY f.ord) AS seq
        FROM fresh AS f JOIN rooms AS r ON r.room = f.room
        WHERE f.ord = f.first_ord
    ),
    bumped AS (
        UPDATE rooms AS r SET last_seq = top.seq
        FROM (SELECT n.room, max(n.seq) AS seq FROM numbered AS n GROUP BY n.room) AS top
        WHERE r.room = top.room
    ),
    inserted AS (
        INSERT INTO messages (room, seq, user_id, body, ts, client_id)
        SELECT n.room, n.seq, n.user_id, n.body, ts_in, n.client_id FROM numbered AS n
    )
    SELECT i.ord,
           coalesce(s.seq, n.seq, first.seq),
           coalesce(s.user_id, first.user_id),
           coalesce(s.body, first.body),
           CASE WHEN s.ord IS NOT NULL THEN s.ts ELSE ts_in END,
           n.ord IS NULL
    FROM input AS i
    LEFT JOIN stored AS s ON s.ord = i.ord
    LEFT JOIN numbered AS n ON n.ord = i.ord
    LEFT JOIN fresh AS f ON f.ord = i.ord AND n.ord IS NULL
    LEFT JOIN numbered AS first ON first.ord = f.first_ord
    ORDER BY i.ord;
END;
$$;
