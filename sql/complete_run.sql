-- Mark a run complete with its timings, final config and embedding width (the last write of a run).
-- internal
-- param run_id VARCHAR: run id
UPDATE runs
SET status = 'complete', finished_at = $finished_at, train_seconds = $train_seconds,
    extract_seconds = $extract_seconds, config = $config, embedding_dim = $embedding_dim
WHERE run_id = $run_id;
