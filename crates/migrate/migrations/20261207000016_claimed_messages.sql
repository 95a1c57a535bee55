-- The messages a claim took, as the claim passes them between its statements (worker_claim
-- itself is in migration 000019).

-- A message a claim took: its mark, its body, and why it cannot run (NULL: it can).
CREATE TYPE lineq._claimed AS (
    msg_id bigint,
    delivery integer,
    enqueued_at timestamptz,
    event_id uuid,
    message jsonb,
    bytes bigint,
    problem text
);
