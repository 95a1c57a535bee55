-- The SQL interface's foundations: its version, ids, trace context and errors.
--
-- lineq's interface is a set of functions in schema lineq (docs/sql-api.md); the Rust client,
-- worker and orchestrator call them, and so can any language with a PostgreSQL driver. Every
-- function pins its search_path, so no object a caller creates elsewhere can stand in for the
-- ones it names.
--
-- Errors have SQLSTATEs of class LQ (lineq's own):
--   LQ001 invalid input (the field is in the error's COLUMN, the message names the limit)
--   LQ002 not found      LQ003 version conflict      LQ004 invalid state
--   LQ005 unknown namespace                           LQ006 not permitted
-- Their DETAIL carries key=value pairs (what=…; id=…; expected=…; actual=…; namespace=…).

-- Which interface this database speaks: the major version of docs/sql-api.md.
CREATE FUNCTION lineq.api_version() RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT 1 $$;

-- A UUIDv7 (RFC 9562): 48 bits of Unix milliseconds, 12 bits that count up within a
-- millisecond, then random bits. Ids made one after the other in a session sort in that order
-- (RFC 9562's method 1, a counter), as those of lineq's Rust code do: siblings in a lineage tree
-- are ordered by id.
CREATE FUNCTION lineq.uuid_v7() RETURNS uuid
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    ms bigint := floor(extract(epoch FROM clock_timestamp()) * 1000);
    last text := current_setting('lineq.uuid_v7_last', true);
    last_ms bigint;
    seq integer;
BEGIN
    IF last IS NOT NULL AND last <> '' THEN
        last_ms := split_part(last, ':', 1)::bigint;
        seq := split_part(last, ':', 2)::integer;
    END IF;
    IF last_ms IS NOT NULL AND ms <= last_ms THEN
        -- Same millisecond (or the clock went back): count up; past 4095, borrow the next one.
        ms := last_ms;
        seq := seq + 1;
        IF seq > 4095 THEN
            ms := ms + 1;
            seq := 0;
        END IF;
    ELSE
        -- A new millisecond starts the counter at a random point of its lower half.
        seq := floor(random() * 2048)::integer;
    END IF;
    PERFORM set_config('lineq.uuid_v7_last', ms || ':' || seq, false);
    RETURN encode(substring(int8send(ms) FROM 3)
                  || substring(int4send(28672 | seq) FROM 3)
                  || substring(uuid_send(gen_random_uuid()) FROM 9), 'hex')::uuid;
END
$$;

-- The trace id of a root execution: its correlation id as 32 hex digits (never all zero).
CREATE FUNCTION lineq.trace_id(p_correlation_id uuid) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN p_correlation_id = '00000000-0000-0000-0000-000000000000'
                THEN '00000000000000000000000000000001'
                ELSE replace(p_correlation_id::text, '-', '') END
$$;

-- The span id of the span that wrote an event: the event id's last 8 bytes (never all zero).
CREATE FUNCTION lineq.span_id(p_event_id uuid) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN right(replace(p_event_id::text, '-', ''), 16) = '0000000000000000'
                THEN '0000000000000001'
                ELSE right(replace(p_event_id::text, '-', ''), 16) END
$$;

-- The W3C traceparent of the span that wrote an event, in the trace of a root's correlation id.
CREATE FUNCTION lineq.traceparent(p_trace_correlation_id uuid, p_event_id uuid) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT '00-' || lineq.trace_id(p_trace_correlation_id) || '-' || lineq.span_id(p_event_id) || '-01'
$$;

-- Raises LQ001 for a field: "<field>: <reason>", with the field in COLUMN.
CREATE FUNCTION lineq.invalid(p_field text, p_reason text) RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = 'LQ001', MESSAGE = p_field || ': ' || p_reason,
                          COLUMN = p_field;
END
$$;

COMMENT ON FUNCTION lineq.api_version() IS
    'The version of lineq''s SQL interface this database speaks (docs/sql-api.md).';
COMMENT ON FUNCTION lineq.uuid_v7() IS 'A time-ordered UUIDv7, as lineq makes its ids.';
COMMENT ON FUNCTION lineq.traceparent(uuid, uuid) IS
    'The W3C traceparent of the span that wrote an event: trace = the root''s correlation id, span = the event id''s last 8 bytes.';
