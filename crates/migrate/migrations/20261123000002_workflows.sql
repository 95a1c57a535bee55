-- The workflow registry: every registered version of every workflow definition.
--
-- Versions are immutable once written (lineq refuses to register a different definition under an
-- existing version), so an execution that names a workflow version always means the same steps.
-- `definition` is the WorkflowDefinition as JSON, without its version (the key holds that).

CREATE TABLE lineq.workflows (
    name        text NOT NULL,
    version     integer NOT NULL CHECK (version >= 1),
    definition  jsonb NOT NULL CHECK (jsonb_typeof(definition) = 'object'),
    description text,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- also serves "latest version of a name" (ORDER BY version DESC) and "all versions of a name"
    PRIMARY KEY (name, version)
);

COMMENT ON TABLE lineq.workflows IS
    'Registered workflow definitions; (name, version) is immutable once written.';
