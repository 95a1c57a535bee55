-- Workers name the service their spans belong to, and say whether they export them: an
-- orchestrator exports the spans of a worker that does not (docs/sql-api.md, Worker protocol).

ALTER TABLE lineq.workers
    ADD COLUMN service_name text,
    ADD COLUMN exports_spans boolean NOT NULL DEFAULT false;
UPDATE lineq.workers SET service_name = 'lineq-worker-' || language, exports_spans = language = 'rust';

-- Registers a worker and returns the secret token its later calls present. A worker id whose
-- registration is still alive (heartbeat within p_takeover_after_secs, not stopped) cannot be
-- taken over: that would let one worker silence another and have its steps released.
-- p_service_name names the service of its spans (NULL: lineq-worker-<language>);
-- p_exports_spans says whether it exports them itself (NULL: only lineq's Rust worker does).
-- Every argument is given: the 8-argument form (below) stays for workers of the release before,
-- and an overload with defaults would make its calls ambiguous.
CREATE FUNCTION lineq.worker_register(
    p_worker_id text,
    p_namespaces text[],
    p_handlers text[],
    p_host text,
    p_pid integer,
    p_version text,
    p_language text,
    p_takeover_after_secs double precision,
    p_service_name text,
    p_exports_spans boolean
) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_token text := encode(uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid()), 'hex');
    v_ns text;
    v_h text;
BEGIN
    IF p_worker_id IS NULL OR length(p_worker_id) NOT BETWEEN 1 AND 128
       OR p_worker_id ~ '[[:cntrl:]]' THEN
        PERFORM lineq.invalid('worker_id', 'a worker id is 1 to 128 characters without control characters');
    END IF;
    IF p_namespaces IS NULL OR cardinality(p_namespaces) NOT BETWEEN 1 AND 64 THEN
        PERFORM lineq.invalid('namespaces', 'a worker serves 1 to 64 namespaces');
    END IF;
    FOREACH v_ns IN ARRAY p_namespaces LOOP
        IF v_ns IS NULL OR v_ns !~ '^[a-z][a-z0-9_]{0,31}$' THEN
            PERFORM lineq.invalid('namespaces', format(
                'a namespace is 1 to 32 characters of a-z, 0-9 and _, starting with a letter (got %s)',
                coalesce(quote_literal(left(v_ns, 80)), 'NULL')));
        END IF;
    END LOOP;
    IF p_handlers IS NULL OR cardinality(p_handlers) > 10000 THEN
        PERFORM lineq.invalid('handlers', 'at most 10000 handlers');
    END IF;
    FOREACH v_h IN ARRAY p_handlers LOOP
        IF v_h IS NULL OR v_h !~ '^[A-Za-z0-9_.:-]{1,128}$' THEN
            PERFORM lineq.invalid('handlers', format(
                'a handler is 1 to 128 characters of letters, digits, ''_'', ''.'', '':'' and ''-'' (got %s)',
                coalesce(quote_literal(left(v_h, 80)), 'NULL')));
        END IF;
    END LOOP;
    IF length(p_host) > 255 OR p_host ~ '[[:cntrl:]]' THEN
        PERFORM lineq.invalid('host', 'a host is at most 255 characters without control characters');
    END IF;
    IF length(p_version) > 64 OR p_version ~ '[[:cntrl:]]' THEN
        PERFORM lineq.invalid('version', 'a version is at most 64 characters without control characters');
    END IF;
    IF p_language IS NULL OR p_language !~ '^[a-z0-9_.+-]{1,32}$' THEN
        PERFORM lineq.invalid('language', 'a language is 1 to 32 characters of a-z, 0-9, ''_'', ''.'', ''+'' and ''-''');
    END IF;

    IF length(p_service_name) NOT BETWEEN 1 AND 128 OR p_service_name ~ '[[:cntrl:]]' THEN
        PERFORM lineq.invalid('service_name', 'a service name is 1 to 128 characters without control characters');
    END IF;

    INSERT INTO lineq.workers AS w (worker_id, host, pid, namespaces, version, handlers, language,
                                    token_hash, service_name, exports_spans)
    VALUES (p_worker_id, coalesce(p_host, ''), coalesce(p_pid, 0), p_namespaces,
            coalesce(p_version, ''), p_handlers, p_language,
            sha256(convert_to(v_token, 'UTF8')),
            coalesce(p_service_name, 'lineq-worker-' || p_language),
            -- lineq's Rust worker exports its own spans unless it says otherwise
            coalesce(p_exports_spans, p_language = 'rust'))
    ON CONFLICT (worker_id) DO UPDATE
        SET host = EXCLUDED.host, pid = EXCLUDED.pid, namespaces = EXCLUDED.namespaces,
            version = EXCLUDED.version, handlers = EXCLUDED.handlers,
            language = EXCLUDED.language, token_hash = EXCLUDED.token_hash,
            service_name = EXCLUDED.service_name, exports_spans = EXCLUDED.exports_spans,
            started_at = clock_timestamp(), last_heartbeat_at = clock_timestamp(),
            stopped_at = NULL, released_at = NULL
        WHERE w.stopped_at IS NOT NULL OR w.released_at IS NOT NULL
           OR w.last_heartbeat_at < clock_timestamp() - make_interval(secs => p_takeover_after_secs);
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'LQ006',
            MESSAGE = format('worker id %s is registered and alive; a worker cannot take over a live registration (choose another id, or wait until it has been silent for %s s)',
                             quote_literal(p_worker_id), p_takeover_after_secs),
            DETAIL = 'what=worker';
    END IF;
    RETURN v_token;
END
$$;
REVOKE ALL ON FUNCTION lineq.worker_register(text, text[], text[], text, integer, text, text, double precision, text, boolean) FROM PUBLIC;

COMMENT ON FUNCTION lineq.worker_register(text, text[], text[], text, integer, text, text, double precision, text, boolean) IS
    'Registers a worker; returns the secret token its other calls present (docs/sql-api.md).';

-- The 8-argument form: the 10-argument one with the defaults for what it does not name.
CREATE OR REPLACE FUNCTION lineq.worker_register(
    p_worker_id text,
    p_namespaces text[],
    p_handlers text[],
    p_host text DEFAULT NULL,
    p_pid integer DEFAULT NULL,
    p_version text DEFAULT NULL,
    p_language text DEFAULT 'rust',
    p_takeover_after_secs double precision DEFAULT 30
) RETURNS text
LANGUAGE sql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT lineq.worker_register(p_worker_id, p_namespaces, p_handlers, p_host, p_pid, p_version,
                                 coalesce(p_language, 'rust'), coalesce(p_takeover_after_secs, 30),
                                 NULL::text, NULL::boolean)
$$;
