-- The outbox (issue 10): claiming delivery jobs and keeping the finished ones in check.

-- A claim takes the earliest due first, ties by id: with both in the index it reads
-- the first rows in order and stops, however many are due (a backlog of jobs queued
-- together shares one due time).
DROP INDEX deliveries_pending;
CREATE INDEX deliveries_pending ON deliveries (due_at, id) WHERE state = 'pending';

-- A claim of an email job with a group takes the pending email jobs of the same user
-- and group made within the digest window with it: one digest.
CREATE INDEX deliveries_digest ON deliveries (user_id, group_key, created_at)
    WHERE state = 'pending' AND transport = 'email' AND group_key IS NOT NULL;

-- Finished jobs are deleted after outbox.keep_finished; dead ones stay.
CREATE INDEX deliveries_finished ON deliveries (finished_at)
    WHERE state IN ('done', 'skipped');
