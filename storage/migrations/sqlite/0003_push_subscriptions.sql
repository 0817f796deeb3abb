-- Web Push subscriptions (realtime/outbound/webpush.py): one row per browser
-- push endpoint, owned by the user who registered it last. created_at is the time
-- of the latest registration: a user keeps their newest webpush.max_subscriptions.
CREATE TABLE push_subscriptions (
    endpoint   TEXT    NOT NULL PRIMARY KEY,
    user_id    TEXT    NOT NULL,
    p256dh     TEXT    NOT NULL,
    auth       TEXT    NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE INDEX push_subscriptions_user ON push_subscriptions (user_id, created_at);
