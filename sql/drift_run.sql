-- A complete frozen-encoder run (zs or lp) on another dataset with the same weights, preprocessing and
-- encoding precision as a given run: its image embeddings are what that run's encoder makes of the
-- dataset (`embedstore drift` compares them with the run's own). The oldest such run, if any.
-- internal
-- param dataset VARCHAR: the other dataset's name
-- param model_sha256 VARCHAR: weights sha256 of the run
-- param preprocess_key VARCHAR: the run's preprocessing key
-- param encode_precision VARCHAR: the run's encoding precision (fp32 or bf16)
SELECT r.run_id FROM runs r JOIN datasets d USING (dataset_id)
WHERE d.name = $dataset AND r.status = 'complete' AND r.mode IN ('zs', 'lp') AND r.model_sha256 = $model_sha256
  AND json_extract_string(r.config, '$.preprocess_key') = $preprocess_key
  AND json_extract_string(r.config, '$.encode_precision') IS NOT DISTINCT FROM $encode_precision
ORDER BY r.finished_at, r.run_id
LIMIT 1;
