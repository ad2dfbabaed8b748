-- A complete frozen-encoder run (zs or lp) of the same weights, preprocessing, dataset and encoding
-- precision, whose embeddings a linear probe can reuse instead of encoding the images again (a run
-- that does not record its precision is never reused).
-- internal
-- param model_sha256 VARCHAR: weights sha256
-- param dataset_id VARCHAR: the dataset
-- param preprocess_key VARCHAR: the preprocessing key
-- param run_id VARCHAR: the run that wants them (excluded)
-- param encode_precision VARCHAR: fp32 or bf16, as the run that wants them encodes
SELECT run_id FROM runs
WHERE status = 'complete' AND mode IN ('zs', 'lp') AND model_sha256 = $model_sha256
  AND dataset_id = $dataset_id AND json_extract_string(config, '$.preprocess_key') = $preprocess_key
  AND json_extract_string(config, '$.encode_precision') = $encode_precision AND run_id <> $run_id
ORDER BY finished_at
LIMIT 1;
