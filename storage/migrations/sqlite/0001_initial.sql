-- Initial schema (SQLite). Ids and room names compare bytewise (BINARY), the
-- same order as Python's str sort, which the PostgreSQL schema matches with
-- COLLATE "C".

-- One row per room: the seq counter, bumped in the transaction that inserts the
-- message, and the epoch, fixed when the row is created.
CREATE TABLE rooms (
    room     TEXT    NOT NULL PRIMARY KEY,
    last_seq INTEGER NOT NULL DEFAULT 0,
    epoch    TEXT    NOT NULL
) WITHOUT ROWID;

-- Bodies can be large, so messages keep a rowid table (WITHOUT ROWID suits
-- small rows only).
CREATE TABLE messages (
    room      TEXT    NOT NULL,
    seq       INTEGER NOT NULL,
    user_id   TEXT,
    body      TEXT    NOT NULL,
    ts        INTEGER NOT NULL,
    client_id TEXT,
    PRIMARY KEY (room, seq)
);

-- Idempotency: one message per (room, sender, client_id). System messages (no
-- user) are keyed by the empty string, which is not a valid user id.
CREATE UNIQUE INDEX messages_client_id
    ON messages (room, coalesce(user_id, ''), client_id)
    WHERE client_id IS NOT NULL;

-- Retention by age.
CREATE INDEX messages_ts ON messages (ts);

CREATE TABLE reads (
    room    TEXT    NOT NULL,
    user_id TEXT    NOT NULL,
    seq     INTEGER NOT NULL,
    PRIMARY KEY (room, user_id)
) WITHOUT ROWID;

CREATE TABLE members (
    room       TEXT    NOT NULL,
    user_id    TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (room, user_id)
) WITHOUT ROWID;

CREATE TABLE follows (
    target     TEXT    NOT NULL,
    follower   TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (target, follower)
) WITHOUT ROWID;

CREATE INDEX follows_follower ON follows (follower, target);

-- AUTOINCREMENT: ids are never reused, even after the newest rows are deleted.
CREATE TABLE notifications (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT    NOT NULL,
    type    TEXT    NOT NULL,
    data    TEXT    NOT NULL,
    actor   TEXT,
    ts      INTEGER NOT NULL,
    read    INTEGER NOT NULL DEFAULT 0 CHECK (read IN (0, 1))
);

CREATE INDEX notifications_user ON notifications (user_id, id);

CREATE INDEX notifications_unread ON notifications (user_id, id) WHERE read = 0;
