-- Creates every table and view of the store (docs/store.md, "Schema"). Idempotent.
-- internal
CREATE TABLE IF NOT EXISTS meta (
    key VARCHAR PRIMARY KEY,
    value VARCHAR NOT NULL
);
CREATE SEQUENCE IF NOT EXISTS sample_id_seq START 1;
CREATE TABLE IF NOT EXISTS datasets (
    dataset_id VARCHAR PRIMARY KEY,
    name VARCHAR NOT NULL UNIQUE,
    format VARCHAR NOT NULL,
    source VARCHAR NOT NULL,
    manifest_sha256 VARCHAR NOT NULL,
    n_samples BIGINT NOT NULL,
    split_method VARCHAR,
    split_seed INTEGER,
    skipped JSON,
    -- ingest's checks of the data: identical images and derived No Finding counts (embedstore/ingest.py)
    checks JSON,
    created_at TIMESTAMP NOT NULL,
    -- how labels were read: label set, uncertain policy, reader policy, mappings (embedstore/datasets)
    options JSON
);
CREATE TABLE IF NOT EXISTS samples (
    dataset_id VARCHAR NOT NULL,
    sample_id BIGINT NOT NULL,
    uid VARCHAR,
    filename VARCHAR NOT NULL,
    path VARCHAR NOT NULL,
    split VARCHAR,
    report VARCHAR,
    projection VARCHAR,
    image_sha256 VARCHAR,
    -- the patient (no split divides one); NULL where the dataset names none
    patient VARCHAR
);
CREATE TABLE IF NOT EXISTS labels (
    dataset_id VARCHAR NOT NULL,
    sample_id BIGINT NOT NULL,
    label VARCHAR NOT NULL,
    -- raw: the value exactly as read (1, 0, -1, NULL for blank)
    value TINYINT,
    -- derived: what analyses use as the target, by the dataset's uncertain policy (value 1; -1 too under
    -- `ones`), and the normal label for a sample with no positive finding; NULL: left out (`ignore`)
    positive BOOLEAN
);
CREATE TABLE IF NOT EXISTS label_names (
    label VARCHAR PRIMARY KEY,
    position INTEGER NOT NULL,
    domain VARCHAR NOT NULL,
    -- the CheXpert label this one corresponds to (NIH Effusion: Pleural Effusion), NULL if none
    chexpert VARCHAR
);
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY,
    mode VARCHAR NOT NULL,
    protocol VARCHAR NOT NULL,
    model_id VARCHAR NOT NULL,
    model_sha256 VARCHAR,
    dataset_id VARCHAR NOT NULL,
    prompt_set VARCHAR,
    config JSON,
    status VARCHAR NOT NULL,
    started_at TIMESTAMP,
    finished_at TIMESTAMP,
    train_seconds DOUBLE,
    extract_seconds DOUBLE,
    device VARCHAR,
    versions JSON,
    embedding_dim INTEGER
);
CREATE TABLE IF NOT EXISTS image_embeddings (
    run_id VARCHAR NOT NULL,
    sample_id BIGINT NOT NULL,
    embedding FLOAT[] NOT NULL
);
CREATE TABLE IF NOT EXISTS text_embeddings (
    run_id VARCHAR NOT NULL,
    label VARCHAR NOT NULL,
    prompt VARCHAR NOT NULL,
    embedding FLOAT[] NOT NULL
);
-- A zs run's embedding of each sample's report (samples with report text only), by the run's text
-- tower; `truncated`: the report had more tokens than the tower's context length and was cut
CREATE TABLE IF NOT EXISTS report_embeddings (
    run_id VARCHAR NOT NULL,
    sample_id BIGINT NOT NULL,
    embedding FLOAT[] NOT NULL,
    truncated BOOLEAN NOT NULL
);
CREATE TABLE IF NOT EXISTS scores (
    run_id VARCHAR NOT NULL,
    sample_id BIGINT NOT NULL,
    label VARCHAR NOT NULL,
    logit DOUBLE NOT NULL
);
CREATE TABLE IF NOT EXISTS metrics (
    run_id VARCHAR NOT NULL,
    protocol VARCHAR NOT NULL,
    split VARCHAR,
    metric VARCHAR NOT NULL,
    label VARCHAR,
    value DOUBLE,
    ci_low DOUBLE,
    ci_high DOUBLE,
    n_resamples_skipped INTEGER,
    params JSON,
    created_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS gradcam (
    run_id VARCHAR NOT NULL,
    sample_id BIGINT NOT NULL,
    label VARCHAR NOT NULL,
    method VARCHAR NOT NULL,
    layer VARCHAR NOT NULL,
    pointing_hit BOOLEAN,
    energy_inside DOUBLE,
    iou_top DOUBLE,
    area_share DOUBLE,
    deletion_auc DOUBLE,
    insertion_auc DOUBLE,
    created_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS manifest (
    path VARCHAR PRIMARY KEY,
    kind VARCHAR NOT NULL,
    run_id VARCHAR,
    table_name VARCHAR,
    sha256 VARCHAR NOT NULL,
    bytes BIGINT NOT NULL,
    n_rows BIGINT,
    created_at TIMESTAMP NOT NULL
);
-- One row per sample: the raw values per CheXpert label, and `positives`, its derived positive labels.
CREATE OR REPLACE VIEW labels_wide AS
SELECT dataset_id, sample_id,
       max(value) FILTER (WHERE label = 'Enlarged Cardiomediastinum') AS "Enlarged Cardiomediastinum",
       max(value) FILTER (WHERE label = 'Cardiomegaly') AS "Cardiomegaly",
       max(value) FILTER (WHERE label = 'Lung Opacity') AS "Lung Opacity",
       max(value) FILTER (WHERE label = 'Lung Lesion') AS "Lung Lesion",
       max(value) FILTER (WHERE label = 'Edema') AS "Edema",
       max(value) FILTER (WHERE label = 'Consolidation') AS "Consolidation",
       max(value) FILTER (WHERE label = 'Pneumonia') AS "Pneumonia",
       max(value) FILTER (WHERE label = 'Atelectasis') AS "Atelectasis",
       max(value) FILTER (WHERE label = 'Pneumothorax') AS "Pneumothorax",
       max(value) FILTER (WHERE label = 'Pleural Effusion') AS "Pleural Effusion",
       max(value) FILTER (WHERE label = 'Pleural Other') AS "Pleural Other",
       max(value) FILTER (WHERE label = 'Fracture') AS "Fracture",
       max(value) FILTER (WHERE label = 'Support Devices') AS "Support Devices",
       max(value) FILTER (WHERE label = 'No Finding') AS "No Finding",
       list(label ORDER BY label) FILTER (WHERE positive) AS positives,
       -- every label of any label set (NIH, VinDr, a manifest's own) -> its raw value
       map(list(label ORDER BY label), list(value ORDER BY label)) AS label_values
FROM labels
GROUP BY dataset_id, sample_id;
