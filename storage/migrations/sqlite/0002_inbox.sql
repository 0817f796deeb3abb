-- The inbox (issue 10): notification states, preferences, dedupe keys, and the
-- outbox's delivery jobs, written in the transaction that stores the notifications.

-- seen: the user opened the list; archived: out of the inbox (listed only when asked).
-- What was read before counts as seen.
ALTER TABLE notifications ADD COLUMN seen INTEGER NOT NULL DEFAULT 0 CHECK (seen IN (0, 1));
ALTER TABLE notifications ADD COLUMN archived INTEGER NOT NULL DEFAULT 0
    CHECK (archived IN (0, 1));
ALTER TABLE notifications ADD COLUMN dedupe_key TEXT;
UPDATE notifications SET seen = 1 WHERE read = 1;

CREATE INDEX notifications_unseen ON notifications (user_id, id) WHERE seen = 0;

-- One JSON document per user; the store never parses it.
CREATE TABLE preferences (
    user_id    TEXT    NOT NULL PRIMARY KEY,
    doc        TEXT    NOT NULL,
    updated_at INTEGER NOT NULL
) WITHOUT ROWID;

-- A dedupe_key is a recipient's until expires_at: the primary key makes a repeat
-- within the window a conflict, and the upsert takes the key over only once it
-- expired.
CREATE TABLE notification_dedupe (
    user_id    TEXT    NOT NULL,
    dedupe_key TEXT    NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (user_id, dedupe_key)
) WITHOUT ROWID;

CREATE INDEX notification_dedupe_expires ON notification_dedupe (expires_at);

-- One job per recipient per transport. notification_id is null when the user
-- turned in_app off for the type (nothing stored, but push or email wanted).
CREATE TABLE deliveries (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id         TEXT    NOT NULL,
    transport       TEXT    NOT NULL CHECK (transport IN ('webpush', 'webhook', 'email')),
    notification_id INTEGER,
    type            TEXT    NOT NULL,
    data            TEXT    NOT NULL,
    actor           TEXT,
    group_key       TEXT,
    created_at      INTEGER NOT NULL,
    due_at          INTEGER NOT NULL,
    state           TEXT    NOT NULL DEFAULT 'pending',
    attempts        INTEGER NOT NULL DEFAULT 0,
    leased_until    INTEGER,
    last_error      TEXT,
    finished_at     INTEGER
);

CREATE INDEX deliveries_pending ON deliveries (due_at) WHERE state = 'pending';

CREATE INDEX deliveries_user ON deliveries (user_id, id);
