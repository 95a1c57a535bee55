-- Room on each page of a queue table for the row version a read writes (it sets vt and
-- read_ct): on the same page PostgreSQL logs only the bytes that changed, instead of the whole
-- message and a lock record. Queues created from now on get it from `ensure_queue`
-- (shared/src/queue.rs, QUEUE_FILLFACTOR); this sets it on the queues that exist already.
-- Existing rows stay where they are; pages fill to the new limit as messages come and go.
-- Setting fillfactor takes only a SHARE UPDATE EXCLUSIVE lock: workers and orchestrators of
-- the earlier version keep sending, reading and archiving while this runs.
DO $$
DECLARE
    q text;
BEGIN
    FOR q IN SELECT queue_name FROM pgmq.meta WHERE NOT is_partitioned LOOP
        EXECUTE format('ALTER TABLE pgmq.%I SET (fillfactor = 50)', 'q_' || q);
    END LOOP;
END
$$;
