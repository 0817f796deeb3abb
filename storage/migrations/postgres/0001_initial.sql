-- Initial schema (PostgreSQL). Ids and room names use COLLATE "C": bytewise
-- order, the same as Python's str sort and SQLite's, whatever the database's
-- default collation; it also keeps "room >= 'ns:' AND room < 'ns;'" a plain
-- index range.

-- One row per room: the seq counter, bumped in the transaction that inserts the
-- message, and the epoch, fixed when the row is created. Appends update every
-- row often: leave room on the page for HOT updates.
CREATE TABLE rooms (
    room     text COLLATE "C" NOT NULL PRIMARY KEY,
    last_seq bigint NOT NULL DEFAULT 0,
    epoch    text   NOT NULL
) WITH (fillfactor = 50);

CREATE TABLE messages (
    room      text COLLATE "C" NOT NULL,
    seq       bigint NOT NULL,
    user_id   text COLLATE "C",
    body      text   NOT NULL,
    ts        bigint NOT NULL,
    client_id text COLLATE "C",
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
    room    text COLLATE "C" NOT NULL,
    user_id text COLLATE "C" NOT NULL,
    seq     bigint NOT NULL,
    PRIMARY KEY (room, user_id)
);

CREATE TABLE members (
    room       text COLLATE "C" NOT NULL,
    user_id    text COLLATE "C" NOT NULL,
    created_at bigint NOT NULL,
    PRIMARY KEY (room, user_id)
);

CREATE TABLE follows (
    target     text COLLATE "C" NOT NULL,
    follower   text COLLATE "C" NOT NULL,
    created_at bigint NOT NULL,
    PRIMARY KEY (target, follower)
);

CREATE INDEX follows_follower ON follows (follower, target);

CREATE TABLE notifications (
    id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id text COLLATE "C" NOT NULL,
    type    text    NOT NULL,
    data    text    NOT NULL,
    actor   text COLLATE "C",
    ts      bigint  NOT NULL,
    read    boolean NOT NULL DEFAULT false
);

CREATE INDEX notifications_user ON notifications (user_id, id);

CREATE INDEX notifications_unread ON notifications (user_id, id) WHERE NOT read;
