-- A complete frozen-encoder run (zs or lp) of the same weights, preprocessing and dataset, whose
-- embeddings a linear probe can reuse instead of encoding the images again.
-- internal
-- param model_sha256 VARCHAR: weights sha256
-- param dataset_id VARCHAR: the dataset
-- param preprocess_key VARCHAR: the preprocessing key
-- param run_id VARCHAR: the run that wants them (excluded)
SELECT run_id FROM runs
WHERE status = 'complete' AND mode IN ('zs', 'lp') AND model_sha256 = $model_sha256
  AND dataset_id = $dataset_id AND json_extract_string(config, '$.preprocess_key') = $preprocess_key
  AND run_id <> $run_id
ORDER BY finished_at
LIMIT 1;
