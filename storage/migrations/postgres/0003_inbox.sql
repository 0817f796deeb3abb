-- The inbox (issue 10): notification states, preferences, dedupe keys, and the
-- outbox's delivery jobs, written in the transaction that stores the notifications.

-- seen: the user opened the list; archived: out of the inbox (listed only when asked).
-- What was read before counts as seen.
ALTER TABLE notifications
    ADD COLUMN seen       boolean NOT NULL DEFAULT false,
    ADD COLUMN archived   boolean NOT NULL DEFAULT false,
    ADD COLUMN dedupe_key text;
UPDATE notifications SET seen = true WHERE read;

CREATE INDEX notifications_unseen ON notifications (user_id, id) WHERE NOT seen;

-- One JSON document per user; the store never parses it.
CREATE TABLE preferences (
    user_id    text COLLATE "C" NOT NULL PRIMARY KEY,
    doc        text   NOT NULL,
    updated_at bigint NOT NULL
);

-- A dedupe_key is a recipient's until expires_at: the primary key makes a repeat
-- within the window a conflict (a concurrent writer waits for the first to commit),
-- and the upsert takes the key over only once it expired.
CREATE TABLE notification_dedupe (
    user_id    text COLLATE "C" NOT NULL,
    dedupe_key text COLLATE "C" NOT NULL,
    expires_at bigint NOT NULL,
    PRIMARY KEY (user_id, dedupe_key)
);

CREATE INDEX notification_dedupe_expires ON notification_dedupe (expires_at);

-- One job per recipient per transport. notification_id is null when the user
-- turned in_app off for the type (nothing stored, but push or email wanted).
CREATE TABLE deliveries (
    id              bigserial PRIMARY KEY,
    user_id         text COLLATE "C" NOT NULL,
    transport       text   NOT NULL CHECK (transport IN ('webpush', 'webhook', 'email')),
    notification_id bigint,
    type            text   NOT NULL,
    data            text   NOT NULL,
    actor           text COLLATE "C",
    group_key       text,
    created_at      bigint NOT NULL,
    due_at          bigint NOT NULL,
    state           text   NOT NULL DEFAULT 'pending',
    attempts        integer NOT NULL DEFAULT 0,
    leased_until    bigint,
    last_error      text,
    finished_at     bigint
);

CREATE INDEX deliveries_pending ON deliveries (due_at) WHERE state = 'pending';

CREATE INDEX deliveries_user ON deliveries (user_id, id);
