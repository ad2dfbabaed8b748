-- Brings a schema-version-3 store to version 4 (`embedstore store upgrade`): the table of zs runs'
-- report embeddings. Runs extracted before hold none (a new zs run has them; see docs/store.md).
-- internal
CREATE TABLE IF NOT EXISTS report_embeddings (
    run_id VARCHAR NOT NULL,
    sample_id BIGINT NOT NULL,
    embedding FLOAT[] NOT NULL,
    truncated BOOLEAN NOT NULL
);
UPDATE meta SET value = '4' WHERE key = 'schema_version';
