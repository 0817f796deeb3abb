-- Web Push subscriptions (realtime/outbound/webpush.py): one row per browser
-- push endpoint, owned by the user who registered it last. created_at is the time
-- of the latest registration: a user keeps their newest webpush.max_subscriptions.
CREATE TABLE push_subscriptions (
    endpoint   text COLLATE "C" NOT NULL PRIMARY KEY,
    user_id    text COLLATE "C" NOT NULL,
    p256dh     text   NOT NULL,
    auth       text   NOT NULL,
    created_at bigint NOT NULL
);

CREATE INDEX push_subscriptions_user ON push_subscriptions (user_id, created_at);
